// `npm run bench`: the built service as its users meet it (HTTP only: the API, the webhook, the
// emulator standing in for Meta), one process each, on this machine. docs/PERFORMANCE.md says what
// the figures mean. With BENCH_BASELINE=<git ref>[,<git ref>...] the same scenarios run against those
// commits too, round by round in alternating order, and each figure gets a ratio to this checkout with
// the spread of its rounds. BENCH_NODE_ARGS are given to each service's node (a CPU profile, say).
import { spawn, execFileSync, type ChildProcess } from 'node:child_process'
import { createHmac, randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs'
import { cpus, loadavg, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import {
  ADMIN_URL, API_KEY, APP_SECRET, REPO_ROOT, createDatabase, envInt, fmt, freePort, log, measure, medianInterval, table,
  type Measured, type ScratchDatabase,
} from './lib.js'

const SECONDS = envInt('BENCH_SECONDS', 5)
const WARMUP = envInt('BENCH_WARMUP_SECONDS', 3, 0)
const ROUNDS = envInt('BENCH_ROUNDS', 3)
const CONNECTIONS = (process.env.BENCH_CONNECTIONS ?? '16,64').split(',').map(Number)
const SCENARIOS = (process.env.BENCH_SCENARIOS ?? 'token,minimal,webhook,insert,window,broadcast,pages,memory,audience').split(',')
/** Sends per second a scenario may reach at most: what sizes the seeded supply of tokens. */
const RATE_BOUND = envInt('BENCH_RATE_BOUND', 4000)
const BROADCAST_PEOPLE = envInt('BENCH_BROADCAST_PEOPLE', 5000)
/** The memory scenario's first broadcast; its second is four times larger. */
const MEMORY_PEOPLE = envInt('BENCH_MEMORY_PEOPLE', 5000)
const AUDIENCE_TOKENS = envInt('BENCH_AUDIENCE_TOKENS', 1_000_000)
const META_LATENCY = envInt('BENCH_META_LATENCY_MS', 200, 0)
const BASELINE = process.env.BENCH_BASELINE
/** The embedded database's scenarios: by default only the broadcast (what a user plans with); `1` all of them, `0` none. */
const PGLITE_SCENARIOS = process.env.BENCH_PGLITE === '1' ? SCENARIOS : process.env.BENCH_PGLITE === '0' ? [] : SCENARIOS.filter((s) => s === 'broadcast')
const PAGE = '1000001'
const PAGE_TOKEN = 'bench-page-token'
/** The second Page of the `pages` scenario. */
const PAGE2 = '1000002'
const PAGE2_TOKEN = 'bench-page-token-2'
const BENCH_ENCRYPTION_KEYS = `bench:${randomBytes(32).toString('base64')}`
const auth = { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' }

/** A build to measure; `env`: settings of its service (a lever). */
interface Build { name: string, dir: string, env?: Record<string, string> }

/** This checkout, built; and with BENCH_BASELINE, each of its commits built beside it (its own node_modules when its lockfile differs). */
function builds (): Build[] {
  execFileSync('npm', ['run', 'build', '--silent'], { cwd: REPO_ROOT, stdio: 'inherit' })
  const out: Build[] = [{ name: 'this checkout', dir: REPO_ROOT }]
  // BENCH_BASELINE=<ref>[,<ref>...]: each commit built beside this checkout, measured in the same run.
  for (const ref of (BASELINE ?? '').split(',').map((r) => r.trim()).filter(Boolean).reverse()) {
    const dir = mkdtempSync(join(tmpdir(), 'otn-bench-baseline-'))
    execFileSync('git', ['worktree', 'add', '--detach', dir, ref], { cwd: REPO_ROOT, stdio: 'inherit' })
    process.on('exit', () => {
      try { execFileSync('git', ['worktree', 'remove', '--force', dir], { cwd: REPO_ROOT }) } catch {}
    })
    const sameLock = readFileSync(join(dir, 'package-lock.json'), 'utf8') === readFileSync(join(REPO_ROOT, 'package-lock.json'), 'utf8')
    // A few commits hold a stray node_modules symlink (8265948 removed it): replace it.
    rmSync(join(dir, 'node_modules'), { force: true })
    if (sameLock) symlinkSync(join(REPO_ROOT, 'node_modules'), join(dir, 'node_modules'))
    else execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: dir, stdio: 'inherit' })
    execFileSync('npm', ['run', 'build', '--silent'], { cwd: dir, stdio: 'inherit' })
    out.unshift({ name: `baseline ${ref}`, dir })
  }
  // BENCH_LEVER="NAME=value ...": this checkout again with those settings, measured beside it.
  const lever = process.env.BENCH_LEVER?.trim()
  if (lever) {
    const env = Object.fromEntries(lever.split(/\s+/).map((kv) => kv.split('=') as [string, string]))
    out.push({ name: `lever ${lever}`, dir: REPO_ROOT, env })
  }
  return out
}

interface Proc { url: string, child: ChildProcess, stop (): Promise<void> }

async function startProcess (what: string, script: string, env: Record<string, string>, port: number, ready: string, node: string[] = []): Promise<Proc> {
  const child = spawn(process.execPath, [...node, script], { env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr!.on('data', (c) => { stderr = (stderr + c).slice(-4000) })
  const url = `http://127.0.0.1:${port}`
  for (let i = 0; ; i++) {
    if (child.exitCode !== null) throw new Error(`${what} exited (${child.exitCode}): ${stderr}`)
    try {
      if ((await fetch(`${url}${ready}`)).ok) break
    } catch {}
    if (i > 600) throw new Error(`${what} did not become ready: ${stderr}`)
    await sleep(100)
  }
  return {
    url,
    child,
    async stop () {
      if (child.exitCode !== null) return
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
      await exited
      clearTimeout(timer)
    },
  }
}

interface Stack { build: Build, service: Proc, emulator: Proc, ceilings?: Proc, db?: ScratchDatabase, dataDir?: string, topics: Map<string, Topic> }
interface Topic { id: string, payload: string }

/** The emulator and the service of `build`, on a fresh database (Postgres, or PGlite in a fresh folder). */
async function startStack (build: Build, embedded: boolean): Promise<Stack> {
  const [servicePort, emulatorPort] = [await freePort(), await freePort()]
  const emulator = await startProcess('emulator', join(REPO_ROOT, 'dist/src/emulator/main.js'), {
    EMULATOR_PORT: String(emulatorPort), META_APP_SECRET: APP_SECRET, EMULATOR_PAGES: `${PAGE}:${PAGE_TOKEN},${PAGE2}:${PAGE2_TOKEN}`,
    EMULATOR_WEBHOOK_URL: `http://127.0.0.1:${servicePort}/webhooks/messenger`, EMULATOR_RECORD_LIMIT: '1000',
  }, emulatorPort, '/_emulator/pages')
  const db = embedded ? undefined : await createDatabase(ADMIN_URL, 'otn_bench')
  const dataDir = embedded ? mkdtempSync(join(tmpdir(), 'otn-bench-pglite-')) : undefined
  const service = await startProcess(`service (${build.name})`, join(build.dir, 'dist/src/server.js'), {
    PORT: String(servicePort), API_KEYS: API_KEY, LOG_LEVEL: 'warn', META_APP_SECRET: APP_SECRET, META_VERIFY_TOKEN: 'bench-verify',
    GRAPH_API_BASE_URL: emulator.url, PAGE_ID: PAGE, PAGE_ACCESS_TOKEN: PAGE_TOKEN, BROADCAST_RATE_PER_SECOND: '300', ENCRYPTION_KEYS: BENCH_ENCRYPTION_KEYS,
    ...(db ? { DATABASE_URL: db.url } : { PGLITE_DATA_DIR: dataDir! }),
    ...build.env,
  }, servicePort, '/readyz', (process.env.BENCH_NODE_ARGS ?? '').split(/\s+/).filter(Boolean))
  await call(`${service.url}/v1/pages/${PAGE2}`, 'PUT', { name: 'Bench Page 2', access_token: PAGE2_TOKEN })
  // The ceilings run on this checkout's database only (they share its tables), never at the same time as the service's scenarios.
  const ceilingsPort = await freePort()
  const ceilings = db && build.name === 'this checkout'
    ? await startProcess('ceilings', join(REPO_ROOT, 'bench/ceilings.ts'), {
      DATABASE_URL: db.url, GRAPH_URL: emulator.url, PAGE_ID: PAGE, PAGE_ACCESS_TOKEN: PAGE_TOKEN, PORT: String(ceilingsPort), ENCRYPTION_KEYS: BENCH_ENCRYPTION_KEYS,
    }, ceilingsPort, '/ready', ['--import', 'tsx'])
    : undefined
  return { build, service, emulator, ceilings, db, dataDir, topics: new Map() }
}

async function stopStack (s: Stack): Promise<void> {
  await s.ceilings?.stop()
  await s.service.stop()
  await s.emulator.stop()
  await s.db?.drop()
  if (s.dataDir) rmSync(s.dataDir, { recursive: true, force: true })
}

async function call<T> (url: string, method: string, body?: unknown): Promise<T> {
  const res = await fetch(url, {
    method, headers: body !== undefined ? auth : { authorization: auth.authorization }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  })
  if (!res.ok) throw new Error(`${method} ${url}: ${res.status} ${await res.text()}`)
  return (res.status === 204 ? undefined : await res.json()) as T
}

async function topic (s: Stack, name: string, page = PAGE): Promise<Topic> {
  const t = await call<Topic>(`${s.service.url}/v1/topics`, 'POST', { page_id: page, name: `${name} ${randomBytes(3).toString('hex')}` })
  s.topics.set(name, t)
  return t
}

/** People who opt in (`payload`) and/or write (their window opens), delivered by the emulator as Meta batches them. */
async function crowd (s: Stack, people: number, prefix: string, opts: { payload?: string, writes?: boolean, page?: string }): Promise<void> {
  for (let done = 0; done < people; done += 20_000) {
    const r = await call<{ failed_deliveries: number }>(`${s.emulator.url}/_emulator/pages/${opts.page ?? PAGE}/crowd`, 'POST', {
      people: Math.min(20_000, people - done), psid_prefix: `${prefix}x${done}x`, ...(opts.payload ? { payload: opts.payload } : {}), writes: opts.writes ?? false,
    })
    if (r.failed_deliveries > 0) throw new Error(`${r.failed_deliveries} seeding deliveries failed`)
  }
}

type Scenario = (s: Stack, connections: number, round: number) => Promise<Measured | number | undefined>

/** Resident memory of the service now (from its own metrics). */
async function rssMb (s: Stack): Promise<number> {
  const text = await (await fetch(`${s.service.url}/metrics`)).text()
  return Number(/^process_resident_memory_bytes (\S+)/m.exec(text)?.[1] ?? NaN) / 2 ** 20
}

/** A broadcast to `people` token holders with Meta answering in BENCH_META_LATENCY_MS: people per second. */
async function broadcast (s: Stack, people: number, prefix: string): Promise<number> {
  const [rate] = await broadcastsAtOnce(s, [PAGE], people, prefix)
  return rate
}

/** One broadcast on each of `pages` at the same time, each to `people` token holders: each one's people per second. */
async function broadcastsAtOnce (s: Stack, pages: string[], people: number, prefix: string): Promise<number[]> {
  const topics: Topic[] = []
  for (const [i, page] of pages.entries()) {
    const t = await topic(s, `broadcast ${prefix} ${page}`, page)
    await crowd(s, people, `${prefix}p${i}`, { payload: t.payload, page })
    topics.push(t)
  }
  await call(`${s.emulator.url}/_emulator/faults`, 'PUT', { latencyMs: META_LATENCY })
  try {
    const ids = await Promise.all(topics.map(async (t) => (await call<{ id: string }>(`${s.service.url}/v1/broadcasts`, 'POST', { topic_id: t.id, message: { text: 'Flash sale' } })).id))
    const rates: number[] = []
    for (const id of ids) {
      for (;;) {
        const got = await call<{ state: string, started_at: string, completed_at: string | null, progress: { sent_token: number } }>(`${s.service.url}/v1/broadcasts/${id}`, 'GET')
        if (got.state === 'completed') {
          rates.push(got.progress.sent_token / ((Date.parse(got.completed_at!) - Date.parse(got.started_at)) / 1000))
          break
        }
        await sleep(500)
      }
    }
    return rates
  } finally {
    await call(`${s.emulator.url}/_emulator/faults`, 'DELETE')
  }
}

/**
 * `tokens` one-time tokens on the topic (opted in over the last year; a tenth of the people wrote in
 * the last day), written straight into the database: a million opt-ins through the webhook would
 * take longer than the measure. Postgres only.
 */
async function seedAudience (url: string, payload: string, tokens: number): Promise<void> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    for (let from = 0; from < tokens; from += 100_000) {
      await client.query(`insert into optin_tokens (page_id, psid, payload, token, opted_in_at, expires_at)
        select $1, 'aud' || i, $2, 'aud-' || i || '-' || md5(random()::text), now() - make_interval(days => i % 365), now() - make_interval(days => i % 365) + interval '365 days'
          from generate_series($3::int, $4::int) i`, [PAGE, payload, from, Math.min(tokens, from + 100_000) - 1])
    }
    await client.query(`insert into subscribers (page_id, psid, first_seen_at, last_interaction_at)
      select $1, 'aud' || i, now() - interval '400 days', now() - interval '1 hour' from generate_series(0, $2::int - 1, 10) i
      on conflict do nothing`, [PAGE, tokens])
    await client.query('analyze optin_tokens; analyze subscribers')
  } finally {
    await client.end()
  }
}

/**
 * Planning a BENCH_AUDIENCE_TOKENS audience with filters (a recipe of docs/BROADCASTS.md): people
 * listed per second. Logs the estimate's time, and the service's resident memory before planning
 * and at its peak while planning (flat: planning holds one page of people at a time). Then cancels.
 */
async function audience (s: Stack): Promise<number | undefined> {
  if (!s.db) return undefined
  const t = await topic(s, `audience ${randomBytes(2).toString('hex')}`)
  await seedAudience(s.db.url, t.payload, AUDIENCE_TOKENS)
  const day = 86_400_000
  const body = {
    topic_id: t.id, message: { text: 'Restock' },
    audience: { opted_in_after: new Date(Date.now() - 200 * day).toISOString(), window: 'closed', not_notified_since: new Date(Date.now() - 7 * day).toISOString() },
  }
  const asked = performance.now()
  const estimate = await call<{ audience: number }>(`${s.service.url}/v1/broadcasts/estimate`, 'POST', body)
  const estimateMs = performance.now() - asked
  const before = await rssMb(s)
  let peak = before
  const b = await call<{ id: string }>(`${s.service.url}/v1/broadcasts`, 'POST', body)
  for (;;) {
    const got = await call<{ started_at: string, planned_at: string | null, audience_final: number | null }>(`${s.service.url}/v1/broadcasts/${b.id}`, 'GET')
    peak = Math.max(peak, await rssMb(s))
    if (got.planned_at !== null) {
      await call(`${s.service.url}/v1/broadcasts/${b.id}/cancel`, 'POST')
      const seconds = (Date.parse(got.planned_at) - Date.parse(got.started_at)) / 1000
      log(`${s.build.name}: audience of ${fmt.rps(got.audience_final!)} people (estimate ${fmt.rps(estimate.audience)}, in ${fmt.ms(estimateMs)} ms) ` +
        `out of ${fmt.rps(AUDIENCE_TOKENS)} tokens, planned in ${seconds.toFixed(1)} s; resident memory ${Math.round(before)} MB before, ${Math.round(peak)} MB at most while planning`)
      return got.audience_final! / seconds
    }
    await sleep(500)
  }
}

/** One signed delivery of one opt-in from a new person, as Meta sends a click. */
function webhookBody (tag: string, i: number) {
  const at = Date.now()
  const body = JSON.stringify({
    object: 'page',
    entry: [{ id: PAGE, time: at, messaging: [{ sender: { id: `${tag}x${i}` }, recipient: { id: PAGE }, timestamp: at, optin: { type: 'one_time_notif_req', payload: 'bench', one_time_notif_token: `bench-${tag}-${i}-${randomBytes(12).toString('hex')}` } }] }],
  })
  return { body, headers: { 'content-type': 'application/json', 'x-hub-signature-256': `sha256=${createHmac('sha256', APP_SECRET).update(body).digest('hex')}` } }
}

const supply = () => RATE_BOUND * (SECONDS + WARMUP)

const scenarios: Record<string, Scenario> = {
  /** POST /v1/notifications to people outside their window: each spends one token. */
  async token (s, connections, round) {
    const t = s.topics.get('token') ?? await topic(s, 'token')
    const prefix = `t${connections}r${round}`
    await crowd(s, supply(), prefix, { payload: t.payload })
    let i = 0
    return measure({
      url: s.service.url, path: '/v1/notifications', connections, seconds: SECONDS, warmupSeconds: WARMUP, headers: auth, pid: s.service.child.pid,
      next: () => ({ body: JSON.stringify({ topic_id: t.id, psid: `${prefix}x${Math.floor(i / 20_000) * 20_000}x${i++ % 20_000}`, message: { text: 'Back in stock' }, use_window: false }) }),
    })
  },
  /** The same route for people inside their window: a standard message, no token. */
  async window (s, connections, round) {
    const t = s.topics.get('window') ?? await topic(s, 'window')
    const prefix = `w${connections}r${round}`
    await crowd(s, supply(), prefix, { writes: true })
    let i = 0
    return measure({
      url: s.service.url, path: '/v1/notifications', connections, seconds: SECONDS, warmupSeconds: WARMUP, headers: auth, pid: s.service.child.pid,
      next: () => ({ body: JSON.stringify({ topic_id: t.id, psid: `${prefix}x${Math.floor(i / 20_000) * 20_000}x${i++ % 20_000}`, message: { text: 'Thanks!' } }) }),
    })
  },
  /** The minimal correct send (bench/ceilings.ts) on the same database and emulator: the ceiling of the token route. */
  async minimal (s, connections, round) {
    if (!s.ceilings) return undefined
    const t = s.topics.get('token') ?? await topic(s, 'token')
    const prefix = `m${connections}r${round}`
    await crowd(s, supply(), prefix, { payload: t.payload })
    let i = 0
    return measure({
      url: s.ceilings.url, path: '/send', connections, seconds: SECONDS, warmupSeconds: WARMUP, headers: { 'content-type': 'application/json' }, pid: s.ceilings.child.pid,
      next: () => ({ body: JSON.stringify({ topic_id: t.id, psid: `${prefix}x${Math.floor(i / 20_000) * 20_000}x${i++ % 20_000}`, message: { text: 'Back in stock' } }) }),
    })
  },
  /** Signed webhook deliveries of one opt-in each, as Meta sends them one click at a time. */
  async webhook (s, connections, round) {
    let i = 0
    return measure({
      url: s.service.url, path: '/webhooks/messenger', connections, seconds: SECONDS, warmupSeconds: WARMUP, pid: s.service.child.pid,
      next: () => webhookBody(`h${connections}r${round}`, i++),
    })
  },
  /** The same bodies, each stored by one INSERT (bench/ceilings.ts): the ceiling of ingestion. */
  async insert (s, connections, round) {
    if (!s.ceilings) return undefined
    let i = 0
    return measure({
      url: s.ceilings.url, path: '/insert', connections, seconds: SECONDS, warmupSeconds: WARMUP, pid: s.ceilings.child.pid,
      next: () => webhookBody(`i${connections}r${round}`, i++),
    })
  },
  /** A broadcast to BENCH_BROADCAST_PEOPLE token holders with Meta answering in BENCH_META_LATENCY_MS: people per second. */
  broadcast: (s, _connections, round) => broadcast(s, BROADCAST_PEOPLE, `b${round}`),
  /** Two Pages broadcasting at once, BENCH_BROADCAST_PEOPLE each: people per second on both together (each Page's in the log). */
  async pages (s, _connections, round) {
    const [a, b] = await broadcastsAtOnce(s, [PAGE, PAGE2], BROADCAST_PEOPLE, `p${round}`)
    log(`${s.build.name}: two Pages at once: ${fmt.rps(a)} and ${fmt.rps(b)} people/s (the slower at ${fmt.ratio(Math.min(a, b) / Math.max(a, b))} of the faster)`)
    return a + b
  },
  /** Resident memory after a BENCH_MEMORY_PEOPLE (5,000) broadcast, then after one four times larger: the second over the first. */
  async memory (s, _connections, round) {
    await broadcast(s, MEMORY_PEOPLE, `memA${round}`)
    const small = await rssMb(s)
    await broadcast(s, 4 * MEMORY_PEOPLE, `memB${round}`)
    const large = await rssMb(s)
    log(`${s.build.name}: resident memory ${Math.round(small)} MB after ${fmt.rps(MEMORY_PEOPLE)} people, ${Math.round(large)} MB after ${fmt.rps(4 * MEMORY_PEOPLE)}`)
    return large / small
  },
  /** Planning a BENCH_AUDIENCE_TOKENS (1,000,000) audience with filters, Postgres: people listed per second (memory logged). */
  audience: (s) => audience(s),
}

interface Cell { build: string, figures: Array<Measured | number> }

async function main (): Promise<void> {
  const bs = builds()
  const load = () => loadavg().map((l) => l.toFixed(2)).join(' ')
  log(`machine: ${cpus().length} × ${cpus()[0]?.model ?? '?'}, ${Math.round(totalmem() / 2 ** 30)} GiB; load ${load()}`)
  log(`BENCH_SECONDS=${SECONDS} BENCH_WARMUP_SECONDS=${WARMUP} BENCH_ROUNDS=${ROUNDS} BENCH_CONNECTIONS=${CONNECTIONS.join(',')} BENCH_SCENARIOS=${SCENARIOS.join(',')}${BASELINE ? ` BENCH_BASELINE=${BASELINE}` : ''}`)
  const databases = PGLITE_SCENARIOS.length > 0 ? [false, true] : [false]
  const results = new Map<string, Cell[]>()
  for (const embedded of databases) {
    const stacks: Stack[] = []
    try {
      for (const b of bs) stacks.push(await startStack(b, embedded))
      for (const name of embedded ? PGLITE_SCENARIOS : SCENARIOS) {
        const scenario = scenarios[name]
        if (!scenario) throw new Error(`unknown scenario ${name} (known: ${Object.keys(scenarios).join(', ')})`)
        for (const connections of ['broadcast', 'pages', 'memory', 'audience'].includes(name) ? [0] : CONNECTIONS) {
          const key = `${embedded ? 'PGlite' : 'Postgres'}\t${name}${connections ? ` @${connections}` : ''}`
          const cells = stacks.map((s) => ({ build: s.build.name, figures: [] as Array<Measured | number> }))
          for (let round = 0; round < (name === 'broadcast' || name === 'pages' ? Math.min(ROUNDS, 2) : name === 'memory' || name === 'audience' ? 1 : ROUNDS); round++) {
            // Alternate the order: the second of two runs one after the other was measured faster.
            const order = round % 2 === 0 ? stacks.map((_, i) => i) : stacks.map((_, i) => i).reverse()
            for (const i of order) {
              const figure = await scenario(stacks[i], connections, round)
              if (figure === undefined) continue
              cells[i].figures.push(figure)
              log(`${key.replace('\t', ' ')} round ${round + 1} ${stacks[i].build.name}: ${typeof figure === 'number' ? `${fmt.rps(figure)}` : `${fmt.rps(figure.rps)}/s p50 ${fmt.ms(figure.p50)} ms p99 ${fmt.ms(figure.p99)} ms${figure.non2xx ? ` non-2xx ${figure.non2xx}` : ''}`}`)
            }
          }
          results.set(key, cells.filter((c) => c.figures.length > 0))
        }
      }
      for (const s of stacks) {
        const text = await (await fetch(`${s.service.url}/metrics`)).text()
        const rss = /^process_resident_memory_bytes (\S+)/m.exec(text)?.[1]
        log(`${embedded ? 'PGlite' : 'Postgres'} ${s.build.name}: resident memory after the run ${rss ? `${Math.round(Number(rss) / 2 ** 20)} MB` : '?'}`)
      }
    } finally {
      for (const s of stacks) await stopStack(s)
    }
  }
  const rate = (f: Measured | number | undefined) => (typeof f === 'number' ? f : f?.rps ?? Number.NaN)
  const rows: string[][] = []
  for (const [key, cells] of results) {
    for (const c of cells) {
      const rates = medianInterval(c.figures.map(rate))
      const measured = c.figures.filter((f): f is Measured => typeof f !== 'number')
      const p50 = medianInterval(measured.map((f) => f.p50)).median
      const p99 = medianInterval(measured.map((f) => f.p99)).median
      const non2xx = measured.reduce((n, f) => n + f.non2xx, 0)
      rows.push([...key.split('\t'), c.build, fmt.rps(rates.median), measured.length ? fmt.ms(p50) : '', measured.length ? fmt.ms(p99) : '', measured.length ? String(non2xx) : ''])
    }
    // Round by round: every other build over this checkout, and the spread of those ratios.
    const mine = cells.find((c) => c.build === 'this checkout')
    for (const other of cells.filter((c) => c !== mine && mine && c.figures.length === mine.figures.length)) {
      const r = medianInterval(other.figures.map((f, i) => rate(f) / rate(mine!.figures[i])))
      const noise = r.lo <= 1 && r.hi >= 1 ? 'within noise' : r.median > 1 ? 'faster' : 'slower'
      rows.push([...key.split('\t'), `${other.build} ÷ this checkout`, `${fmt.ratio(r.median)} (${fmt.ratio(r.lo)}–${fmt.ratio(r.hi)})`, '', '', noise])
    }
  }
  // This checkout against its ceilings, round by round, at each number of connections.
  for (const [service, ceiling, what] of [['token', 'minimal', 'token route ÷ minimal correct send'], ['webhook', 'insert', 'webhook ÷ bare INSERT']]) {
    for (const connections of CONNECTIONS) {
      const ours = results.get(`Postgres\t${service} @${connections}`)?.find((c) => c.build === 'this checkout')
      const bare = results.get(`Postgres\t${ceiling} @${connections}`)?.find((c) => c.build === 'this checkout')
      if (!ours || !bare) continue
      const r = medianInterval(ours.figures.map((f, i) => rate(f) / rate(bare.figures[i])))
      rows.push(['Postgres', `${what} @${connections}`, 'this checkout', `${fmt.ratio(r.median)} (${fmt.ratio(r.lo)}–${fmt.ratio(r.hi)})`, '', '', ''])
    }
  }
  process.stdout.write(`\n${table(['database', 'scenario', 'build', 'figure (median)', 'p50 ms', 'p99 ms', 'non-2xx'], rows)}\n`)
  log(`done; load ${load()}`)
}

main().then(() => process.exit(0), (err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.stack : String(err)}\n`)
  process.exit(1)
})
