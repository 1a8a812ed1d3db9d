// `npm run soak`: two service instances (src/server.ts, as deployed) on a private Postgres cluster,
// behind a small round-robin balancer, with opt-in webhooks and notification sends in parallel,
// the emulator injecting faults, one instance killed with SIGKILL and restarted, and Postgres
// restarted once. Then lease recovery is let run, and an audit checks that nothing was sent twice,
// lost or left half-done. Bounded: SOAK_SECONDS of load (default 150), then at most
// SOAK_SETTLE_SECONDS (default 60) for recovery. Loopback only. Exit code 1 when a must-be-0 is not 0.
// SOAK_EXTRA_IMPORT: a module the instances load with --import, to try a fix without editing the service.
import { spawn, type ChildProcess } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { closeSync, openSync, readFileSync } from 'node:fs'
import http from 'node:http'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { pathToFileURL } from 'node:url'
import pg from 'pg'
import { request } from 'undici'
import { Keyring, parseEncryptionKeys } from '../src/crypto/secret-box.js'
import { NO_ANSWER_LOG } from '../src/domain/send.js'
import { createEmulator, type Emulator, type FaultConfig } from '../src/emulator/emulator.js'
import { API_KEY, APP_SECRET, REPO_ROOT, envInt, freePort, table } from './lib.js'
import { startCluster, type Cluster } from './pg-cluster.js'

export interface SoakOptions {
  seconds: number
  settleSeconds?: number
  /** Progress lines go here (default stderr); the audit is returned. */
  log?: (line: string) => void
}

export interface SoakReport {
  /** Figures for the record. */
  figures: Array<[string, string | number]>
  /** Each must be 0. */
  mustBeZero: Array<[string, number]>
  /** Proof that the run did something: each should be well above 0. */
  totals: { webhooks: number, sends: number, graphRequests: number, faults: number, tokensRecorded: number, tokensAccepted: number, instanceStarts: number }
  failed: boolean
  /** Where instance and Postgres logs were kept when the soak failed (else removed). */
  logsKeptIn?: string
}

// One encryption key for every instance of the run (they share one database).
const SOAK_ENCRYPTION_KEYS = `soak:${randomBytes(32).toString('base64')}`
// A token a send holds is `available` with a notification_id (src/domain/lifecycle.ts: held); the audit calls it held.
const HELD = "state = 'available' and notification_id is not null"
const STATE = `case when ${HELD} then 'held' else state end`
const PAGE_ID = '4242000001'
const ACCESS_TOKEN = 'soak-page-access-token'
const PERSONS = 400

/** The emulator's faults, changed every few seconds so that every kind meets every phase of the run. */
const FAULT_PROFILES: FaultConfig[] = [
  { http5xxRate: 0.05, hangRate: 0.03, resetRate: 0.03 },
  { resetRate: 0.06, http5xxRate: 0.03, processThenFail: 'reset' },
  { hangRate: 0.05, errorRate: 0.03, processThenFail: 'hang' },
  {},
]

// ---------------------------------------------------------------------------------------------

interface Balancer { url: string, close (): Promise<void>, refused: number, failed: number }

/**
 * Round-robin over the instances, as a load balancer in front of them would be. A refused
 * connection (the instance is down, nothing was sent) is tried on the next instance; any other
 * failure is a 502 to the caller, who cannot know whether the request was processed.
 */
async function startBalancer (ports: number[]): Promise<Balancer> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 })
  let next = 0
  const stats = { refused: 0, failed: 0 }
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks)
      const first = next++
      const forward = (attempt: number): void => {
        const port = ports[(first + attempt) % ports.length]
        const up = http.request({ host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers, agent, timeout: 30_000 }, (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers)
          answer.pipe(res)
        })
        up.on('timeout', () => up.destroy(new Error('upstream timeout')))
        up.on('error', (error: NodeJS.ErrnoException) => {
          if (error.code === 'ECONNREFUSED' && attempt + 1 < ports.length) {
            stats.refused++
            return forward(attempt + 1)
          }
          stats.failed++
          if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' }).end('bad gateway')
          else res.destroy()
        })
        up.end(body)
      }
      forward(0)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  return {
    url: `http://127.0.0.1:${port}`,
    get refused () { return stats.refused },
    get failed () { return stats.failed },
    async close () {
      agent.destroy()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
  }
}

// ---------------------------------------------------------------------------------------------

function safeJson (text: string): Record<string, any> | undefined {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

interface Instance { name: string, port: number, child?: ChildProcess, planned: boolean, starts: number }

async function waitReady (port: number, deadline: number): Promise<void> {
  while (Date.now() < deadline) {
    try {
      const res = await request(`http://127.0.0.1:${port}/readyz`, { headersTimeout: 2000, bodyTimeout: 2000 })
      await res.body.dump()
      if (res.statusCode === 200) return
    } catch {}
    await sleep(200)
  }
  throw new Error(`instance on port ${port} was not ready in time`)
}

export async function runSoak (opts: SoakOptions): Promise<SoakReport> {
  const say = opts.log ?? ((line: string) => process.stderr.write(`[soak ${new Date().toISOString().slice(11, 19)}] ${line}\n`))
  const settleSeconds = opts.settleSeconds ?? 60
  const cleanups: Array<() => Promise<void>> = []
  let cluster: Cluster | undefined
  let failed = true
  try {
    cluster = await startCluster()
    const dir = cluster.dir
    say(`private Postgres on port ${cluster.port} in ${dir}`)

    const instances: Instance[] = [
      { name: 'a', port: await freePort(), planned: false, starts: 0 },
      { name: 'b', port: await freePort(), planned: false, starts: 0 },
    ]
    const balancer = await startBalancer(instances.map((i) => i.port))
    cleanups.unshift(() => balancer.close())

    const emulator: Emulator = createEmulator({ appSecret: APP_SECRET, webhookUrl: `${balancer.url}/webhooks/messenger`, recordLimit: 1_000_000 })
    const graphBase = await emulator.listen(0)
    cleanups.unshift(() => emulator.close())
    emulator.addPage({ id: PAGE_ID, accessToken: ACCESS_TOKEN })

    let unexpectedExits = 0
    let shuttingDown = false
    const restarts: Array<Promise<unknown>> = []
    const start = async (instance: Instance): Promise<void> => {
      const logFd = openSync(join(dir, `instance-${instance.name}.log`), 'a')
      const extra = process.env.SOAK_EXTRA_IMPORT ? ['--import', process.env.SOAK_EXTRA_IMPORT] : []
      const child = spawn(process.execPath, ['--import', 'tsx', ...extra, 'src/server.ts'], {
        cwd: REPO_ROOT,
        env: {
          PATH: process.env.PATH,
          HOME: process.env.HOME,
          HOST: '127.0.0.1',
          PORT: String(instance.port),
          DATABASE_URL: cluster!.url,
          DATABASE_POOL_SIZE: '5',
          API_KEYS: API_KEY,
          ENCRYPTION_KEYS: SOAK_ENCRYPTION_KEYS,
          META_APP_SECRET: APP_SECRET,
          GRAPH_API_BASE_URL: graphBase,
          GRAPH_API_TIMEOUT_MS: '800',
          GRAPH_API_CONNECT_TIMEOUT_MS: '500',
          GRAPH_API_MAX_RETRIES: '2',
          // One connection towards Meta, so that during the hangs sends wait for it, and some get
          // none in time (busy: not sent, the token kept).
          GRAPH_API_CONNECTIONS: '1',
          TOKEN_LEASE_SECONDS: '5',
          MAINTENANCE_INTERVAL_SECONDS: '1',
          SHUTDOWN_TIMEOUT_MS: '5000',
          LOG_LEVEL: 'warn',
        },
        stdio: ['ignore', logFd, logFd],
      })
      closeSync(logFd)
      instance.child = child
      instance.planned = false
      instance.starts++
      child.on('exit', (code, signal) => {
        if (instance.planned) return
        unexpectedExits++
        // As a supervisor (systemd, Kubernetes) would: start it again, and count the crash.
        say(`instance ${instance.name} exited unexpectedly (${signal ?? code}); restarting it`)
        if (!shuttingDown) {
          restarts.push(sleep(1000).then(() => start(instance)).catch((error) => say(`restart of ${instance.name} failed: ${error}`)))
        }
      })
      await waitReady(instance.port, Date.now() + 90_000)
    }
    const stop = async (instance: Instance, signal: NodeJS.Signals): Promise<void> => {
      const child = instance.child
      if (!child || child.exitCode !== null || child.signalCode !== null) return
      instance.planned = true
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
      child.kill(signal)
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
      await exited
      clearTimeout(timer)
    }
    cleanups.unshift(async () => {
      shuttingDown = true
      await Promise.allSettled(restarts)
      for (const i of instances) await stop(i, 'SIGTERM')
    })

    await start(instances[0]) // migrates first, so that the second start finds the schema
    await start(instances[1])
    say(`instances a (:${instances[0].port}) and b (:${instances[1].port}) ready; balancer ${balancer.url}; emulator ${graphBase}`)

    const api = async (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) => {
      const res = await request(`${balancer.url}${path}`, {
        method: method as 'POST',
        headers: { authorization: `Bearer ${API_KEY}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
        body: body !== undefined ? JSON.stringify(body) : undefined,
        headersTimeout: 20_000,
        bodyTimeout: 20_000,
      })
      const text = await res.body.text()
      return { status: res.statusCode, text }
    }
    const page = await api('PUT', `/v1/pages/${PAGE_ID}`, { name: 'Soak', access_token: ACCESS_TOKEN })
    if (page.status >= 300) throw new Error(`page: ${page.status} ${page.text}`)
    const topicRes = await api('POST', '/v1/topics', { page_id: PAGE_ID, name: 'Back in stock' })
    if (topicRes.status !== 201) throw new Error(`topic: ${topicRes.status} ${topicRes.text}`)
    const topic = JSON.parse(topicRes.text) as { id: string, payload: string }

    // ---- load --------------------------------------------------------------------------------
    const psids = Array.from({ length: PERSONS }, (_, i) => `soak${i}`)
    const holders = new Set<string>()
    const counts = { clicks: 0, writes: 0, sends: 0, sendRetries: 0, sendGaveUp: 0 }
    const sendStatus = new Map<string, number>()
    const pick = <T>(xs: T[]): T => xs[Math.floor(Math.random() * xs.length)]
    const loadEnds = Date.now() + opts.seconds * 1000
    const running = () => Date.now() < loadEnds

    // One person in ten also writes to the Page (which opens the 24-hour window, so their
    // notifications take the window route); everyone else is reached with tokens only.
    const chatty = (psid: string) => Number(psid.slice(4)) % 10 === 0
    const person = async (): Promise<void> => {
      while (running()) {
        const psid = pick(psids)
        if (!chatty(psid) || Math.random() < 0.5) {
          await emulator.clickNotifyMe(PAGE_ID, psid, { payload: topic.payload })
          holders.add(psid)
          counts.clicks++
        } else {
          await emulator.personWrites(PAGE_ID, psid)
          counts.writes++
        }
        await sleep(15 + Math.random() * 20)
      }
    }

    const sender = async (): Promise<void> => {
      while (running()) {
        const candidates = [...holders]
        if (candidates.length === 0) {
          await sleep(50)
          continue
        }
        const psid = pick(candidates)
        const key = `soak-${randomBytes(8).toString('hex')}`
        counts.sends++
        // A careful caller: the same Idempotency-Key again while it has not learnt the outcome (no
        // answer, a balancer 502, the database unavailable, the first request still in progress).
        // A request still in progress says so at once with a Retry-After: asked again after it, for
        // up to a minute, without counting as one of the five tries.
        const deadline = Date.now() + 60_000
        for (let attempt = 1; ; attempt++) {
          let status: string
          let retry: boolean
          let inProgress = false
          try {
            const res = await api('POST', '/v1/notifications', { topic_id: topic.id, psid, message: { text: 'Back in stock' } }, { 'idempotency-key': key })
            status = String(res.status)
            const body = res.status >= 400 ? safeJson(res.text) : undefined
            inProgress = res.status === 409 && body?.code === 'idempotency_in_progress'
            retry = inProgress || (res.status >= 500 && body?.notification === undefined && body?.graph === undefined)
          } catch {
            status = 'no answer'
            retry = true
          }
          sendStatus.set(status, (sendStatus.get(status) ?? 0) + 1)
          if (!retry) break
          if (inProgress && Date.now() < deadline) {
            attempt--
            await sleep(1000)
            continue
          }
          if (attempt >= 5) {
            counts.sendGaveUp++
            break
          }
          counts.sendRetries++
          await sleep(300 * attempt)
        }
        await sleep(10 + Math.random() * 20)
      }
    }

    const chaos = async (): Promise<void> => {
      const at = (fraction: number) => sleep(Math.max(0, loadEnds - opts.seconds * 1000 * (1 - fraction) - Date.now()))
      await at(0.3)
      say('SIGKILL instance b')
      await stop(instances[1], 'SIGKILL')
      await sleep(2000)
      await start(instances[1])
      say('instance b restarted and ready')
      await at(0.6)
      say('restarting Postgres (pg_ctl restart -m fast)')
      await cluster!.restart()
      say('Postgres is back')
    }

    const faults = async (): Promise<void> => {
      for (let i = 0; running(); i++) {
        emulator.setFaults(FAULT_PROFILES[i % FAULT_PROFILES.length])
        await sleep(Math.min(3000, Math.max(0, loadEnds - Date.now())))
      }
      emulator.clearFaults()
    }

    say(`load for ${opts.seconds} s: opt-ins (and some messages) from ${PERSONS} people, notification sends, faults, a kill and a Postgres restart`)
    const workers = [faults(), chaos(), ...Array.from({ length: 3 }, person), ...Array.from({ length: 4 }, sender)]
    // Every loop ends by itself shortly after the load time (each request has a timeout); this only
    // keeps the soak bounded should something hang, and counts it.
    const outcome = await Promise.race([Promise.allSettled(workers), sleep(opts.seconds * 1000 + 120_000, 'hung' as const, { ref: false })])
    const hungLoops = outcome === 'hung' ? 1 : 0
    if (outcome === 'hung') say('load loops still busy 2 minutes after the end of the load; auditing anyway')
    const crashed = outcome === 'hung' ? [] : outcome.filter((r) => r.status === 'rejected') as PromiseRejectedResult[]
    if (crashed.length > 0) throw crashed[0].reason
    emulator.clearFaults()

    // ---- Meta redelivers what was not acknowledged (a few passes, bounded in time) ----------------
    const acknowledged = new Set(emulator.webhooks.filter((w) => w.status === 200).map((w) => w.body))
    const firstTry = emulator.webhooks.length
    let redelivered = 0
    const redeliveryEnds = Date.now() + 30_000
    for (let pass = 0; pass < 5 && Date.now() < redeliveryEnds; pass++) {
      const pending = emulator.webhooks.slice(0, firstTry).map((w, i) => ({ w, i })).filter(({ w }) => !acknowledged.has(w.body))
      if (pending.length === 0) break
      if (pass > 0) await sleep(1000)
      await Promise.all(Array.from({ length: 8 }, async () => {
        for (let item = pending.shift(); item && Date.now() < redeliveryEnds; item = pending.shift()) {
          redelivered++
          if ((await emulator.redeliverWebhook(item.i)).status === 200) acknowledged.add(item.w.body)
        }
      }))
    }

    // ---- recovery ---------------------------------------------------------------------------------
    const db = new pg.Client({ connectionString: cluster.url })
    db.on('error', () => {})
    await db.connect()
    cleanups.unshift(() => db.end())
    const open = async () => {
      const { rows: [r] } = await db.query(`select
          (select count(*) from optin_tokens where ${HELD})::int as held,
          (select count(*) from notifications where status = 'pending')::int as pending`)
      return r as { held: number, pending: number }
    }
    const settleEnds = Date.now() + settleSeconds * 1000
    let left = await open()
    say(`load over; waiting for lease recovery (${left.held} held, ${left.pending} pending)`)
    while ((left.held > 0 || left.pending > 0) && Date.now() < settleEnds) {
      await sleep(500)
      left = await open()
    }

    // ---- audit --------------------------------------------------------------------------------------
    const audit = emulator.audit()
    const faultsInjected = new Map<string, number>()
    for (const r of emulator.requests) if (r.fault) faultsInjected.set(r.fault, (faultsInjected.get(r.fault) ?? 0) + 1)
    const { rows: states } = await db.query(`select ${STATE} as state, count(*)::int as n from optin_tokens group by 1 order by 1`)
    const { rows: statuses } = await db.query('select status, route, count(*)::int as n from notifications group by status, route order by status, route')
    const { rows: [tokenCount] } = await db.query('select count(*)::int as n from optin_tokens')
    // Bodies are stored sealed (docs/SECURITY.md): opened with the soak's key, then hashed.
    const soakKeys = new Keyring(parseEncryptionKeys(SOAK_ENCRYPTION_KEYS).keys)
    const sha = (body: string | Buffer) => createHash('sha256').update(body).digest('hex')
    const { rows: stored } = await db.query('select body from webhook_events where length(body) > 0')
    const storedBodies = new Set(stored.map((r) => sha(soakKeys.openBytes('webhook_events.body', r.body as Buffer))))
    const answered200 = emulator.webhooks.filter((w) => w.status === 200)
    const missing = answered200.filter((w) => !storedBodies.has(sha(w.body))).length
    const optinTokens = answered200.filter((w) => w.event === 'optin')
      .map((w) => (JSON.parse(w.body).entry[0].messaging[0].optin.one_time_notif_token as string))
    // Tokens are stored sealed: a token is found by its keyed digest under the soak's key.
    const digestsOf = (tokens: string[]) => [...new Set(tokens)].map((t) => soakKeys.digest('optin_token', t))
    const { rows: knownTokens } = await db.query('select id from optin_tokens where token_digest = any($1::bytea[])', [digestsOf(optinTokens)])
    const tokensMissing = new Set(optinTokens).size - knownTokens.length
    const spentAtMeta = [...emulator.tokenUses().keys()]
    const { rows: spentStates } = await db.query(`select ${STATE} as state, count(*)::int as n from optin_tokens where token_digest = any($1::bytea[]) group by 1`, [digestsOf(spentAtMeta)])
    const spentButUsable = spentStates.filter((r) => r.state === 'available').reduce((a, r) => a + r.n, 0)

    // What the instances logged at error level, grouped (a 500 answer is always among them), and
    // the token sends' unanswered attempts by reason (logged at warn).
    const logged = new Map<string, number>()
    const unanswered = new Map<string, number>()
    for (const i of instances) {
      for (const line of readFileSync(join(dir, `instance-${i.name}.log`), 'utf8').split('\n')) {
        const entry = line.startsWith('{') ? safeJson(line) : undefined
        if (entry?.msg === NO_ANSWER_LOG) unanswered.set(entry.reason, (unanswered.get(entry.reason) ?? 0) + 1)
        if (!entry || entry.level < 50) continue
        const what = `${entry.msg}${entry.err?.message ? `: ${String(entry.err.message).slice(0, 80)}` : ''}`
        logged.set(what, (logged.get(what) ?? 0) + 1)
      }
    }
    const figures: Array<[string, string | number]> = [
      ['load seconds', opts.seconds],
      ['webhook POSTs (first tries, redeliveries)', `${firstTry} (${redelivered} redeliveries)`],
      ['webhook POSTs not acknowledged, after redelivery', emulator.webhooks.filter((w) => !acknowledged.has(w.body)).length],
      ['notification requests (logical sends, retries, gave up)', `${counts.sends} (${counts.sendRetries} retries, ${counts.sendGaveUp} gave up)`],
      ['notification answers by status', [...sendStatus].sort().map(([s, n]) => `${s}: ${n}`).join(', ')],
      ['Graph API requests to the emulator', audit.requests],
      ['token sends\' unanswered attempts, by reason (busy: no free connection, not sent)', [...unanswered].sort().map(([r, n]) => `${r} ${n}`).join(', ') || 'none'],
      ['faults injected', `${[...faultsInjected.values()].reduce((a, b) => a + b, 0)} (${[...faultsInjected].sort().map(([f, n]) => `${f} ${n}`).join(', ')})`],
      ['balancer: refused and failed over / 502', `${balancer.refused} / ${balancer.failed}`],
      ['instance starts (a, b)', `${instances[0].starts}, ${instances[1].starts}`],
      ['tokens recorded', tokenCount.n],
      ['tokens by state', states.map((r) => `${r.state} ${r.n}`).join(', ')],
      ['notifications by status/route', statuses.map((r) => `${r.status}/${r.route ?? '-'} ${r.n}`).join(', ')],
      ['tokens accepted by the emulator', audit.tokens_accepted],
      ['errors logged by the instances', logged.size === 0 ? 'none' : [...logged].sort((a, b) => b[1] - a[1]).map(([m, n]) => `${n}× ${m}`).join('; ')],
    ]
    const mustBeZero: Array<[string, number]> = [
      ['tokens accepted twice', audit.double_spends],
      ['tokens stuck held', left.held],
      ['notifications not in a final state', left.pending],
      ['webhook POSTs answered 200 but missing from the database', missing],
      ['opt-in tokens answered 200 but not recorded', tokensMissing],
      ['tokens spent at Meta but still usable in the database', spentButUsable],
      ['instance exits nobody asked for', unexpectedExits],
      ['load loops still busy 2 minutes after the load', hungLoops],
    ]
    failed = mustBeZero.some(([, n]) => n !== 0)
    const totals = {
      webhooks: firstTry,
      sends: counts.sends,
      graphRequests: audit.requests,
      faults: [...faultsInjected.values()].reduce((a, b) => a + b, 0),
      tokensRecorded: tokenCount.n as number,
      tokensAccepted: audit.tokens_accepted,
      instanceStarts: instances[0].starts + instances[1].starts,
    }
    return { figures, mustBeZero, totals, failed, ...(failed ? { logsKeptIn: dir } : {}) }
  } finally {
    for (const cleanup of cleanups) {
      try {
        await cleanup()
      } catch {}
    }
    if (cluster) {
      if (failed) say(`logs kept in ${cluster.dir}`)
      await (failed ? cluster.stop() : cluster.destroy()).catch(() => {})
    }
  }
}

export function soakTable (report: SoakReport): string {
  return table(['audit', 'value'], [
    ...report.figures.map(([k, v]) => [k, String(v)]),
    ...report.mustBeZero.map(([k, v]) => [`${k} (must be 0)`, `${v}${v === 0 ? '' : '  FAIL'}`]),
  ])
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const seconds = envInt('SOAK_SECONDS', 150)
  const report = await runSoak({ seconds, settleSeconds: envInt('SOAK_SETTLE_SECONDS', 60) })
  console.log(soakTable(report))
  console.log(report.failed ? `\nsoak FAILED${report.logsKeptIn ? `; logs in ${report.logsKeptIn}` : ''}` : '\nsoak passed: every must-be-0 is 0')
  process.exit(report.failed ? 1 : 0)
}

