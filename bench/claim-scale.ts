// Claim latency against the size of optin_tokens: the service's claim statement, run one at a time
// through pg on a table bulk-loaded with N tokens (two per person, 100 Pages, 5 topics), unnamed
// (what the service sends today) and as a named prepared statement, interleaved so that both see
// the same machine. Run alone: `npx tsx bench/claim-scale.ts` (BENCH_CLAIM_ROWS_LARGE, BENCH_CLAIMS).
import { randomUUID } from 'node:crypto'
import { pathToFileURL } from 'node:url'
import pg from 'pg'
import { openDatabase } from '../src/db/database.js'
import { migrate } from '../src/db/migrate.js'
import { claimStatement } from './ceilings.js'
import { ADMIN_URL, createDatabase, envInt, fmt, log, quantile, table } from './lib.js'

export interface ClaimLatency {
  rows: number
  loadSeconds: number
  tableSize: string
  /** As the service commits: every claim waits for its WAL flush. */
  durable: { unnamed: Latency, named: Latency }
  /** synchronous_commit off: the statement's own cost. */
  statement: { unnamed: Latency, named: Latency }
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
  await withClient(url, async (c) => {
    await c.query('analyze optin_tokens')
    await c.query('checkpoint')
  })
  return (Date.now() - started) / 1000
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
 * `claims` claims of each kind (unnamed, named), one at a time on distinct people, after a warm-up;
 * once as the service commits (synchronous_commit on: each claim waits for its WAL flush) and once
 * with synchronous_commit off, which leaves the statement's own cost (the index descent that grows
 * with the table) without the disk's flush time.
 */
export async function measureClaims (url: string, rows: number, claims: number): Promise<Pick<ClaimLatency, 'durable' | 'statement' | 'tableSize'>> {
  const pool = new pg.Pool({ connectionString: url, max: 1 })
  pool.on('error', () => {})
  try {
    const claim = await claimStatement(pool)
    const persons = Math.floor(rows / 2)
    const warmup = Math.min(200, claims)
    const perPass = warmup + 2 * claims
    const picks = peopleToClaim(persons, 2 * perPass)
    const client = await pool.connect()
    const stats = (xs: number[]): Latency => { xs.sort((a, b) => a - b); return { p50: quantile(xs, 0.5), p99: quantile(xs, 0.99) } }
    const pass = async (offset: number): Promise<{ unnamed: Latency, named: Latency }> => {
      const times = { unnamed: [] as number[], named: [] as number[] }
      for (let j = 0; j < perPass; j++) {
        const named = j % 2 === 1
        const values = claim.values({ ...personOf(picks[offset + j]), notification_id: randomUUID(), leaseSeconds: 120 })
        const t0 = process.hrtime.bigint()
        const { rows: got } = named
          ? await client.query({ name: 'claim_scale', text: claim.text, values })
          : await client.query(claim.text, values)
        const ms = Number(process.hrtime.bigint() - t0) / 1e6
        if (got.length !== 1) throw new Error(`claim found no token for person ${picks[offset + j]}`)
        if (j >= warmup) times[named ? 'named' : 'unnamed'].push(ms)
      }
      return { unnamed: stats(times.unnamed), named: stats(times.named) }
    }
    try {
      const durable = await pass(0)
      await client.query('set synchronous_commit = off')
      const statement = await pass(perPass)
      const { rows: [size] } = await client.query("select pg_size_pretty(pg_total_relation_size('optin_tokens')) as size")
      return { durable, statement, tableSize: size.size }
    } finally {
      client.release(true)
    }
  } finally {
    await pool.end()
  }
}

/** A scratch database with the service's schema, each size loaded and measured in turn, dropped at the end. */
export async function runClaimScale (opts: { adminUrl: string, sizes: number[], claims: number }): Promise<ClaimLatency[]> {
  const scratch = await createDatabase(opts.adminUrl, 'otn_bench_claims')
  try {
    const handle = await openDatabase({ databaseUrl: scratch.url, poolSize: 1 })
    await migrate(handle.db)
    await handle.close()
    const out: ClaimLatency[] = []
    for (const rows of opts.sizes) {
      log(`claim latency: loading ${rows.toLocaleString('en-US')} tokens`)
      const loadSeconds = await loadTokens(scratch.url, rows)
      log(`claim latency: loaded in ${loadSeconds.toFixed(0)} s; ${opts.claims} claims of each kind`)
      out.push({ rows, loadSeconds, ...await measureClaims(scratch.url, rows, opts.claims) })
    }
    return out
  } finally {
    await scratch.drop()
  }
}

export function claimScaleTable (results: ClaimLatency[]): string {
  const rows: string[][] = []
  for (const r of results) {
    for (const [label, m] of [['commit flushed', r.durable], ['statement only', r.statement]] as const) {
      rows.push([r.rows.toLocaleString('en-US'), r.tableSize, label, fmt.ms(m.unnamed.p50), fmt.ms(m.unnamed.p99), fmt.ms(m.named.p50), fmt.ms(m.named.p99)])
    }
  }
  return table(['tokens in table', 'table + indexes', 'claim', 'unnamed p50 ms', 'p99 ms', 'named p50 ms', 'p99 ms'], rows)
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const results = await runClaimScale({
    adminUrl: ADMIN_URL,
    sizes: [envInt('BENCH_CLAIM_ROWS_SMALL', 10_000, 10), envInt('BENCH_CLAIM_ROWS_LARGE', 10_000_000, 10)],
    claims: envInt('BENCH_CLAIMS', 2000),
  })
  console.log(claimScaleTable(results))
}
