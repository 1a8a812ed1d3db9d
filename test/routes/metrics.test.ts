import t from 'tap'
import { sql, type KyselyPlugin, type RawNode } from 'kysely'
import type { FastifyInstance } from 'fastify'
import { buildApp } from '../../src/app.js'
import { ConfigError, loadConfig } from '../../src/config.js'
import { appOnOwnDatabase, auth, build, databaseKind, LogCapture, testConfig, testDatabase, truncateAll, uniquePageId } from '../helper.js'
import { FAST_TIMEOUT, giveTokens, newPsid, notify, openWindow, world } from '../fixtures/otn.js'
import { entry, envelope, messageEvent, optinEvent, readEvent, signedPost, uniquePsid, uniqueToken, webhookEnv } from '../fixtures/webhooks.js'
import type { Database } from '../../src/db/database.js'

interface Sample { name: string, labels: Record<string, string>, value: number }

/** The samples of a Prometheus text exposition (comment lines skipped). */
function parse (text: string): Sample[] {
  return text.split('\n').filter((line) => line !== '' && !line.startsWith('#')).map((line) => {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (!m) throw new Error(`not a sample line: ${line}`)
    const labels = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((l) => [l[1], l[2]]))
    return { name: m[1], labels, value: Number(m[3]) }
  })
}

/** The value of the one sample with exactly these labels, or undefined when there is none. */
function value (samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const want = JSON.stringify(Object.entries(labels).sort())
  return samples.find((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want)?.value
}

async function scrape (app: FastifyInstance, headers: Record<string, string> = {}): Promise<{ text: string, samples: Sample[] }> {
  const res = await app.inject({ url: '/metrics', headers })
  if (res.statusCode !== 200) throw new Error(`/metrics answered ${res.statusCode}: ${res.body}`)
  return { text: res.body, samples: parse(res.body) }
}

t.test('HTTP requests are counted by route pattern, never by URL; the scrape itself is not counted', async (t) => {
  const app = await build(t)
  const pageId = uniquePageId()
  const psid = `psidSecret${Date.now()}`
  t.equal((await app.inject({ method: 'PUT', url: `/v1/pages/${pageId}`, headers: auth, payload: { name: 'Shop', access_token: 'EAAmetrics-page-token' } })).statusCode, 201)
  for (let i = 0; i < 2; i++) {
    const res = await app.inject({ url: `/v1/pages/${pageId}/subscribers/${psid}?access_token=querySecret`, headers: auth })
    t.equal(res.json().code, 'subscriber_not_found', 'a matched route may answer 404 too')
  }
  await app.inject({ url: `/no/such/route/${psid}?token=querySecret` })
  await app.inject({ url: '/healthz' })

  const first = await app.inject({ url: '/metrics' })
  t.equal(first.statusCode, 200)
  t.equal(first.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8')
  const { text, samples } = await scrape(app)
  const route = '/v1/pages/:pageId/subscribers/:psid'
  t.equal(value(samples, 'otn_http_requests_total', { method: 'GET', route, status_code: '404' }), 2)
  t.equal(value(samples, 'otn_http_request_duration_seconds_count', { method: 'GET', route, status_code: '404' }), 2)
  t.equal(value(samples, 'otn_http_request_duration_seconds_bucket', { method: 'GET', route, status_code: '404', le: '+Inf' }), 2)
  t.equal(value(samples, 'otn_http_requests_total', { method: 'PUT', route: '/v1/pages/:pageId', status_code: '201' }), 1)
  t.equal(value(samples, 'otn_http_requests_total', { method: 'GET', route: 'unmatched', status_code: '404' }), 1)
  t.equal(value(samples, 'otn_http_requests_total', { method: 'GET', route: '/healthz', status_code: '200' }), 1)
  t.notOk(samples.some((s) => s.labels.route === '/metrics'), 'the scrape is not counted (two were made)')
  for (const secret of [psid, pageId, 'querySecret', 'EAAmetrics']) t.notOk(text.includes(secret), `${secret} is not in the metrics`)

  // prom-client's process metrics, under their standard names.
  for (const name of ['process_cpu_user_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds', 'nodejs_heap_size_used_bytes']) {
    t.type(value(samples, name), 'number', name)
  }
  t.match(text, /^# TYPE nodejs_gc_duration_seconds histogram$/m)
  t.notMatch(text, /^otn_(process|nodejs)_/m, 'the otn_ prefix is only on our own metrics')
})

t.test('Graph API attempts are counted by outcome through the emulator', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const [bogus] = await giveTokens(w, psid, 1, { token: () => `bogus-${psid}` })
  const [good] = await giveTokens(w, psid, 1)
  const sent = await notify(w.app, { topic_id: w.topic.id, psid, message: { text: 'back in stock' } })
  t.equal(sent.statusCode, 201, sent.body)

  let { text, samples } = await scrape(w.app)
  t.equal(value(samples, 'otn_graph_requests_total', { outcome: 'graph_error', status_class: '4xx' }), 1, 'Meta refused the bogus token')
  t.equal(value(samples, 'otn_graph_requests_total', { outcome: 'ok' }), 1, 'then sent with the good one')
  t.equal(value(samples, 'otn_graph_request_duration_seconds_count', { outcome: 'ok' }), 1)
  t.ok(value(samples, 'otn_graph_request_duration_seconds_sum', { outcome: 'ok' })! > 0)

  w.emulator.setFaults({ resetRate: 1 })
  const other = newPsid()
  await giveTokens(w, other, 1)
  const lost = await notify(w.app, { topic_id: w.topic.id, psid: other, message: { text: 'back in stock' } })
  t.ok(lost.statusCode >= 500, lost.body)
  w.emulator.clearFaults()

  ;({ text, samples } = await scrape(w.app))
  const noAnswer = value(samples, 'otn_graph_requests_total', { outcome: 'no_answer', reason: 'connection_lost' })
  t.ok(noAnswer! >= 1, `connection resets counted (${noAnswer})`)
  t.equal(value(samples, 'otn_graph_request_duration_seconds_count', { outcome: 'no_answer' }), noAnswer)
  const attempts = samples.filter((s) => s.name === 'otn_graph_requests_total').reduce((sum, s) => sum + s.value, 0)
  t.equal(attempts, w.emulator.requests.length, 'every request the emulator saw is counted once')
  for (const secret of [psid, other, bogus.token, good.token, w.accessToken]) t.notOk(text.includes(secret), 'no PSID or token in the metrics')
})

t.test('Graph API calls holding a connection and waiting for one, read at each scrape', async (t) => {
  const w = await world(t, { env: { GRAPH_API_CONNECTIONS: '1' } })
  w.emulator.setFaults({ latencyMs: 400 }, w.pageId)
  const people = [newPsid(), newPsid(), newPsid()]
  for (const psid of people) await giveTokens(w, psid, 1)
  const load = async () => {
    const { samples } = await scrape(w.app)
    return [value(samples, 'otn_graph_requests_in_flight'), value(samples, 'otn_graph_requests_waiting')]
  }
  t.same(await load(), [0, 0], 'at rest')
  const answers = Promise.all(people.map((psid) => notify(w.app, { topic_id: w.topic.id, psid, message: { text: 'back in stock' } })))
  // Three sends, one connection, Meta answering in 400 ms: one holds it, two wait (a state, polled for).
  let seen = await load()
  for (let i = 0; i < 250 && !(seen[0] === 1 && seen[1] === 2); i++) {
    await new Promise((resolve) => setTimeout(resolve, 10))
    seen = await load()
  }
  t.same(seen, [1, 2], 'one in flight, two waiting')
  t.same((await answers).map((r) => r.json().status), ['sent', 'sent', 'sent'])
  t.same(await load(), [0, 0], 'all settled')
})

t.test('notifications are counted by final status and route, as the database records them', async (t) => {
  const w = await world(t, { env: FAST_TIMEOUT })
  const send = (psid: string) => notify(w.app, { topic_id: w.topic.id, psid, message: { text: 'back in stock' } })
  const holder = newPsid()
  await giveTokens(w, holder, 1)
  t.equal((await send(holder)).statusCode, 201, 'sent with the token')
  t.equal((await send(holder)).statusCode, 409, 'no token left')
  const writer = newPsid()
  await openWindow(w, writer)
  t.equal((await send(writer)).statusCode, 201, 'sent through the window')
  const unlucky = newPsid()
  await giveTokens(w, unlucky, 1)
  w.emulator.setFaults({ hangRate: 1 })
  t.ok((await send(unlucky)).statusCode >= 500, 'Meta does not answer')
  w.emulator.clearFaults()

  const { samples } = await scrape(w.app)
  const { rows } = await sql<{ status: string, route: string | null, count: number }>`
    select status, route, count(*)::int as count from notifications where page_id = ${w.pageId} group by status, route`.execute(w.db)
  t.ok(rows.length >= 4, `four kinds of outcome (${rows.map((r) => `${r.status}/${r.route}`).join(', ')})`)
  for (const r of rows) {
    t.equal(value(samples, 'otn_notifications_total', { status: r.status, route: r.route ?? '' }), r.count, `${r.status} by ${r.route}`)
  }
  const counted = samples.filter((s) => s.name === 'otn_notifications_total').reduce((sum, s) => sum + s.value, 0)
  t.equal(counted, rows.reduce((sum, r) => sum + r.count, 0), 'nothing else is counted')
  t.equal(value(samples, 'otn_notifications_total', { status: 'sent', route: 'token' }), 1)
  t.equal(value(samples, 'otn_notifications_total', { status: 'sent', route: 'window' }), 1)
  t.equal(value(samples, 'otn_notifications_total', { status: 'no_token', route: 'token' }), 1)
})

t.test('backlog gauges read the database on each scrape (METRICS_CACHE_SECONDS=0)', async (t) => {
  const app = await build(t, { METRICS_CACHE_SECONDS: '0' })
  await app.ready()
  await app.maintenance() // the start-up maintenance has run; the rows below are not its business
  const { db } = await testDatabase()
  await truncateAll(db)
  const notification = (psid: string, status: 'pending' | 'sent', createdSecondsAgo: number) => ({
    page_id: '1', psid, message: JSON.stringify({ text: 'hi' }), status,
    created_at: new Date(Date.now() - createdSecondsAgo * 1000), completed_at: status === 'sent' ? new Date() : null,
  })
  const [oldest, newer] = await db.insertInto('notifications')
    .values([notification('p1', 'pending', 600), notification('p2', 'pending', 5), notification('p3', 'sent', 3600)])
    .returning('id').execute()
  // Two tokens held by the two pending notifications (claims.ts), one usable.
  const token = (i: number, heldBy?: string) => ({
    page_id: '1', psid: `p${i}`, payload: 'x', token: `metrics-token-${i}-${Date.now()}`, opted_in_at: new Date(),
    expires_at: new Date(Date.now() + 86_400_000), state: 'available' as const,
    notification_id: heldBy ?? null, lease_expires_at: heldBy ? new Date(Date.now() + 3_600_000) : null,
  })
  const tokens = await db.insertInto('optin_tokens').values([token(1, oldest.id), token(2, newer.id), token(3)]).returning('id').execute()
  await app.jobs.createQueue('metrics-test')
  await app.jobs.send('metrics-test', {}, { startAfter: 3600 })

  let { samples } = await scrape(app)
  t.equal(value(samples, 'otn_metrics_database_up'), 1)
  t.equal(value(samples, 'otn_tokens', { state: 'held' }), 2)
  t.equal(value(samples, 'otn_notifications', { status: 'pending' }), 2)
  const age = value(samples, 'otn_notifications_oldest_age_seconds', { status: 'pending' })!
  t.ok(age >= 599 && age < 700, `oldest pending is ~600 s old (${age})`)
  t.equal(value(samples, 'otn_jobs_queued', { queue: 'metrics-test' }), 1)

  await db.updateTable('notifications').set({ status: 'sent', completed_at: new Date() }).where('id', '=', oldest.id).execute()
  await db.updateTable('optin_tokens').set({ state: 'used', lease_expires_at: null }).where('id', '=', tokens[0].id).execute()
  ;({ samples } = await scrape(app))
  t.equal(value(samples, 'otn_tokens', { state: 'held' }), 1)
  t.equal(value(samples, 'otn_notifications', { status: 'pending' }), 1)
  t.ok(value(samples, 'otn_notifications_oldest_age_seconds', { status: 'pending' })! < 100, 'now the 5 s old one')
})

t.test('the scrape answers 200 with otn_metrics_database_up 0 when the database does not answer', async (t) => {
  const { app, goAway } = await appOnOwnDatabase(t, { METRICS_CACHE_SECONDS: '0' })
  let { samples } = await scrape(app)
  t.equal(value(samples, 'otn_metrics_database_up'), 1)
  t.type(value(samples, 'otn_tokens', { state: 'held' }), 'number')

  await goAway()
  const res = await app.inject({ url: '/metrics' })
  t.equal(res.statusCode, 200)
  samples = parse(res.body)
  t.equal(value(samples, 'otn_metrics_database_up'), 0)
  for (const name of ['otn_tokens', 'otn_notifications', 'otn_notifications_oldest_age_seconds', 'otn_jobs_queued']) {
    t.notOk(samples.some((s) => s.name === name), `${name} is left out`)
  }
  t.type(value(samples, 'process_cpu_user_seconds_total'), 'number', 'the rest is still there')
})

t.test('METRICS_TOKEN: a bearer token, compared in constant time, never logged', async (t) => {
  const secret = 'metrics-secret-7f3a9c'
  const logs = new LogCapture()
  const app = await build(t, { METRICS_TOKEN: secret, LOG_LEVEL: 'trace' }, { logStream: logs })
  const problem = (detail: string) => ({ type: 'https://otn.invalid/problems/unauthorized', title: 'Unauthorized', status: 401, detail, code: 'unauthorized' })

  const none = await app.inject({ url: '/metrics' })
  t.equal(none.statusCode, 401)
  t.equal(none.headers['content-type'], 'application/problem+json; charset=utf-8')
  t.equal(none.headers['www-authenticate'], 'Bearer')
  t.same(none.json(), problem('Send the metrics token as "Authorization: Bearer <METRICS_TOKEN>".'))
  for (const authorization of [`Bearer ${secret}x`, auth.authorization, `Basic ${Buffer.from(`u:${secret}`).toString('base64')}`]) {
    const wrong = await app.inject({ url: '/metrics', headers: { authorization } })
    t.equal(wrong.statusCode, 401, authorization)
    t.equal(wrong.json().code, 'unauthorized')
  }
  t.same((await app.inject({ url: '/metrics', headers: { authorization: `Bearer ${secret}x` } })).json(), problem('The metrics token is not valid.'))

  const ok = await app.inject({ url: '/metrics', headers: { authorization: `Bearer ${secret}` } })
  t.equal(ok.statusCode, 200)
  t.match(ok.body, /^otn_metrics_database_up 1$/m)
  t.equal((await app.inject({ url: '/v1/topics', headers: { authorization: `Bearer ${secret}` } })).statusCode, 401, 'the metrics token is not an API key')
  t.ok(logs.lines.length > 0, 'requests were logged')
  t.notOk(logs.text.includes(secret), 'the token never appears in the logs')
})

t.test('METRICS_ENABLED=false: no /metrics, no instrumentation', async (t) => {
  const app = await build(t, { METRICS_ENABLED: 'false' })
  const res = await app.inject({ url: '/metrics' })
  t.equal(res.statusCode, 404)
  t.equal(res.json().code, 'route_not_found')
  t.notOk(app.hasDecorator('metrics'))

  t.equal(testConfig({ METRICS_ENABLED: 'true' }).METRICS_ENABLED, true)
  t.equal(testConfig().METRICS_ENABLED, true, 'on by default')
  const bad = t.throws(() => loadConfig({ API_KEYS: 'key-one-123', METRICS_ENABLED: 'yes', METRICS_TOKEN: 'short' })) as ConfigError
  t.type(bad, ConfigError)
  t.match(bad.problems, [/^METRICS_ENABLED: must be boolean/, /^METRICS_TOKEN: must match pattern/])
  t.notOk(bad.message.includes('short'), 'a bad token is not repeated in the message')
})

t.test('pg pool gauges on Postgres, none on PGlite', async (t) => {
  const { url } = await testDatabase()
  if (databaseKind === 'pglite') {
    const { text } = await scrape(await build(t))
    t.notMatch(text, /otn_db_pool_/)
    return
  }
  // The app opens its own pool from DATABASE_URL, as in production.
  const app = await buildApp(testConfig({ DATABASE_URL: url!, DATABASE_POOL_SIZE: '3' }))
  t.teardown(() => app.close())
  await app.ready()
  // Four slow queries on three connections: every client busy, at least one query waiting.
  const slow = Array.from({ length: 4 }, () => sql`select pg_sleep(0.5)`.execute(app.db))
  await new Promise((resolve) => setTimeout(resolve, 100))
  const { samples } = await scrape(app)
  await Promise.all(slow)
  t.equal(value(samples, 'otn_db_pool_clients'), 3)
  t.equal(value(samples, 'otn_db_pool_idle_clients'), 0)
  const waiting = value(samples, 'otn_db_pool_waiting_requests')!
  t.ok(waiting >= 1, `waiting: ${waiting}`)
})

t.test('webhook events by outcome and reason, deliveries stored or duplicate; a duplicate is not counted twice (#24.3, #24.6)', async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  const psid = uniquePsid()
  const zero = (await scrape(app)).samples
  t.equal(value(zero, 'otn_webhook_events_total', { outcome: 'rejected', reason: 'invalid_psid' }), 0, 'every series exists from the start')
  t.equal(value(zero, 'otn_webhook_deliveries_total', { outcome: 'duplicate' }), 0)
  const body = envelope([
    entry(pageId, [optinEvent({ pageId, psid, payload: 'deals', token: uniqueToken() }), optinEvent({ pageId, psid, payload: 'deals', token: uniqueToken() })]),
    entry(pageId, [optinEvent({ pageId, psid, payload: 'deals', token: 'x'.repeat(3000) })]),
    entry(pageId, [optinEvent({ pageId, psid: 'p'.repeat(100), payload: 'deals', token: uniqueToken() })]),
    entry(pageId, [messageEvent({ pageId, psid }), readEvent({ pageId, psid })]),
  ])
  for (let i = 0; i < 3; i++) t.equal((await signedPost(app, body)).statusCode, 200)
  const { samples, text } = await scrape(app)
  const events = (outcome: string, reason: string) => value(samples, 'otn_webhook_events_total', { outcome, reason })
  t.equal(events('recorded', 'optin'), 2)
  t.equal(events('recorded', 'interaction'), 1)
  t.equal(events('rejected', 'invalid_token'), 1)
  t.equal(events('rejected', 'invalid_psid'), 1)
  t.equal(events('ignored', 'receipt'), 1)
  t.equal(events('ignored', 'echo'), 0)
  t.equal(value(samples, 'otn_webhook_deliveries_total', { outcome: 'stored' }), 1)
  t.equal(value(samples, 'otn_webhook_deliveries_total', { outcome: 'duplicate' }), 2)
  const reasons = new Set(samples.filter((s) => s.name === 'otn_webhook_events_total').map((s) => s.labels.reason))
  t.equal(reasons.size, 14, 'the label values are the fixed list: optin, interaction and the receipt\'s twelve reasons')
  t.notOk(text.includes(psid), 'no PSID in the metrics')
})

/** `db`, counting the backlog reads of the metrics (the query that names oldest_pending_seconds). */
function countingBacklogReads (db: Database): { db: Database, reads: () => number } {
  let reads = 0
  const plugin: KyselyPlugin = {
    transformQuery: (args) => {
      if (args.node.kind === 'RawNode' && (args.node as RawNode).sqlFragments.join('').includes('oldest_pending_seconds')) reads++
      return args.node
    },
    transformResult: async (args) => args.result,
  }
  return { db: db.withPlugin(plugin), reads: () => reads }
}

t.test('50 scrapes at once read the database once; later ones reuse it for METRICS_CACHE_SECONDS (#24.10)', async (t) => {
  const { db } = await testDatabase()
  const counted = countingBacklogReads(db)
  const app = await build(t, { METRICS_CACHE_SECONDS: '300' }, { db: counted.db })
  await app.ready()
  const answers = await Promise.all(Array.from({ length: 50 }, () => app.inject({ url: '/metrics' })))
  t.same(new Set(answers.map((a) => a.statusCode)), new Set([200]))
  t.equal(counted.reads(), 1, 'one read for fifty scrapes')
  const pending = value(parse(answers[0].body), 'otn_notifications', { status: 'pending' })!
  await db.insertInto('notifications').values({ page_id: '1', psid: `cache-${Date.now()}`, message: JSON.stringify({ text: 'hi' }), status: 'pending' }).execute()
  const later = await scrape(app)
  t.equal(value(later.samples, 'otn_notifications', { status: 'pending' }), pending, 'a scrape within the period reuses the read')
  t.equal(counted.reads(), 1)

  const uncached = countingBacklogReads(db)
  const fresh = await build(t, { METRICS_CACHE_SECONDS: '0' }, { db: uncached.db })
  await fresh.ready()
  const first = await scrape(fresh)
  const second = await scrape(fresh)
  t.equal(uncached.reads(), 2, 'METRICS_CACHE_SECONDS=0: each scrape reads')
  t.equal(value(second.samples, 'otn_notifications', { status: 'pending' }), value(first.samples, 'otn_notifications', { status: 'pending' }))
  t.equal(testConfig().METRICS_CACHE_SECONDS, 5, 'five seconds by default')
})

t.test('unknown HTTP methods add no label values; the build is named (#24.10, #28.7)', async (t) => {
  const app = await build(t, { BUILD_COMMIT: 'abc123def456' })
  for (const method of ['PROPFIND', 'MKCOL', 'LOCK', 'PURGE', 'SEARCH'] as const) {
    t.equal((await app.inject({ method, url: '/nowhere' })).statusCode, 404, method)
  }
  await app.inject({ method: 'DELETE', url: '/nowhere' })
  const { samples, text } = await scrape(app)
  t.equal(value(samples, 'otn_http_requests_total', { method: 'other', route: 'unmatched', status_code: '404' }), 5)
  t.equal(value(samples, 'otn_http_requests_total', { method: 'DELETE', route: 'unmatched', status_code: '404' }), 1)
  t.notMatch(text, /PROPFIND|MKCOL|LOCK|PURGE|SEARCH/)
  const { version } = JSON.parse(await (await import('node:fs/promises')).readFile(new URL('../../package.json', import.meta.url), 'utf8'))
  t.equal(value(samples, 'otn_build_info', { version, commit: 'abc123def456' }), 1)

  const unset = await build(t)
  const info = (await scrape(unset)).samples.find((s) => s.name === 'otn_build_info')!
  t.match(info, { value: 1, labels: { version, commit: /^([0-9a-f]{12}|unknown)$/ } }, 'without BUILD_COMMIT: the checkout\'s commit')
})

t.test('an idle instance reads no waiting pool request: its own scrape is not counted (#28.7)', { skip: databaseKind === 'pglite' && 'the pg pool exists on Postgres only' }, async (t) => {
  const { url } = await testDatabase()
  const app = await buildApp(testConfig({ DATABASE_URL: url!, DATABASE_POOL_SIZE: '3', METRICS_CACHE_SECONDS: '0' }))
  t.teardown(() => app.close())
  await app.ready()
  // Idle once the start-up maintenance (recovery, key rotation, ...) has run: while it runs it may hold
  // the pool's three connections, and a scrape then rightly reads a waiting request.
  await app.maintenance()
  for (let i = 0; i < 5; i++) {
    const { samples } = await scrape(app)
    t.equal(value(samples, 'otn_db_pool_waiting_requests'), 0, `scrape ${i + 1}`)
  }
})

t.test('a running broadcast shows the people it has left, and a rate-limited Page the share of its rate it may use', async (t) => {
  const app = await build(t, { METRICS_CACHE_SECONDS: '0' })
  await app.ready()
  const { db } = await testDatabase()
  const pageId = uniquePageId()
  await db.insertInto('pages').values({ id: pageId, name: 'P', access_token: 'tok' }).execute()
  const topic = await db.insertInto('topics').values({ page_id: pageId, name: `m ${pageId}`, title: 'm', payload: `m-${pageId}` }).returning('id').executeTakeFirstOrThrow()
  const b = await db.insertInto('broadcasts').values({
    page_id: pageId, topic_id: topic.id, message: JSON.stringify({ text: 'hi' }), audience: 'explicit', audience_estimate: 3,
    state: 'running', send_at: new Date(), started_at: new Date(),
  }).returning('id').executeTakeFirstOrThrow()
  await db.insertInto('broadcast_recipients').values(['a', 'b', 'c'].map((psid) => ({ page_id: pageId, broadcast_id: b.id, psid, batch: 0 }))).execute()
  await db.updateTable('broadcast_recipients').set({ state: 'done', outcome: 'sent_token', completed_at: new Date() }).where('psid', '=', 'a').execute()
  const { pausePage } = await import('../../src/domain/broadcast-pacing.js')
  await pausePage(db, pageId, 1)
  await pausePage(db, pageId, 1)
  const { samples } = await scrape(app)
  t.equal(value(samples, 'otn_broadcast_remaining', { broadcast_id: b.id, page_id: pageId }), 2)
  t.equal(value(samples, 'otn_broadcast_rate_share', { page_id: pageId }), 0.25, 'two rate limits: a quarter of the rate')
  await db.updateTable('broadcasts').set({ state: 'completed', completed_at: new Date() }).where('id', '=', b.id).execute()
  t.equal(value((await scrape(app)).samples, 'otn_broadcast_remaining', { broadcast_id: b.id, page_id: pageId }), undefined, 'gone once it ends')
})
