// Claim latency against the size of optin_tokens: the service's claim statement, run one at a time
// through pg on a table bulk-loaded with N tokens (two per person, 100 Pages, 5 topics), unnamed
// (pg's default) and as a named prepared statement (what the service sends, src/db/prepared-statements.ts),
// interleaved so that both see the same machine. Run alone: `npx tsx bench/claim-scale.ts`
// (BENCH_CLAIM_ROWS_SMALL, BENCH_CLAIM_ROWS_LARGE, BENCH_CLAIMS). BENCH_CLAIM_TUNED=1 measures again
// on a private cluster (bench/pg-cluster.ts) with the settings a 10M-token table needs
// (tunedSettings: shared_buffers that hold optin_tokens and its indexes, lz4 WAL compression), its
// pages prewarmed; BENCH_CLAIM_TUNED=only measures just that.
import { randomUUID } from 'node:crypto'
import { loadavg } from 'node:os'
import { pathToFileURL } from 'node:url'
import pg from 'pg'
import { openDatabase } from '../src/db/database.js'
import { migrate } from '../src/db/migrate.js'
import { claimStatement, type ClaimStatement } from './ceilings.js'
import { ADMIN_URL, createDatabase, envInt, fmt, log, quantile, table, type ScratchDatabase } from './lib.js'
import { canStartCluster, startCluster } from './pg-cluster.js'

export interface ClaimLatency {
  rows: number
  loadSeconds: number
  tableSize: string
  /** The server's settings that decide the figure (shared_buffers, wal_compression), as it reported them. */
  settings: string
  /** Table and indexes read into shared_buffers (pg_prewarm) before the claims, as a long-running server holds them. */
  prewarmed: boolean
  /** As the service commits: every claim waits for its WAL flush. */
  durable: ClaimPass
  /** synchronous_commit off: the statement's own cost. */
  statement: ClaimPass
}

export interface ClaimPass {
  unnamed: Latency
  named: Latency
  /**
   * WAL a claim writes, on average (the server's WAL insert position before and after the timed
   * claims): mostly full-page images at 10M tokens. On a shared server, other databases' WAL counts too.
   */
  walBytesPerClaim: number
  /** Blocks read from outside shared_buffers per claim (pg_stat_database.blks_read); undefined before Postgres 15. */
  readsPerClaim?: number
}

const PAGES = 100
const TOPICS = 5
const personOf = (k: number) => ({ page_id: `page-${k % PAGES}`, payload: `topic-${Math.floor(k / PAGES) % TOPICS}`, psid: `p${k}` })

async function withClient<T> (url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url })
  c.on('error', () => {})
  await c.connect()
  try {
    return await fn(c)
  } finally {
    await c.end()
  }
}

/** Runs the tasks on `width` connections at once. */
async function parallel (url: string, width: number, tasks: string[][]): Promise<void> {
  const queue = [...tasks]
  await Promise.all(Array.from({ length: width }, () => withClient(url, async (c) => {
    await c.query("set maintenance_work_mem = '256MB'")
    await c.query('set synchronous_commit = off')
    for (let task = queue.shift(); task; task = queue.shift()) for (const statement of task) await c.query(statement)
  })))
}

/**
 * Empties optin_tokens and fills it with `rows` tokens through generate_series on two connections,
 * with its indexes and constraints dropped during the load and rebuilt after it (two at a time).
 */
export async function loadTokens (url: string, rows: number): Promise<number> {
  const started = Date.now()
  const { constraints, indexes } = await withClient(url, async (c) => {
    await c.query('truncate optin_tokens')
    const { rows: cons } = await c.query(`
      select conname, contype, pg_get_indexdef(conindid) as indexdef, (select relname from pg_class where oid = conindid) as indexname
        from pg_constraint where conrelid = 'optin_tokens'::regclass and contype in ('p', 'u')`)
    for (const con of cons) await c.query(`alter table optin_tokens drop constraint ${con.conname}`)
    const { rows: idx } = await c.query("select indexname, indexdef from pg_indexes where schemaname = current_schema() and tablename = 'optin_tokens'")
    for (const i of idx) await c.query(`drop index ${i.indexname}`)
    return { constraints: cons as Array<{ conname: string, contype: string, indexdef: string, indexname: string }>, indexes: idx as Array<{ indexdef: string }> }
  })

  const half = Math.ceil(rows / 2)
  const insert = (lo: number, hi: number) => `
    insert into optin_tokens (page_id, psid, payload, token, opted_in_at, expires_at)
    select 'page-' || (k % ${PAGES}), 'p' || k, 'topic-' || ((k / ${PAGES}) % ${TOPICS}), md5(i::text),
           now() - interval '1 day', now() + interval '300 days' + (i % 1440) * interval '1 minute'
      from generate_series(${lo}::bigint, ${hi}::bigint) i, lateral (select i / 2 as k) person`
  await parallel(url, 2, [[insert(0, half - 1)], [insert(half, rows - 1)]].filter((_, i) => i === 0 || rows > 1))

  await parallel(url, 2, [
    ...constraints.map((con) => [
      con.indexdef,
      `alter table optin_tokens add constraint ${con.conname} ${con.contype === 'p' ? 'primary key' : 'unique'} using index ${con.indexname}`,
    ]),
    ...indexes.map((i) => [i.indexdef]),
  ])
  // VACUUM, not just ANALYZE: otherwise autovacuum takes on the freshly inserted table (35 s at 10M)
  // while the claims are being timed, and a table in service has long been vacuumed anyway.
  await withClient(url, async (c) => {
    await c.query('vacuum (analyze) optin_tokens')
    await c.query('checkpoint')
  })
  return (Date.now() - started) / 1000
}

/**
 * Reads optin_tokens and its indexes into shared_buffers (pg_prewarm, from the server's contrib),
 * where a server that has been claiming for a while holds its working set, instead of letting the
 * measured claims fetch them from the OS cache one by one.
 */
export async function prewarmTokens (url: string): Promise<void> {
  await withClient(url, async (c) => {
    await c.query('create extension if not exists pg_prewarm')
    await c.query(`select pg_prewarm(oid) from pg_class
                    where oid = 'optin_tokens'::regclass or oid in (select indexrelid from pg_index where indrelid = 'optin_tokens'::regclass)`)
  })
}

interface Latency { p50: number, p99: number }

/**
 * `n` people to claim for, in random order: distinct while there are enough, then each person a
 * second time (everyone holds two tokens), never a third.
 */
function peopleToClaim (persons: number, n: number): number[] {
  if (n > 2 * persons) throw new Error(`${2 * persons} tokens are too few for ${n} claims`)
  if (n <= persons / 2) {
    const seen = new Set<number>()
    while (seen.size < n) seen.add(Math.floor(Math.random() * persons))
    return [...seen]
  }
  const shuffled = () => {
    const a = Array.from({ length: persons }, (_, i) => i)
    for (let i = a.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [a[i], a[j]] = [a[j], a[i]]
    }
    return a
  }
  return [...shuffled(), ...shuffled()].slice(0, n)
}

/**
 * `claims` claims of each kind (unnamed, named) on each table, one at a time on distinct people,
 * after a warm-up; once as the service commits (synchronous_commit on: each claim waits for its WAL
 * flush) and once with synchronous_commit off, which leaves the statement's own cost without the
 * disk's flush time. Each pass also counts, per claim, the WAL it wrote and the blocks it read from
 * outside shared_buffers: the two costs that grow with the table.
 * The tables take turns in blocks of CLAIM_BLOCK claims, so that both sides of the 10M : 10k ratio
 * meet the same machine: one table's whole pass after the other's put seconds between them, and on
 * a shared machine the 10k p50 alone moved from 0.51 to 0.64 ms between two runs twenty minutes apart.
 * Not claim by claim: a 10M claim leaves WAL to write and dirty pages to evict behind it, and a 10k
 * claim right after it would pay for part of that (tried for issue 7: claim by claim, the ratios
 * came out at 1.01–1.16× on a cluster where one table after the other gave 1.31–1.46×); in a block
 * only its first claims can.
 */
/** Claims in a row on one table before the other takes its turn (measureClaims). */
const CLAIM_BLOCK = 200

export async function measureClaims (tables: Array<{ url: string, rows: number }>, claims: number): Promise<Array<Pick<ClaimLatency, 'durable' | 'statement' | 'tableSize' | 'settings'>>> {
  const warmup = Math.min(200, claims)
  const perPass = warmup + 2 * claims
  const subjects: Array<{ pool: pg.Pool, client: pg.PoolClient, claim: ClaimStatement, picks: number[] }> = []
  try {
    for (const t of tables) {
      const pool = new pg.Pool({ connectionString: t.url, max: 1 })
      pool.on('error', () => {})
      const claim = await claimStatement(pool)
      subjects.push({ pool, client: await pool.connect(), claim, picks: peopleToClaim(Math.floor(t.rows / 2), 2 * perPass) })
    }
    const first = subjects[0].client
    const stats = (xs: number[]): Latency => { xs.sort((a, b) => a - b); return { p50: quantile(xs, 0.5), p99: quantile(xs, 0.99) } }
    const { rows: [server] } = await first.query("select current_setting('server_version_num')::int >= 150000 as flush")
    // Where the server inserts WAL, in bytes ('16/B374D848': high and low 32 bits in hex); the
    // write position (pg_current_wal_lsn) would lag behind asynchronous commits.
    const lsn = async (): Promise<number> => {
      const [hi, lo] = String((await first.query('select pg_current_wal_insert_lsn()::text as lsn')).rows[0].lsn).split('/')
      return parseInt(hi, 16) * 2 ** 32 + parseInt(lo, 16)
    }
    // This database's blocks read so far: the backend's statistics are flushed first (Postgres 15), else they lag by up to a second.
    const blocksRead = async (client: pg.PoolClient): Promise<number | undefined> => {
      if (!server.flush) return undefined
      await client.query('select pg_stat_force_next_flush()')
      const { rows: [c] } = await client.query('select blks_read from pg_stat_database where datname = current_database()')
      await client.query('select pg_stat_clear_snapshot()')
      return Number(c.blks_read)
    }
    // Each table's warm-up, then the timed claims, unnamed and named by turns, the tables taking
    // turns block by block (see above).
    const pass = async (offset: number): Promise<ClaimPass[]> => {
      const times = subjects.map(() => ({ unnamed: [] as number[], named: [] as number[] }))
      const wal = subjects.map(() => 0)
      const claimOne = async (k: number, j: number): Promise<void> => {
        const { client, claim, picks } = subjects[k]
        const named = j % 2 === 1
        const values = claim.values({ ...personOf(picks[offset + j]), notification_id: randomUUID(), leaseSeconds: 120 })
        const t0 = process.hrtime.bigint()
        const { rows: got } = named
          ? await client.query({ name: 'claim_scale', text: claim.text, values })
          : await client.query(claim.text, values)
        const ms = Number(process.hrtime.bigint() - t0) / 1e6
        if (got.length !== 1) throw new Error(`claim found no token for person ${picks[offset + j]} of ${tables[k].rows} tokens`)
        if (j >= warmup) times[k][named ? 'named' : 'unnamed'].push(ms)
      }
      for (const k of subjects.keys()) for (let j = 0; j < warmup; j++) await claimOne(k, j)
      const readBefore: Array<number | undefined> = []
      for (const s of subjects) readBefore.push(await blocksRead(s.client))
      for (let start = warmup; start < perPass; start += CLAIM_BLOCK) {
        for (const k of subjects.keys()) {
          const lsnBefore = await lsn()
          for (let j = start; j < Math.min(start + CLAIM_BLOCK, perPass); j++) await claimOne(k, j)
          wal[k] += await lsn() - lsnBefore
        }
      }
      const timed = perPass - warmup
      const out: ClaimPass[] = []
      for (const [k, s] of subjects.entries()) {
        const readAfter = await blocksRead(s.client)
        const before = readBefore[k]
        out.push({
          unnamed: stats(times[k].unnamed),
          named: stats(times[k].named),
          walBytesPerClaim: wal[k] / timed,
          ...(readAfter !== undefined && before !== undefined ? { readsPerClaim: (readAfter - before) / timed } : {}),
        })
      }
      return out
    }
    const durable = await pass(0)
    for (const s of subjects) await s.client.query('set synchronous_commit = off')
    const statement = await pass(perPass)
    const { rows: [settings] } = await first.query(`select string_agg(name || '=' || current_setting(name), ' ' order by name) as s
      from pg_settings where name in ('shared_buffers', 'wal_compression')`)
    return await Promise.all(subjects.map(async (s, k) => {
      const { rows: [size] } = await s.client.query("select pg_size_pretty(pg_total_relation_size('optin_tokens')) as size")
      return { durable: durable[k], statement: statement[k], tableSize: size.size, settings: settings.s }
    }))
  } finally {
    for (const s of subjects) {
      s.client.release(true)
      await s.pool.end()
    }
  }
}

/**
 * A scratch database with the service's schema for each size, all loaded first, then measured
 * (measureClaims), dropped at the end.
 * `prewarm`: the table and its indexes are read into shared_buffers after each load (prewarmTokens).
 */
export async function runClaimScale (opts: { adminUrl: string, sizes: number[], claims: number, prewarm?: boolean }): Promise<ClaimLatency[]> {
  const scratches: ScratchDatabase[] = []
  try {
    const loaded: Array<{ url: string, rows: number, loadSeconds: number }> = []
    for (const rows of opts.sizes) {
      const scratch = await createDatabase(opts.adminUrl, 'otn_bench_claims')
      scratches.push(scratch)
      const handle = await openDatabase({ databaseUrl: scratch.url, poolSize: 1 })
      await migrate(handle.db)
      await handle.close()
      log(`claim latency: loading ${rows.toLocaleString('en-US')} tokens`)
      const loadSeconds = await loadTokens(scratch.url, rows)
      if (opts.prewarm) await prewarmTokens(scratch.url)
      log(`claim latency: loaded in ${loadSeconds.toFixed(0)} s${opts.prewarm ? ', prewarmed' : ''}`)
      loaded.push({ url: scratch.url, rows, loadSeconds })
    }
    log(`claim latency: ${opts.claims} claims of each kind on each table`)
    const measured = await measureClaims(loaded, opts.claims)
    return loaded.map((l, k) => ({ rows: l.rows, loadSeconds: l.loadSeconds, prewarmed: opts.prewarm ?? false, ...measured[k] }))
  } finally {
    for (const scratch of scratches) await scratch.drop()
  }
}

/**
 * What the claim needs at `rows` tokens, as measured with this benchmark for issue 7. At 10M tokens
 * a claim touches five random pages of 3.3 GB (the token's heap page and a leaf of usable_idx, pkey,
 * token_key and subscriber_idx): with the default 128MB of shared_buffers each is read from outside
 * (the OS cache while the machine's RAM holds the table, the disk once it does not).
 * - shared_buffers: optin_tokens and its indexes (~345 bytes a token), with headroom; 4GB at 10M.
 * - wal_compression: the first change to a page after a checkpoint logs the whole page, and a claim
 *   at 10M dirties four pages no other claim touched since: 30 kB of WAL a claim, 16 kB with lz4.
 * - max_wal_size: only so that the bulk load does not checkpoint every 1GB; it does not change the
 *   figure (no checkpoint falls within the timed claims either way).
 */
export function tunedSettings (rows: number): string[] {
  const gigabytes = Math.max(1, Math.ceil(rows * 400 / 2 ** 30))
  return [`shared_buffers = '${gigabytes}GB'`, "wal_compression = 'lz4'", "max_wal_size = '8GB'"]
}

/** runClaimScale on a private cluster (bench/pg-cluster.ts) with tunedSettings for the largest size, prewarmed. */
export async function runClaimScaleTuned (opts: { sizes: number[], claims: number }): Promise<ClaimLatency[]> {
  if (!canStartCluster()) throw new Error('BENCH_CLAIM_TUNED needs initdb and pg_ctl (PG_BIN) to start a private cluster')
  const cluster = await startCluster(tunedSettings(Math.max(...opts.sizes)))
  try {
    return await runClaimScale({ adminUrl: cluster.url, sizes: opts.sizes, claims: opts.claims, prewarm: true })
  } catch (error) {
    log(`claim latency on the private cluster failed; its log:\n${cluster.log().slice(-2000)}`)
    throw error
  } finally {
    await cluster.destroy()
  }
}

/**
 * One row per size and pass; `× smallest` is the p50 against the smallest size measured with the
 * same settings, unnamed / named (issue 7's target, judged on the named claim as the service sends
 * it: at most 1.2× at 10M against 10k).
 */
export function claimScaleTable (results: ClaimLatency[]): string {
  const setup = (r: ClaimLatency) => `${r.settings}${r.prewarmed ? ', prewarmed' : ''}`
  const rows: string[][] = []
  for (const r of results) {
    const base = results.filter((s) => setup(s) === setup(r)).reduce((a, b) => (b.rows < a.rows ? b : a))
    for (const [label, pass] of [['durable', 'commit flushed'], ['statement', 'statement only']] as const) {
      const m = r[label]
      rows.push([
        r.rows.toLocaleString('en-US'), r.tableSize, setup(r), pass,
        fmt.ms(m.unnamed.p50), fmt.ms(m.unnamed.p99), fmt.ms(m.named.p50), fmt.ms(m.named.p99),
        base === r ? '' : `${fmt.ratio(m.unnamed.p50 / base[label].unnamed.p50)} / ${fmt.ratio(m.named.p50 / base[label].named.p50)}`,
        Math.round(m.walBytesPerClaim).toLocaleString('en-US'),
        m.readsPerClaim !== undefined ? m.readsPerClaim.toFixed(1) : '–',
      ])
    }
  }
  return table(['tokens in table', 'table + indexes', 'postgres', 'claim', 'unnamed p50 ms', 'p99 ms', 'named p50 ms', 'p99 ms',
    '× smallest (unnamed / named)', 'WAL B/claim', 'reads/claim'], rows)
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const sizes = [envInt('BENCH_CLAIM_ROWS_SMALL', 10_000, 10), envInt('BENCH_CLAIM_ROWS_LARGE', 10_000_000, 10)]
  const claims = envInt('BENCH_CLAIMS', 2000)
  const tuned = process.env.BENCH_CLAIM_TUNED ?? ''
  if (!['', '0', '1', 'only'].includes(tuned)) throw new Error(`BENCH_CLAIM_TUNED must be 1 or only (got "${tuned}")`)
  const load = () => loadavg().map((l) => l.toFixed(1)).join(' ')
  const loadBefore = load()
  const results: ClaimLatency[] = []
  // The machine's server as it is configured (BENCH_DATABASE_URL), then the private tuned cluster.
  if (tuned !== 'only') results.push(...await runClaimScale({ adminUrl: ADMIN_URL, sizes, claims }))
  if (tuned === '1' || tuned === 'only') results.push(...await runClaimScaleTuned({ sizes, claims }))
  console.log(`${claims} sequential claims of each kind per pass; load average ${loadBefore} before, ${load()} after\n`)
  console.log(claimScaleTable(results))
}
