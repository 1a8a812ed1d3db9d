// `npm run bench`: the service against this machine's ceilings, in one run, loopback only.
// See docs/PERFORMANCE.md for what each figure means. Bounded: BENCH_SECONDS per scenario.
import { createHmac, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { BARE_PAGE, BARE_PAYLOAD } from './ceilings.js'
import { claimScaleTable, runClaimScale, type ClaimLatency } from './claim-scale.js'
import { startCluster } from './pg-cluster.js'
import { PRE_FIX_INDEXES, planHazardTable, runPlanHazard, type HazardResult } from './plan-hazard.js'
import {
  ADMIN_URL, API_KEY, APP_SECRET, createDatabase, envInt, fmt, log, machineCpuSeconds, measure, medianInterval, startTarget, stolenShare, table,
  type Measured, type Target,
} from './lib.js'

const SECONDS = envInt('BENCH_SECONDS', 5)
const WARMUP = envInt('BENCH_WARMUP_SECONDS', 2, 0)
/**
 * Unmeasured load before a scenario's first round: long enough for V8 to have compiled the code a
 * request runs. Two seconds were not, for the service: its first token round ran at 0.83-1.26 CPU ms
 * per request, its later rounds at 0.48-0.59 (a bare route's code is warm within the first second).
 */
const FIRST_WARMUP = Math.max(envInt('BENCH_FIRST_WARMUP_SECONDS', 10, 0), WARMUP)
/** Seconds of load a scenario gets over `rounds` rounds, warm-ups included: what the seeded tokens must cover. */
const loadSeconds = (rounds: number) => SECONDS * rounds + WARMUP * (rounds - 1) + FIRST_WARMUP
const ROUNDS = envInt('BENCH_ROUNDS', 2)
/**
 * The two 16-connection targets' pairs (bare INSERT and webhook, bare claim and token route) run
 * this many rounds in all: after the BENCH_ROUNDS rounds of every scenario, those four alone. On a
 * shared machine one round's ratio can differ from the next by 0.2; the interval of the median of
 * nine pairs holds the true median with 96% confidence, of three with 75%. At most BENCH_ROUNDS:
 * no extra rounds.
 */
const TARGET_ROUNDS = Math.max(envInt('BENCH_TARGET_ROUNDS', 9, 0), ROUNDS)
const TARGET_JOBS = ['ceiling.insert', 'app.ingest1', 'ceiling.claim', 'app.token']
/** Seconds of load the extra rounds add to each of those scenarios: what their supplies must also cover. */
const EXTRA_SECONDS = (TARGET_ROUNDS - ROUNDS) * (SECONDS + WARMUP)
const CONNECTIONS = envInt('BENCH_CONNECTIONS', 16)
/**
 * The token route and the bare claim, and one opt-in per webhook and the bare INSERT, again at
 * this many connections (0: not measured), for callers that send many at once: at 16 a send waits
 * for two commits and Meta in turn, so its latency, not the machine, bounds it; more connections
 * fill the group commits' statements. Not a target: the targets stay at BENCH_CONNECTIONS.
 */
const WIDE = envInt('BENCH_WIDE_CONNECTIONS', 64, 0)
/**
 * The token route with Meta answering after BENCH_META_LATENCY_MS (the emulator's latency, for that
 * scenario's Page only) at BENCH_META_CONNECTIONS connections (either 0: not measured). On loopback
 * Meta answers in about a millisecond; the real Send API takes tens to hundreds (Meta publishes no
 * figure), so a sender's rate is bounded by how many sends it keeps in flight, and by how many the
 * service keeps open towards Meta (GRAPH_API_CONNECTIONS; the lever row: 128). Not a target.
 */
const META_LATENCY = envInt('BENCH_META_LATENCY_MS', 100, 0)
const META_CONNECTIONS = envInt('BENCH_META_CONNECTIONS', 512, 0)
const META = META_LATENCY > 0 && META_CONNECTIONS > 0
const CLAIM_ROWS_SMALL = envInt('BENCH_CLAIM_ROWS_SMALL', 10_000, 10_000)
const CLAIM_ROWS_LARGE = envInt('BENCH_CLAIM_ROWS_LARGE', 10_000_000, 10_000)
const CLAIMS = envInt('BENCH_CLAIMS', 2000)
/**
 * Sends per second the token route may make at most, to size the seeded tokens (one spent per
 * request). A scenario that outruns its supply answers 409 from then on: the table's non-2xx
 * column counts every round, and a warning after the tables names the round.
 */
const TOKEN_RATE_BOUND = envInt('BENCH_TOKEN_RATE_BOUND', 4000)
/** The same for the claim-and-send ceiling, which spends a token per request faster than the app (3,425/s seen). */
const CLAIM_SEND_RATE_BOUND = envInt('BENCH_CLAIM_SEND_RATE_BOUND', 8000)
const CLAIM_RATE_BOUND = envInt('BENCH_CLAIM_RATE_BOUND', 12_000)
/** Finished notifications (with Idempotency-Keys) already in the table when the run starts, as in a service that has been running. */
const HISTORY = envInt('BENCH_HISTORY', 100_000, 0)
const PGLITE = process.env.BENCH_PGLITE !== '0'
const LEVERS = process.env.BENCH_LEVERS !== '0'
const only = process.env.BENCH_ONLY?.split(',').map((k) => k.trim()).filter(Boolean)

const TARGETS = { ingest: 0.8, tokenRoute: 0.6, claimScale: 1.2 }

interface Row {
  section: string
  scenario: string
  db: string
  /** others: the other rounds' req/s; failed: non-2xx answers and errors over every round. */
  m?: Measured & { others: number[], failed: number }
  p50?: number
  p99?: number
  ratio?: number
  versus?: string
  /** undecided: the limit lies within the interval of the median (the run's rounds cannot tell which side it is on). */
  target?: { limit: number, pass: boolean, kind: '≥' | '≤', undecided?: boolean } | undefined
  note?: string
}

const sign = (body: string) => `sha256=${createHmac('sha256', APP_SECRET).update(body).digest('hex')}`

/** Signed opt-in deliveries, `events` per POST (one entry each, as Meta batches), every token new. */
function optinBodies (pageId: string, events: number) {
  let seq = 0
  const tag = randomBytes(3).toString('hex')
  return () => {
    const time = Date.now()
    const entry = []
    for (let i = 0; i < events; i++) {
      const n = ++seq
      entry.push({
        id: pageId,
        time,
        messaging: [{
          sender: { id: `w${tag}${n}` },
          recipient: { id: pageId },
          timestamp: time,
          optin: { type: 'one_time_notif_req', payload: 'bench-topic', one_time_notif_token: randomBytes(48).toString('base64url') },
        }],
      })
    }
    const body = JSON.stringify({ object: 'page', entry })
    return { body, headers: { 'content-type': 'application/json', 'x-hub-signature-256': sign(body) } }
  }
}

/** Cycles through `items`, or (with `once`) hands each out once and then repeats the last. */
function sequence<T> (items: T[], once: boolean): () => T {
  let i = 0
  return () => {
    const item = items[once ? Math.min(i, items.length - 1) : i % items.length]
    i++
    return item
  }
}

async function seedRows (target: Target, text: string, rows: Array<Record<string, unknown>>, extra: unknown[] = []): Promise<void> {
  for (let i = 0; i < rows.length; i += 5000) {
    await target.call('query', { text, values: [JSON.stringify(rows.slice(i, i + 5000)), ...extra] })
  }
}

interface World { pageId: string, topicId: string, tokenPsids: string[], windowPsids: string[] }

/** A Page and topic known to the app and the emulator, `tokens` people holding one token each, `windows` people who just wrote. */
async function seedWorld (app: Target, emulator: Target, tokens: number, windows: number, history = HISTORY): Promise<World> {
  const pageId = String(100000 + Math.floor(Math.random() * 1e9))
  const accessToken = `bench-page-token-${pageId}`
  const payload = 'bench-topic'
  await emulator.call('addPage', { id: pageId, accessToken })
  await app.call('query', { text: 'insert into pages (id, name, access_token) values ($1, $2, $3)', values: [pageId, 'Bench', accessToken] })
  const [topic] = await app.call<Array<{ id: string }>>('query', {
    text: 'insert into topics (page_id, name, title, payload) values ($1, $2, $3, $4) returning id',
    values: [pageId, `Bench ${pageId}`, 'Back in stock', payload],
  })
  const tokenPsids = Array.from({ length: tokens }, (_, i) => `t${pageId}x${i}`)
  const values = await emulator.call<string[]>('issueTokens', { pageId, payload, psids: tokenPsids })
  const now = Date.now()
  await seedRows(app, `insert into optin_tokens (page_id, psid, payload, token, opted_in_at, expires_at)
      select page_id, psid, payload, token, opted_in_at, expires_at
        from jsonb_to_recordset($1::jsonb) as t(page_id text, psid text, payload text, token text, opted_in_at timestamptz, expires_at timestamptz)`,
  tokenPsids.map((psid, i) => ({
    page_id: pageId, psid, payload, token: values[i],
    opted_in_at: new Date(now - 86_400_000).toISOString(), expires_at: new Date(now + 300 * 86_400_000).toISOString(),
  })))
  const windowPsids = Array.from({ length: windows }, (_, i) => `w${pageId}x${i}`)
  await emulator.call('personWrites', { pageId, psids: windowPsids })
  await seedRows(app, `insert into subscribers (page_id, psid, first_seen_at, last_interaction_at)
      select page_id, psid, now(), now() from jsonb_to_recordset($1::jsonb) as s(page_id text, psid text)`,
  windowPsids.map((psid) => ({ page_id: pageId, psid })))
  // History: what the Page sent before the run. Without it the first plans are made for an empty
  // table, and a prepared statement's cached plan would scan the whole table on every send.
  await app.call('query', {
    text: `insert into notifications (page_id, topic_id, psid, message, idempotency_key, request_hash, status, route, attempts, http_status, completed_at)
           select $1, $2::uuid, 'h' || i, '{"text":"earlier"}', 'history-' || $1 || '-' || i, 'h', 'sent', 'window', 1, 201, now()
             from generate_series(1, $3::int) i`,
    values: [pageId, topic.id, history],
  })
  return { pageId, topicId: topic.id, tokenPsids, windowPsids }
}

/**
 * What seeding left behind, dealt with before anything is measured rather than during the rounds:
 * the statistics (without them the first plans are made for empty tables, and a prepared
 * statement's cached plan would scan a whole table on every send); autovacuum, where it is on,
 * which would take on the freshly inserted rows; the first read of each page, which would set its
 * hint bits and dirty it; and the checkpoint that would write all that out. A table in service has
 * long been vacuumed.
 */
async function settle (target: Target, processes: Target[]): Promise<void> {
  const started = Date.now()
  await target.call('query', { text: 'vacuum (analyze)' })
  await target.call('query', { text: 'checkpoint' })
  log(`seeded tables vacuumed, analyzed and checkpointed in ${((Date.now() - started) / 1000).toFixed(0)} s`)
  // The same for the processes' heaps: the emulator holds every seeded token (hundreds of
  // thousands), and the full collection that seeding calls for would otherwise land in a round.
  const heaps: string[] = []
  for (const p of processes) heaps.push(`${(await p.call<number>('gc') / 2 ** 20).toFixed(0)} MB`)
  log(`garbage collected before the rounds; heaps in use: ${heaps.join(', ')}`)
}

type Scenario = 'ingest1' | 'ingest1Wide' | 'ingest50' | 'token' | 'tokenWide' | 'tokenMeta' | 'window'
const LABEL: Record<Scenario, string> = {
  ingest1: 'webhook, 1 opt-in per POST',
  ingest1Wide: `webhook, 1 opt-in per POST, ${WIDE} connections`,
  ingest50: 'webhook, 50 opt-ins per POST',
  token: 'POST /v1/notifications, token route',
  tokenWide: `POST /v1/notifications, token route, ${WIDE} connections`,
  tokenMeta: `POST /v1/notifications, token route, Meta answering in ${META_LATENCY} ms, ${META_CONNECTIONS} connections`,
  window: 'POST /v1/notifications, window route',
}

/**
 * One measurement that can be repeated (once per round, after `warmupSeconds` of unmeasured load);
 * its generators of unique bodies carry over between rounds.
 */
interface Job { key: string, run (warmupSeconds: number): Promise<Measured> }

interface AppVariant { name: string, env: Record<string, string>, scenarios: Scenario[] }

/** Starts the real app (as src/server.ts would, from the environment) pointed at the emulator, and seeds what `scenarios` spend. */
async function startApp (emulator: Target, variant: AppVariant, rounds: number): Promise<{ app: Target, jobs: Job[] }> {
  const app = await startTarget('app', {
    API_KEYS: API_KEY,
    META_APP_SECRET: APP_SECRET,
    GRAPH_API_BASE_URL: new URL(emulator.url).origin,
    LOG_LEVEL: 'warn',
    ...variant.env,
  })
  const tokenScenarios = variant.scenarios.filter((s) => s === 'token' || s === 'tokenWide').length
  const extra = TARGET_JOBS.includes(`${variant.name}.token`) && variant.scenarios.includes('token') ? TOKEN_RATE_BOUND * EXTRA_SECONDS : 0
  const world = await seedWorld(app, emulator, tokenScenarios * TOKEN_RATE_BOUND * loadSeconds(rounds) + extra, 1000)
  // The token scenarios of one world share its people: each token is spent once, by whichever comes first.
  const tokenPsid = sequence(world.tokenPsids, true)
  // Slow Meta has a world (a Page) of its own, the only one the emulator delays; its rate is bounded
  // by its connections over Meta's latency as well. Its Page has no history: the first world's is
  // in the same table.
  const meta = variant.scenarios.includes('tokenMeta')
    ? await seedWorld(app, emulator, Math.min(TOKEN_RATE_BOUND, Math.ceil(META_CONNECTIONS * 1000 / META_LATENCY)) * loadSeconds(rounds), 0, 0)
    : undefined
  if (meta) await emulator.call('setLatency', { pageId: meta.pageId, latencyMs: META_LATENCY })
  const jobs = variant.scenarios.map((scenario): Job => {
    const key = `${variant.name}.${scenario}`
    const connections = scenario.endsWith('Wide') ? WIDE : scenario === 'tokenMeta' ? META_CONNECTIONS : CONNECTIONS
    if (scenario === 'ingest1' || scenario === 'ingest1Wide' || scenario === 'ingest50') {
      const next = optinBodies(world.pageId, scenario === 'ingest50' ? 50 : 1)
      return { key, run: (warmupSeconds) => measure({ url: app.url, pid: app.child.pid, path: '/webhooks/messenger', next, connections, seconds: SECONDS, warmupSeconds }) }
    }
    const psid = scenario === 'window' ? sequence(world.windowPsids, false) : scenario === 'tokenMeta' ? sequence(meta!.tokenPsids, true) : tokenPsid
    const topicId = scenario === 'tokenMeta' ? meta!.topicId : world.topicId
    let n = 0
    const tag = randomBytes(3).toString('hex')
    const next = () => ({
      body: JSON.stringify({ topic_id: topicId, psid: psid(), message: { text: 'Your size is back in stock' } }),
      headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}`, 'idempotency-key': `bench-${tag}-${++n}` },
    })
    return { key, run: (warmupSeconds) => measure({ url: app.url, pid: app.child.pid, path: '/v1/notifications', next, connections, seconds: SECONDS, warmupSeconds }) }
  })
  return { app, jobs }
}

async function startCeilings (dbUrl: string, emulator: Target, rounds: number): Promise<{ ceilings: Target, jobs: Job[] }> {
  // The claim-and-send ceiling spends real tokens of a Page the emulator knows.
  const graphPage = String(200000 + Math.floor(Math.random() * 1e9))
  const graphAccessToken = `bench-ceiling-token-${graphPage}`
  await emulator.call('addPage', { id: graphPage, accessToken: graphAccessToken })
  const ceilings = await startTarget('ceilings', {
    BENCH_DB_URL: dbUrl, BENCH_POOL_SIZE: '10',
    BENCH_GRAPH_URL: new URL(emulator.url).origin, BENCH_GRAPH_PAGE: graphPage, BENCH_GRAPH_ACCESS_TOKEN: graphAccessToken,
  })
  const sendPsids = Array.from({ length: CLAIM_SEND_RATE_BOUND * loadSeconds(rounds) }, (_, i) => `g${i + 1}`)
  const sendTokens = await emulator.call<string[]>('issueTokens', { pageId: graphPage, payload: BARE_PAYLOAD, psids: sendPsids })
  await seedRows(ceilings, `insert into optin_tokens (page_id, psid, payload, token, opted_in_at, expires_at)
      select $2, psid, $3, token, now(), now() + interval '300 days' from jsonb_to_recordset($1::jsonb) as t(psid text, token text)`,
  sendPsids.map((psid, i) => ({ psid, token: sendTokens[i] })), [graphPage, BARE_PAYLOAD])
  const perVariant = CLAIM_RATE_BOUND * loadSeconds(rounds)
  // 'u': the bare claim, which the extra rounds of the targets' pairs also spend.
  const supply = (prefix: string) => perVariant + (prefix === 'u' ? CLAIM_RATE_BOUND * EXTRA_SECONDS : 0)
  for (const prefix of ['u', 'n', ...(WIDE > 0 ? ['w'] : [])]) {
    await ceilings.call('query', {
      text: `insert into optin_tokens (page_id, psid, payload, token, opted_in_at, expires_at)
             select $1, $3 || i, $2, 'bare-' || $3 || i || '-' || md5(random()::text), now(), now() + interval '300 days'
               from generate_series(1, $4::int) i`,
      values: [BARE_PAGE, BARE_PAYLOAD, prefix, supply(prefix)],
    })
  }
  const json = { 'content-type': 'application/json' }
  const common = { url: ceilings.url, pid: ceilings.child.pid, connections: CONNECTIONS, seconds: SECONDS }
  const insertBodies = optinBodies('1', 1)
  const insertWideBodies = optinBodies('3', 1)
  const ingestBodies = optinBodies('2', 1)
  const claimBodies = (prefix: string) => {
    let i = 0
    return () => ({ body: JSON.stringify({ psid: `${prefix}${Math.min(++i, supply(prefix))}` }), headers: json })
  }
  const unnamed = claimBodies('u')
  const unnamedWide = claimBodies('w')
  const named = claimBodies('n')
  let sent = 0
  const claimSend = () => ({ body: JSON.stringify({ psid: sendPsids[Math.min(sent++, sendPsids.length - 1)] }), headers: json })
  return {
    ceilings,
    jobs: [
      { key: 'ceiling.bare', run: (warmupSeconds) => measure({ ...common, warmupSeconds, path: '/bare', headers: json, body: JSON.stringify({ hello: 'world' }) }) },
      { key: 'ceiling.insert', run: (warmupSeconds) => measure({ ...common, warmupSeconds, path: '/insert', next: insertBodies }) },
      { key: 'ceiling.ingest', run: (warmupSeconds) => measure({ ...common, warmupSeconds, path: '/ingest', next: ingestBodies }) },
      { key: 'ceiling.claim', run: (warmupSeconds) => measure({ ...common, warmupSeconds, path: '/claim', next: unnamed }) },
      { key: 'ceiling.claimNamed', run: (warmupSeconds) => measure({ ...common, warmupSeconds, path: '/claim-named', next: named }) },
      { key: 'ceiling.claimSend', run: (warmupSeconds) => measure({ ...common, warmupSeconds, path: '/claim-send', next: claimSend }) },
      { key: 'ceiling.insertWide', run: (warmupSeconds) => measure({ ...common, connections: WIDE, warmupSeconds, path: '/insert', next: insertWideBodies }) },
      { key: 'ceiling.claimWide', run: (warmupSeconds) => measure({ ...common, connections: WIDE, warmupSeconds, path: '/claim', next: unnamedWide }) },
    ],
  }
}

/** Rounds that got answers other than 2xx (or errors): a seeded supply ran out, or the target failed; told after the tables. */
const faultyRounds: string[] = []
/** A round in which the hypervisor took at least this share of the CPU ran on less of a machine than the others; told after the tables. */
const STOLEN_NOTE = 0.1
const starvedRounds: string[] = []
const pct = (share: number) => `${(share * 100).toFixed(0)}%`

/**
 * Every job once per round, so that each ratio's two sides meet the same machine: in the given
 * order in odd rounds, in the reverse order in even ones, since of two jobs run one after the other
 * the second was measured faster (the same app twice, by turns: 5 and 6 rounds of 6; 2026-11-22
 * 21:15–21:20, docs/PERFORMANCE-LOG.md). Keeps every run, after those already in `runs` (rounds
 * that continue earlier ones, of jobs already warm: no long first warm-up).
 */
async function rounds (jobs: Job[], count: number, runs = new Map<string, Measured[]>()): Promise<Map<string, Measured[]>> {
  const done = Math.max(0, ...jobs.map((j) => runs.get(j.key)?.length ?? 0))
  for (let round = done + 1; round <= done + count; round++) {
    for (const job of round % 2 === 1 ? jobs : [...jobs].reverse()) {
      const m = await job.run(round === 1 ? FIRST_WARMUP : WARMUP)
      runs.set(job.key, [...(runs.get(job.key) ?? []), m])
      if (m.non2xx + m.errors > 0) {
        faultyRounds.push(`round ${round}/${done + count} ${job.key}: ${m.non2xx} non-2xx (${Object.entries(m.statusCodes).filter(([code]) => !code.startsWith('2')).map(([code, n]) => `${code}: ${n}`).join(', ')}), ${m.errors} errors`)
      }
      if ((m.stolen ?? 0) >= STOLEN_NOTE) starvedRounds.push(`round ${round}/${done + count} ${job.key}: ${pct(m.stolen!)} stolen, ${fmt.rps(m.rps)} req/s`)
      log(`round ${round}/${done + count} ${job.key}: ${fmt.rps(m.rps)} req/s, p50 ${fmt.ms(m.p50)} ms, p99 ${fmt.ms(m.p99)} ms, non-2xx ${m.non2xx}, errors ${m.errors}` +
        (m.cpuMsPerRequest !== undefined ? `, ${m.cpuMsPerRequest.toFixed(2)} CPU ms/req` : '') +
        (m.machineCpuMsPerRequest !== undefined ? `, machine ${m.machineCpuMsPerRequest.toFixed(2)} CPU ms/req, ${pct(m.idle!)} idle, ${pct(m.stolen!)} stolen` : ''))
    }
  }
  return runs
}

/** The round with the most answers per second: the closest to what the machine can do when the neighbours are quiet. */
function best (runs: Map<string, Measured[]>, key: string): Measured & { others: number[], failed: number } {
  const all = runs.get(key)
  if (!all) return { rps: Number.NaN, p50: Number.NaN, p99: Number.NaN, ok: 0, non2xx: 0, errors: 0, statusCodes: {}, others: [], failed: 0 }
  const top = all.reduce((a, b) => (b.rps > a.rps ? b : a))
  return { ...top, others: all.filter((m) => m !== top).map((m) => m.rps), failed: all.reduce((sum, m) => sum + m.non2xx + m.errors, 0) }
}

/**
 * The ratio of `key` to `base` in each round (the two sides measured seconds apart, under the same
 * neighbours), and the median of those: what a target is judged on. Best against best would pair
 * measurements taken minutes apart, and one lucky round of either side would decide it.
 */
function paired (runs: Map<string, Measured[]>, key: string, base: string): { rounds: number[], median: number, interval: ReturnType<typeof medianInterval> } {
  const a = runs.get(key) ?? []
  const b = runs.get(base) ?? []
  const rounds = a.slice(0, b.length).map((m, i) => m.rps / b[i].rps)
  const interval = medianInterval(rounds)
  return { rounds, median: interval.median, interval }
}

async function versions (url: string): Promise<string> {
  const c = new pg.Client({ connectionString: url })
  await c.connect()
  try {
    const { rows: [v] } = await c.query("select current_setting('server_version') as version, current_setting('shared_buffers') as sb, current_setting('synchronous_commit') as sc")
    return `PostgreSQL ${v.version} (shared_buffers ${v.sb}, synchronous_commit ${v.sc})`
  } finally {
    await c.end()
  }
}

function verdict (ratio: number, limit: number, kind: '≥' | '≤', interval?: { lo: number, hi: number }) {
  if (!Number.isFinite(ratio)) return undefined
  const undecided = interval !== undefined && interval.lo < limit && limit < interval.hi
  return { limit, kind, pass: kind === '≥' ? ratio >= limit : ratio <= limit, ...(undecided ? { undecided } : {}) }
}

function render (rows: Row[]): string {
  return table(['', 'scenario', 'database', 'req/s (other rounds)', 'p50 ms', 'p99 ms', 'non-2xx', 'CPU ms/req', 'machine CPU ms/req (idle, stolen)', 'ratio', 'target'], rows.map((r) => [
    r.section,
    r.scenario,
    r.db,
    r.m && Number.isFinite(r.m.rps) ? `${fmt.rps(r.m.rps)}${r.m.others.length ? ` (${r.m.others.map(fmt.rps).join(', ')})` : ''}` : '',
    fmt.ms(r.m?.p50 ?? r.p50 ?? Number.NaN),
    fmt.ms(r.m?.p99 ?? r.p99 ?? Number.NaN),
    r.m ? String(r.m.failed) : '',
    r.m?.cpuMsPerRequest !== undefined ? r.m.cpuMsPerRequest.toFixed(2) : '',
    r.m?.machineCpuMsPerRequest !== undefined ? `${r.m.machineCpuMsPerRequest.toFixed(2)} (${pct(r.m.idle!)}, ${pct(r.m.stolen!)})` : '',
    r.ratio !== undefined ? `${r.target ? fmt.against(r.ratio, r.target.limit) : fmt.ratio(r.ratio)} ${r.versus ?? ''}`.trim() : (r.note ?? ''),
    r.target ? `${r.target.kind} ${r.target.limit}× ${r.target.pass ? 'PASS' : 'FAIL'}${r.target.undecided ? ' (undecided)' : ''}` : '',
  ]))
}

const load = () => loadavg().map((l) => l.toFixed(1)).join(' ')

async function main (): Promise<void> {
  const started = Date.now()
  // BENCH_PRIVATE_CLUSTER=1: a Postgres of our own (like the soak's), away from other users of the machine's server.
  const cluster = process.env.BENCH_PRIVATE_CLUSTER === '1' ? await startCluster(['shared_buffers = 128MB']) : undefined
  const admin = cluster?.url ?? ADMIN_URL
  const machine = `${cpus().length} CPUs (${cpus()[0]?.model ?? 'unknown'}), ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, ` +
    `${await versions(admin)}${cluster ? ', private cluster' : ''}`
  const loadBefore = load()
  const cpuBefore = machineCpuSeconds()
  log(machine)
  log(`BENCH_SECONDS=${SECONDS} BENCH_WARMUP_SECONDS=${WARMUP} BENCH_FIRST_WARMUP_SECONDS=${FIRST_WARMUP} BENCH_ROUNDS=${ROUNDS} BENCH_TARGET_ROUNDS=${TARGET_ROUNDS} BENCH_CONNECTIONS=${CONNECTIONS} BENCH_CLAIM_ROWS_LARGE=${CLAIM_ROWS_LARGE}; load average ${loadBefore}`)
  const bench = await createDatabase(admin, 'otn_bench').catch(async (error) => { await cluster?.destroy(); throw error })
  let emulator: Target | undefined
  const targets: Target[] = []
  const rows: Row[] = []
  let claimScale: ClaimLatency[] = []
  let claimError: string | undefined
  let hazards: HazardResult[] = []
  try {
    emulator = await startTarget('emulator')
    // The schema first: the ceilings write into the service's own tables.
    const migrateOnly = await startTarget('app', { API_KEYS: API_KEY, DATABASE_URL: bench.url, LOG_LEVEL: 'warn' })
    if (process.env.BENCH_PRE_FIX_INDEXES === '1') {
      // What-if: the pending partial index as it was before migration 20261121040000.
      for (const text of PRE_FIX_INDEXES) await migrateOnly.call('query', { text })
      log('BENCH_PRE_FIX_INDEXES=1: the pending partial index on status, as before the fix')
    }
    await migrateOnly.stop()

    const variants: AppVariant[] = [
      { name: 'app', env: { DATABASE_URL: bench.url }, scenarios: ['ingest1', 'ingest50', 'token', 'window', ...(WIDE > 0 ? ['ingest1Wide' as const, 'tokenWide' as const] : []), ...(META ? ['tokenMeta' as const] : [])] },
      ...(LEVERS
        ? [
            { name: 'unnamed', env: { DATABASE_URL: bench.url, DATABASE_STATEMENT_CACHE_SIZE: '0' }, scenarios: ['ingest1', 'token'] },
            { name: 'info', env: { DATABASE_URL: bench.url, LOG_LEVEL: 'info' }, scenarios: ['ingest1', 'token'] },
            { name: 'pool20', env: { DATABASE_URL: bench.url, DATABASE_POOL_SIZE: '20' }, scenarios: ['token'] },
            ...(META ? [{ name: 'graph128', env: { DATABASE_URL: bench.url, GRAPH_API_CONNECTIONS: '128' }, scenarios: ['tokenMeta' as const] }] : []),
          ] satisfies AppVariant[]
        : []),
    ]
    const { ceilings, jobs: ceilingJobs } = await startCeilings(bench.url, emulator, ROUNDS)
    targets.push(ceilings)
    const appJobs: Job[] = []
    for (const variant of variants) {
      const { app, jobs } = await startApp(emulator, variant, ROUNDS)
      targets.push(app)
      appJobs.push(...jobs)
    }
    await settle(ceilings, [emulator, ...targets])
    const job = (key: string) => [...ceilingJobs, ...appJobs].find((j) => j.key === key)
    const order = ['ceiling.bare', 'ceiling.insert', 'ceiling.ingest', 'app.ingest1', 'unnamed.ingest1', 'info.ingest1', 'app.ingest50',
      'ceiling.claim', 'ceiling.claimNamed', 'ceiling.claimSend', 'app.token', 'unnamed.token', 'info.token', 'pool20.token', 'app.window',
      ...(WIDE > 0 ? ['ceiling.insertWide', 'app.ingest1Wide', 'ceiling.claimWide', 'app.tokenWide'] : []), ...(META ? ['app.tokenMeta', 'graph128.tokenMeta'] : [])]
    // BENCH_ONLY=app.token,unnamed.token re-measures just those (the table then shows what it can);
    // the claim latency (d) and the plan hazard (e) run only when it names `claims` and `hazard`.
    const selected = order.filter((k) => !only || only.includes(k)).map(job).filter((j): j is Job => j !== undefined)
    const runs = await rounds(selected, ROUNDS)
    // The targets' medians take every pair; the table's best rounds and the ratios between other
    // rows stay on the BENCH_ROUNDS rounds, so that no row is the best of more rounds than another.
    let targetRuns = runs
    if (TARGET_ROUNDS > ROUNDS) {
      log(`the targets' pairs alone, ${TARGET_ROUNDS - ROUNDS} more rounds (BENCH_TARGET_ROUNDS=${TARGET_ROUNDS})`)
      targetRuns = await rounds(selected.filter((j) => TARGET_JOBS.includes(j.key)), TARGET_ROUNDS - ROUNDS,
        new Map([...runs].map(([key, list]) => [key, [...list]])))
    }
    for (const t of targets.splice(0)) await t.stop()

    const c = {
      bare: best(runs, 'ceiling.bare'), insert: best(runs, 'ceiling.insert'), ingest: best(runs, 'ceiling.ingest'),
      claim: best(runs, 'ceiling.claim'), claimNamed: best(runs, 'ceiling.claimNamed'), claimSend: best(runs, 'ceiling.claimSend'),
      insertWide: best(runs, 'ceiling.insertWide'), claimWide: best(runs, 'ceiling.claimWide'),
    }
    const a = { ingest1: best(runs, 'app.ingest1'), ingest50: best(runs, 'app.ingest50'), token: best(runs, 'app.token'), tokenWide: best(runs, 'app.tokenWide'), tokenMeta: best(runs, 'app.tokenMeta'), ingest1Wide: best(runs, 'app.ingest1Wide'), window: best(runs, 'app.window') }
    rows.push(
      { section: '(c)', scenario: 'bare Fastify route (JSON in, JSON out)', db: '–', m: c.bare },
      { section: '(c)', scenario: 'bare route + one INSERT (pg)', db: 'postgres', m: c.insert },
      { section: '(c)', scenario: 'bare route + the service\'s ingest statement, 1 opt-in', db: 'postgres', m: c.ingest, ratio: c.ingest.rps / c.insert.rps, versus: 'of bare INSERT' },
      { section: '(c)', scenario: 'bare route + token claim (pg, unnamed)', db: 'postgres', m: c.claim },
      { section: '(c)', scenario: 'bare route + token claim (pg, named)', db: 'postgres', m: c.claimNamed, ratio: c.claimNamed.rps / c.claim.rps, versus: 'of unnamed' },
      { section: '(c)', scenario: 'bare route + named claim + the token sent to the emulator', db: 'postgres', m: c.claimSend, ratio: c.claimSend.rps / c.claim.rps, versus: 'of bare claim' },
    )
    const ingest1 = paired(targetRuns, 'app.ingest1', 'ceiling.insert')
    const token = paired(targetRuns, 'app.token', 'ceiling.claim')
    // The interval shows how far this run's rounds pin the median down: on a shared machine the
    // ratio swings from round to round, and a target inside the interval is not decided by the build.
    const perRound = (p: ReturnType<typeof paired>, bestRatio: number) =>
      ` (median of rounds ${p.rounds.map((r) => r.toFixed(2)).join(', ')}; ` +
      `${p.interval.coverage >= 0.95 ? '95%' : `${pct(p.interval.coverage)} confidence`} interval ${p.interval.lo.toFixed(2)}–${p.interval.hi.toFixed(2)}; ` +
      `best against best ${fmt.ratio(bestRatio)})`
    rows.push(
      { section: '(a)', scenario: LABEL.ingest1, db: 'postgres', m: a.ingest1, ratio: ingest1.median, versus: `of bare INSERT${perRound(ingest1, a.ingest1.rps / c.insert.rps)}`, target: verdict(ingest1.median, TARGETS.ingest, '≥', ingest1.interval) },
      { section: '(a)', scenario: `${LABEL.ingest1}, against the bare ingest statement`, db: 'postgres', ratio: a.ingest1.rps / c.ingest.rps, versus: 'of bare ingest' },
      { section: '(a)', scenario: `${LABEL.ingest50} (${fmt.rps(a.ingest50.rps * 50)} opt-ins/s)`, db: 'postgres', m: a.ingest50, ratio: a.ingest50.rps / c.insert.rps, versus: 'of bare INSERT' },
      { section: '(b)', scenario: LABEL.token, db: 'postgres', m: a.token, ratio: token.median, versus: `of bare claim${perRound(token, a.token.rps / c.claim.rps)}`, target: verdict(token.median, TARGETS.tokenRoute, '≥', token.interval) },
      { section: '(b)', scenario: `${LABEL.token}, against claim + send`, db: 'postgres', ratio: a.token.rps / c.claimSend.rps, versus: 'of bare claim + send' },
      { section: '(b)', scenario: LABEL.window, db: 'postgres', m: a.window, ratio: a.window.rps / c.bare.rps, versus: 'of bare route' },
    )
    if (WIDE > 0) {
      const wide = paired(runs, 'app.tokenWide', 'ceiling.claimWide')
      const wideIngest = paired(runs, 'app.ingest1Wide', 'ceiling.insertWide')
      rows.push(
        { section: '(c)', scenario: `bare route + one INSERT (pg), ${WIDE} connections`, db: 'postgres', m: c.insertWide, ratio: c.insertWide.rps / c.insert.rps, versus: `of ${CONNECTIONS} connections` },
        { section: '(a)', scenario: LABEL.ingest1Wide, db: 'postgres', m: a.ingest1Wide, ratio: wideIngest.median, versus: `of bare INSERT at ${WIDE}${perRound(wideIngest, a.ingest1Wide.rps / c.insertWide.rps)}` },
        { section: '(c)', scenario: `bare route + token claim (pg, unnamed), ${WIDE} connections`, db: 'postgres', m: c.claimWide, ratio: c.claimWide.rps / c.claim.rps, versus: `of ${CONNECTIONS} connections` },
        { section: '(b)', scenario: LABEL.tokenWide, db: 'postgres', m: a.tokenWide, ratio: wide.median, versus: `of bare claim at ${WIDE}${perRound(wide, a.tokenWide.rps / c.claimWide.rps)}` },
      )
    }
    if (META) {
      const bound = META_CONNECTIONS * 1000 / META_LATENCY
      rows.push({ section: '(b)', scenario: LABEL.tokenMeta, db: 'postgres', m: a.tokenMeta, ratio: a.tokenMeta.rps / c.claim.rps, versus: `of bare claim; ${fmt.ratio(a.tokenMeta.rps / bound)} of ${fmt.rps(bound)}/s, its connections over Meta's latency` })
    }
    if (LEVERS) {
      const lever = (key: string, scenario: string, base: Measured, versus: string) => {
        const m = best(runs, key)
        rows.push({ section: 'lever', scenario, db: 'postgres', m, ratio: m.rps / base.rps, versus })
      }
      lever('unnamed.ingest1', `${LABEL.ingest1}, DATABASE_STATEMENT_CACHE_SIZE=0 (unnamed)`, a.ingest1, 'of named')
      lever('info.ingest1', `${LABEL.ingest1}, LOG_LEVEL=info`, a.ingest1, 'of warn')
      lever('unnamed.token', `${LABEL.token}, DATABASE_STATEMENT_CACHE_SIZE=0 (unnamed)`, a.token, 'of named')
      lever('info.token', `${LABEL.token}, LOG_LEVEL=info`, a.token, 'of warn')
      lever('pool20.token', `${LABEL.token}, DATABASE_POOL_SIZE=20`, a.token, 'of pool 10')
      if (META) lever('graph128.tokenMeta', `${LABEL.tokenMeta}, GRAPH_API_CONNECTIONS=128 (the default until 2026-11-22)`, a.tokenMeta, 'of 512')
    }

    if (PGLITE) {
      const dir = mkdtempSync(join(tmpdir(), 'otn-bench-pglite-'))
      try {
        const { app, jobs } = await startApp(emulator, { name: 'pglite', env: { PGLITE_DATA_DIR: dir }, scenarios: ['ingest1', 'ingest50', 'token', 'window'] }, 1)
        targets.push(app)
        await settle(app, [emulator, app])
        const pgliteRuns = await rounds(jobs, 1)
        for (const t of targets.splice(0)) await t.stop()
        for (const s of ['ingest1', 'ingest50', 'token', 'window'] as const) {
          const m = best(pgliteRuns, `pglite.${s}`)
          rows.push({ section: '(4)', scenario: LABEL[s], db: 'pglite (dir)', m, ratio: m.rps / a[s].rps, versus: 'of postgres' })
        }
      } finally {
        rmSync(dir, { recursive: true, force: true })
      }
    }

    if (!only || only.includes('claims')) {
      try {
        claimScale = await runClaimScale({ adminUrl: admin, sizes: [CLAIM_ROWS_SMALL, CLAIM_ROWS_LARGE], claims: CLAIMS })
      } catch (error) {
        claimError = error instanceof Error ? error.message : String(error)
        log(`claim latency failed: ${claimError}`)
      }
    }
    const [small, large] = claimScale
    for (const r of claimScale) {
      for (const [label, m] of [['commit flushed', r.durable], ['statement only', r.statement]] as const) {
        // The verdict is on the named statement: that is how the service sends its claim.
        const base = label === 'commit flushed' ? small.durable.named.p50 : small.statement.named.p50
        const ratio = m.named.p50 / base
        rows.push({
          section: '(d)',
          scenario: `claim, ${r.rows.toLocaleString('en-US')} tokens, ${label}, named (unnamed: p50 ${fmt.ms(m.unnamed.p50)} ms)`,
          db: 'postgres',
          p50: m.named.p50,
          p99: m.named.p99,
          ...(r === large ? { ratio, versus: `of ${small.rows.toLocaleString('en-US')}`, target: verdict(ratio, TARGETS.claimScale, '≤') } : {}),
        })
      }
    }

    if (!only || only.includes('hazard')) hazards = await runPlanHazard({ adminUrl: admin, backlog: envInt('BENCH_BACKLOG', 40_000), count: 300 })
    for (const h of hazards) {
      rows.push({
        section: '(e)', scenario: `${h.transition}, ${h.backlog.toLocaleString('en-US')} since ANALYZE, as shipped (${h.shipped.plan})`, db: 'postgres',
        p50: h.shipped.p50, p99: Number.NaN, ...(h.keyed ? { ratio: h.shipped.p50 / h.keyed.p50, versus: 'of the pre-fix index' } : {}),
      })
    }
  } finally {
    for (const t of targets) await t.stop()
    await emulator?.stop()
    await bench.drop()
    await cluster?.destroy()
  }

  const cpuAfter = machineCpuSeconds()
  const stolen = cpuBefore && cpuAfter ? stolenShare(cpuBefore, cpuAfter) : undefined
  console.log(`\n${machine}`)
  console.log(`${ROUNDS} rounds of ${SECONDS} s per scenario, ${TARGET_ROUNDS} for the two 16-connection targets' pairs (after ${WARMUP} s warm-up, ${FIRST_WARMUP} s before the first), best round shown (targets: the median of the per-round ratios, with the interval that holds the true median); ${CONNECTIONS} connections on loopback; ` +
    `load average ${loadBefore} before, ${load()} after; ${stolen === undefined ? '' : `${pct(stolen)} of the CPU stolen by the hypervisor; `}` +
    `${((Date.now() - started) / 1000).toFixed(0)} s in all\n`)
  console.log(render(rows))
  console.log(`\nClaim latency (unnamed: pg's default; named: as the service sends it), ${CLAIMS} sequential claims of each kind; loaded in ${claimScale.map((r) => `${r.loadSeconds.toFixed(0)} s`).join(' and ')}:\n`)
  console.log(claimScaleTable(claimScale))
  if (claimError) console.log(`claim latency could not be measured: ${claimError}`)
  if (hazards.length > 0) {
    console.log('\nOne guarded transition with a backlog of held tokens / pending notifications made since the last ANALYZE (300 timed, sequential):\n')
    console.log(planHazardTable(hazards))
  }
  if (faultyRounds.length > 0) {
    console.log(`\nWARNING: rounds with answers other than 2xx; their req/s count only the 2xx answers:\n${faultyRounds.map((f) => `- ${f}`).join('\n')}`)
  }
  if (starvedRounds.length > 0) {
    console.log(`\nNOTE: rounds in which the hypervisor took ${pct(STOLEN_NOTE)} or more of the CPU for other guests; they ran on less of a machine:\n` +
      starvedRounds.map((f) => `- ${f}`).join('\n'))
  }
  const failed = rows.filter((r) => r.target && !r.target.pass).length
  const undecided = rows.filter((r) => r.target?.undecided).length
  console.log(`\ntargets: ${rows.filter((r) => r.target).length - failed} pass, ${failed} fail` +
    (undecided > 0 ? ` (${undecided} undecided: the target lies within the interval of the rounds' median, so the machine's swing, not the build, decided the verdict; more rounds narrow the interval)` : ''))
  if (process.env.BENCH_JSON) writeFileSync(process.env.BENCH_JSON, JSON.stringify({ machine, loadBefore, loadAfter: load(), stolen, rows, claimScale }, null, 2))
  if (claimError) process.exitCode = 1
}

main().catch((error) => {
  process.stderr.write(`bench failed: ${error instanceof Error ? error.stack : String(error)}\n`)
  process.exit(1)
})
