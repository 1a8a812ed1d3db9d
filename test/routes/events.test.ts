import t, { type Test } from 'tap'
import { randomUUID } from 'node:crypto'
import { sql } from 'kysely'
import { auth, build, LogCapture } from '../helper.js'
import { APP_SECRET, newPsid, notify, world, type World } from '../fixtures/otn.js'
import { optIn } from '../fixtures/consent.js'
import { signedPost } from '../fixtures/webhooks.js'
import { eventsEnv, startReceiver, until, type Receiver } from '../fixtures/event-receiver.js'

async function subscribe (w: Pick<World, 'app'>, body: Record<string, unknown>) {
  const res = await w.app.inject({ method: 'POST', url: '/v1/event-subscriptions', headers: auth, payload: body })
  if (res.statusCode !== 201) throw new Error(res.body)
  return res.json() as { id: string, secret: string } & Record<string, unknown>
}

async function eventWorld (t: Test, env: Record<string, string> = {}) {
  const log = new LogCapture()
  const w = await world(t, { env: { ...eventsEnv, LOG_LEVEL: 'info', ...env }, deps: { logStream: log } })
  // Subscriptions are not per Page: each test starts without those of earlier tests.
  await sql`delete from event_subscriptions`.execute(w.db)
  return { w, log }
}

const ofType = (r: Receiver, type: string) => r.received.filter((x) => x.json.type === type)

t.test('an opt-in gives exactly one optin.created, signed; the same webhook again gives none', async (t) => {
  const { w } = await eventWorld(t)
  const receiver = await startReceiver(t)
  const sub = await subscribe(w, { url: receiver.url, events: ['optin.created'] })
  t.match(sub.secret, /^whsec_[A-Za-z0-9+/]+=*$/, 'a Standard Webhooks secret')
  const psid = newPsid()
  const { token, body } = await optIn(w, psid)
  const got = await until('the event', () => receiver.received[0])
  t.equal(got.json.type, 'optin.created')
  t.match(got.json.data, { page_id: w.pageId, psid, topic_id: w.topic.id, topic_payload: w.topic.payload, kind: 'one_time_notif', token_id: String, sequence: Number })
  t.ok(receiver.verify(got, sub.secret), 'standardwebhooks verifies it')
  t.match(got.headers['webhook-id'], /^[0-9a-f-]{36}$/)
  t.match(got.headers['webhook-signature'], /^v1,[A-Za-z0-9+/]+=*$/, 'one signature')
  t.notOk(got.body.includes(token), 'no token value')
  t.throws(() => receiver.verify(got, `whsec_${Buffer.alloc(32, 1).toString('base64')}`), 'another secret does not verify')

  const again = await signedPost(w.app, body, APP_SECRET)
  t.equal(again.json().duplicate, true)
  const reparsed = await signedPost(w.app, JSON.stringify(JSON.parse(body), null, 1), APP_SECRET)
  t.equal(reparsed.statusCode, 200)
  await w.app.deliverEvents()
  const { rows } = await sql<{ n: string }>`select count(*)::text as n from events where page_id = ${w.pageId}`.execute(w.db)
  t.equal(rows[0].n, '1', 'one event in the outbox')
  t.equal(receiver.received.length, 1, 'one delivery')
  const delivery = await until('delivered', async () => {
    const list = (await w.app.inject({ method: 'GET', url: `/v1/event-subscriptions/${sub.id}/deliveries`, headers: auth })).json()
    return list.items[0]?.state === 'delivered' ? list.items[0] : undefined
  })
  t.match(delivery, { event_id: got.headers['webhook-id'], event_type: 'optin.created', attempts: 1, last_status: 200, next_attempt_at: null, attempt_log: [{ response_status: 200, duration_ms: Number }] })
})

t.test('500 then 200: retried with the same webhook-id and a fresh signature; the attempts are listed', async (t) => {
  const { w } = await eventWorld(t)
  const receiver = await startReceiver(t)
  receiver.answers.push(500, 'hang')
  const sub = await subscribe(w, { url: receiver.url, events: ['optin.*'] })
  await optIn(w, newPsid())
  await until('three attempts', () => receiver.received[2])
  const ids = new Set(receiver.received.map((r) => r.headers['webhook-id']))
  t.equal(ids.size, 1, 'one webhook-id across retries')
  for (const r of receiver.received) t.ok(receiver.verify(r, sub.secret), 'every attempt verifies')
  const list = await until('delivered', async () => {
    const l = (await w.app.inject({ method: 'GET', url: `/v1/event-subscriptions/${sub.id}/deliveries?state=delivered`, headers: auth })).json()
    return l.items.length === 1 ? l : undefined
  })
  t.match(list.items[0].attempt_log, [{ response_status: 500 }, { response_status: null, error: /timeout/ }, { response_status: 200 }])
  t.equal(list.items[0].attempts, 3)
  const pending = (await w.app.inject({ method: 'GET', url: `/v1/event-subscriptions/${sub.id}/deliveries?state=pending`, headers: auth })).json()
  t.same(pending.items, [], 'filtered by state')
  t.equal((await w.app.inject({ method: 'GET', url: `/v1/event-subscriptions/${sub.id}`, headers: auth })).json().failing_since, null, 'a success ends the failing clock')
})

t.test('410 disables the subscription and says why; what waits is cancelled', async (t) => {
  const { w } = await eventWorld(t)
  const receiver = await startReceiver(t, 410)
  const sub = await subscribe(w, { url: receiver.url, events: ['optin.created'] })
  await optIn(w, newPsid())
  const read = await until('disabled', async () => {
    const s = (await w.app.inject({ method: 'GET', url: `/v1/event-subscriptions/${sub.id}`, headers: auth })).json()
    return s.enabled ? undefined : s
  })
  t.match(read.disabled_reason, /410/)
  await optIn(w, newPsid())
  await w.app.deliverEvents()
  t.equal(receiver.received.length, 1, 'nothing more is sent to it')
  const ping = await w.app.inject({ method: 'POST', url: `/v1/event-subscriptions/${sub.id}/test`, headers: auth })
  t.match(ping.json(), { status: 409, code: 'event_subscription_disabled' })
  const enabled = await w.app.inject({ method: 'PATCH', url: `/v1/event-subscriptions/${sub.id}`, headers: auth, payload: { enabled: true } })
  t.match(enabled.json(), { enabled: true, disabled_reason: null })
})

t.test('failing for EVENTS_DISABLE_AFTER_HOURS disables it with the reason', async (t) => {
  const { w } = await eventWorld(t, { EVENTS_DISABLE_AFTER_HOURS: '0.0001' })
  const receiver = await startReceiver(t, 503)
  const sub = await subscribe(w, { url: receiver.url, events: ['optin.created'] })
  await optIn(w, newPsid())
  const read = await until('disabled', async () => {
    const s = (await w.app.inject({ method: 'GET', url: `/v1/event-subscriptions/${sub.id}`, headers: auth })).json()
    return s.enabled ? undefined : s
  })
  t.match(read.disabled_reason, /no delivery succeeded since .*HTTP 503/)
  const list = (await w.app.inject({ method: 'GET', url: `/v1/event-subscriptions/${sub.id}/deliveries`, headers: auth })).json()
  t.equal(list.items[0].state, 'cancelled')
})

t.test('rotate-secret: signed with both secrets during the grace period, each verifies; never shown again', async (t) => {
  const { w, log } = await eventWorld(t)
  const receiver = await startReceiver(t)
  const sub = await subscribe(w, { url: receiver.url, events: ['*'] })
  const rotated = await w.app.inject({ method: 'POST', url: `/v1/event-subscriptions/${sub.id}/rotate-secret`, headers: auth })
  t.equal(rotated.statusCode, 200)
  const { secret, previous_secret_expires_at: until24 } = rotated.json()
  t.not(secret, sub.secret)
  t.ok(Date.parse(until24) > Date.now() + 23 * 3600_000, 'about 24 hours of grace')
  const ping = await w.app.inject({ method: 'POST', url: `/v1/event-subscriptions/${sub.id}/test`, headers: auth })
  t.equal(ping.statusCode, 202)
  const got = await until('the ping', () => receiver.received[0])
  t.match(got.json, { type: 'ping', data: { subscription_id: sub.id } })
  t.equal(got.headers['webhook-id'], ping.json().event_id)
  t.equal(String(got.headers['webhook-signature']).split(' ').length, 2, 'two signatures')
  t.ok(receiver.verify(got, secret), 'the new secret verifies')
  t.ok(receiver.verify(got, sub.secret), 'the previous secret verifies')

  const shown = [
    (await w.app.inject({ method: 'GET', url: '/v1/event-subscriptions', headers: auth })).body,
    (await w.app.inject({ method: 'GET', url: `/v1/event-subscriptions/${sub.id}`, headers: auth })).body,
    (await w.app.inject({ method: 'PATCH', url: `/v1/event-subscriptions/${sub.id}`, headers: auth, payload: { description: 'x' } })).body,
    (await w.app.inject({ method: 'GET', url: `/v1/event-subscriptions/${sub.id}/deliveries`, headers: auth })).body,
    log.text,
  ].join('\n')
  for (const s of [secret, sub.secret, secret.slice(6), sub.secret.slice(6)]) t.notOk(shown.includes(s), 'no secret in reads or logs')
})

t.test('wildcards and the Page filter; include_message; no token or access token in any event', async (t) => {
  const { w } = await eventWorld(t)
  const all = await startReceiver(t)
  const notifications = await startReceiver(t)
  const otherPage = await startReceiver(t)
  const withMessage = await startReceiver(t)
  await subscribe(w, { url: all.url, events: ['*'] })
  await subscribe(w, { url: notifications.url, events: ['notification.*'] })
  await subscribe(w, { url: otherPage.url, events: ['*'], page_ids: ['999999999'] })
  await subscribe(w, { url: withMessage.url, events: ['notification.sent'], page_ids: [w.pageId], include_message: true })
  const psid = newPsid()
  const { token } = await optIn(w, psid)
  const sent = await notify(w.app, { topic_id: w.topic.id, psid, message: { text: 'Red shoes are back' }, use_window: false })
  t.equal(sent.statusCode, 201)
  const none = await notify(w.app, { topic_id: w.topic.id, psid, message: { text: 'Again?' }, use_window: false })
  t.equal(none.statusCode, 409)
  await until('every event', () => all.received.length >= 3 && notifications.received.length >= 2 && withMessage.received.length >= 1 ? true : undefined)
  await w.app.deliverEvents()
  t.same(all.received.map((r) => r.json.type).sort(), ['notification.failed', 'notification.sent', 'optin.created'])
  t.same(notifications.received.map((r) => r.json.type).sort(), ['notification.failed', 'notification.sent'], 'a family')
  t.equal(otherPage.received.length, 0, 'another Page: nothing')
  t.same(withMessage.received.map((r) => r.json.type), ['notification.sent'])
  t.same(withMessage.received[0].json.data.message, { text: 'Red shoes are back' }, 'include_message: the message')
  const sentEvent = ofType(all, 'notification.sent')[0].json
  t.match(sentEvent.data, { notification_id: sent.json().id, route: 'token', status: 'sent', token_state: 'used', topic_id: w.topic.id, psid })
  t.match(ofType(all, 'notification.failed')[0].json.data, { status: 'no_token', error: { code: 'no_token' } })
  const seqs = all.received.map((r) => r.json.data.sequence as number)
  t.equal(new Set(seqs).size, 3, 'each event its own sequence')
  const everything = [...all.received, ...notifications.received].map((r) => r.body).join('\n')
  t.notOk(everything.includes('Red shoes'), 'include_message false: no message body')
  t.notOk(everything.includes('"message"'), 'no message field')
  const withAll = everything + withMessage.received.map((r) => r.body).join('\n')
  t.notOk(withAll.includes(token), 'no token value')
  t.notOk(withAll.includes(w.accessToken), 'no access token')
})

t.test('redeliver: the same event again with the same webhook-id; ping; unknown ids', async (t) => {
  const { w } = await eventWorld(t)
  const receiver = await startReceiver(t)
  const sub = await subscribe(w, { url: receiver.url, events: ['optin.created'] })
  await optIn(w, newPsid())
  const first = await until('the event', () => receiver.received[0])
  const eventId = String(first.headers['webhook-id'])
  await until('recorded as delivered', async () => {
    const l = (await w.app.inject({ method: 'GET', url: `/v1/event-subscriptions/${sub.id}/deliveries?state=delivered`, headers: auth })).json()
    return l.items.length === 1 ? true : undefined
  })
  const again = await w.app.inject({ method: 'POST', url: `/v1/events/${eventId}/redeliver`, headers: auth })
  t.equal(again.statusCode, 202, again.body)
  t.equal(again.json().delivery_ids.length, 1)
  const second = await until('the redelivery', () => receiver.received[1])
  t.equal(second.headers['webhook-id'], eventId)
  t.equal(second.body, first.body, 'the same body')
  t.ok(receiver.verify(second, sub.secret))
  await until('both recorded as delivered', async () => {
    const l = (await w.app.inject({ method: 'GET', url: `/v1/event-subscriptions/${sub.id}/deliveries?state=delivered`, headers: auth })).json()
    return l.items.length === 2 ? true : undefined
  })
  const one = await w.app.inject({ method: 'POST', url: `/v1/events/${eventId}/redeliver`, headers: auth, payload: { subscription_id: sub.id } })
  t.equal(one.statusCode, 202)
  await until('the third', () => receiver.received[2])
  t.match((await w.app.inject({ method: 'POST', url: `/v1/events/${randomUUID()}/redeliver`, headers: auth })).json(), { status: 404, code: 'event_not_found' })
  t.match((await w.app.inject({ method: 'POST', url: `/v1/events/${eventId}/redeliver`, headers: auth, payload: { subscription_id: randomUUID() } })).json(), { status: 404, code: 'event_subscription_not_found' })
  t.match((await w.app.inject({ method: 'POST', url: `/v1/event-subscriptions/${randomUUID()}/test`, headers: auth })).json(), { status: 404, code: 'event_subscription_not_found' })
})

t.test('CRUD: create, list, get, update, delete; bad input refused with stable codes', async (t) => {
  const { w } = await eventWorld(t)
  const sub = await subscribe(w, { url: 'http://127.0.0.1:9/hook', events: ['optin.*', 'page.unhealthy'], description: 'flow builder' })
  t.match(sub, { url: 'http://127.0.0.1:9/hook', events: ['optin.*', 'page.unhealthy'], page_ids: null, description: 'flow builder', include_message: false, enabled: true, disabled_reason: null })
  const list = (await w.app.inject({ method: 'GET', url: '/v1/event-subscriptions', headers: auth })).json()
  t.same(list.items.map((s: { id: string }) => s.id), [sub.id])
  t.notOk('secret' in list.items[0], 'no secret listed')
  const patched = await w.app.inject({ method: 'PATCH', url: `/v1/event-subscriptions/${sub.id}`, headers: auth, payload: { events: ['notification.failed'], page_ids: [w.pageId], enabled: false } })
  t.match(patched.json(), { events: ['notification.failed'], page_ids: [w.pageId], enabled: false, disabled_reason: 'disabled by request' })
  t.match((await w.app.inject({ method: 'PATCH', url: `/v1/event-subscriptions/${sub.id}`, headers: auth, payload: {} })).json(), { status: 400, code: 'empty_update' })
  t.match((await w.app.inject({ method: 'POST', url: '/v1/event-subscriptions', headers: auth, payload: { url: 'http://127.0.0.1:9/', events: ['optin.loved'] } })).json(), { status: 400, code: 'validation_failed' })
  t.match((await w.app.inject({ method: 'POST', url: '/v1/event-subscriptions', headers: auth, payload: { url: 'not a url', events: ['*'] } })).json(), { status: 400, code: 'event_url_invalid' })
  t.match((await w.app.inject({ method: 'POST', url: '/v1/event-subscriptions', headers: auth, payload: { url: 'https://u:p@example.com/', events: ['*'] } })).json(), { status: 400, code: 'event_url_invalid' })
  t.equal((await w.app.inject({ method: 'DELETE', url: `/v1/event-subscriptions/${sub.id}`, headers: auth })).statusCode, 204)
  t.match((await w.app.inject({ method: 'GET', url: `/v1/event-subscriptions/${sub.id}`, headers: auth })).json(), { status: 404, code: 'event_subscription_not_found' })
  t.match((await w.app.inject({ method: 'DELETE', url: `/v1/event-subscriptions/${sub.id}`, headers: auth })).json(), { status: 404, code: 'event_subscription_not_found' })
  t.equal((await w.app.inject({ method: 'GET', url: '/v1/event-subscriptions' })).statusCode, 401, 'a key is needed')
})

t.test('addresses: https only, and no private destination, unless configured', async (t) => {
  const app = await build(t)
  const post = (url: string) => app.inject({ method: 'POST', url: '/v1/event-subscriptions', headers: auth, payload: { url, events: ['*'] } })
  t.match((await post('http://example.com/hook')).json(), { status: 400, code: 'event_url_not_https' })
  for (const url of ['https://127.0.0.1/x', 'https://10.1.2.3/x', 'https://169.254.169.254/latest', 'https://[::1]/x', 'https://localhost/x', 'https://192.168.0.10/x', 'https://[::ffff:127.0.0.1]/x']) {
    t.match((await post(url)).json(), { status: 400, code: 'event_url_private_address' }, url)
  }
  const ok = await post('https://93.184.215.14/hook')
  t.equal(ok.statusCode, 201, 'a public address')
  const http = await build(t, { EVENTS_ALLOW_HTTP: 'true' })
  t.match((await http.inject({ method: 'POST', url: '/v1/event-subscriptions', headers: auth, payload: { url: 'http://127.0.0.1:9/', events: ['*'] } })).json(), { code: 'event_url_private_address' }, 'http admitted, the address still not')
  await sql`delete from event_subscriptions`.execute(app.db)

  const receiver = await startReceiver(t)
  const named = await build(t, { ...eventsEnv, EVENTS_ALLOW_PRIVATE_NETWORKS: 'false', EVENTS_ALLOWED_HOSTS: '127.0.0.1' })
  const sub = await named.inject({ method: 'POST', url: '/v1/event-subscriptions', headers: auth, payload: { url: receiver.url, events: ['*'] } })
  t.equal(sub.statusCode, 201, 'EVENTS_ALLOWED_HOSTS names it')
  t.match((await named.inject({ method: 'POST', url: '/v1/event-subscriptions', headers: auth, payload: { url: 'http://127.0.0.2:9/', events: ['*'] } })).json(),
    { code: 'event_url_private_address' }, 'and nothing else')
  await named.inject({ method: 'POST', url: `/v1/event-subscriptions/${sub.json().id}/test`, headers: auth })
  const got = await until('the ping', () => receiver.received[0])
  t.ok(receiver.verify(got, sub.json().secret), 'delivered to the named host')
  await sql`delete from event_subscriptions`.execute(app.db)
})

t.test('metrics: deliveries by outcome, backlog and oldest waiting per subscription', async (t) => {
  const { w } = await eventWorld(t, { METRICS_CACHE_SECONDS: '0' })
  const receiver = await startReceiver(t)
  const sub = await subscribe(w, { url: receiver.url, events: ['optin.created'] })
  const slow = await subscribe(w, { url: 'http://127.0.0.1:9/nothing-listens', events: ['optin.created'] })
  await optIn(w, newPsid())
  await until('delivered', () => receiver.received[0])
  const text = await until('the failure counted', async () => {
    const body = (await w.app.inject({ method: 'GET', url: '/metrics' })).body
    return /otn_event_deliveries_total\{outcome="retried"\} [1-9]/.test(body) && /otn_event_deliveries_total\{outcome="delivered"\} [1-9]/.test(body) ? body : undefined
  })
  t.match(text, /otn_event_deliveries_total\{outcome="delivered"\} [1-9]/)
  t.match(text, new RegExp(`otn_event_deliveries_waiting\\{subscription_id="${slow.id}"\\} 1`))
  t.match(text, new RegExp(`otn_event_deliveries_oldest_waiting_seconds\\{subscription_id="${slow.id}"\\} [0-9.]+`))
  t.notMatch(text, new RegExp(`otn_event_deliveries_waiting\\{subscription_id="${sub.id}"\\}`), 'a subscription with nothing waiting is not listed')
})

t.test('the README\'s receiver (scripts/event-receiver.mjs) verifies and prints what the service sends, and refuses a forgery', async (t) => {
  const { spawn } = await import('node:child_process')
  const { createServer } = await import('node:net')
  const port = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)) })
  })
  const app = await build(t, eventsEnv)
  await sql`delete from event_subscriptions`.execute(app.db)
  const sub = (await app.inject({ method: 'POST', url: '/v1/event-subscriptions', headers: auth, payload: { url: `http://127.0.0.1:${port}/`, events: ['*'] } })).json()
  const child = spawn(process.execPath, [new URL('../../scripts/event-receiver.mjs', import.meta.url).pathname], { env: { ...process.env, OTN_EVENTS_SECRET: sub.secret, PORT: String(port) } })
  t.teardown(() => { child.kill() })
  let out = ''
  let err = ''
  child.stdout.on('data', (c) => { out += c })
  child.stderr.on('data', (c) => { err += c })
  await until('listening', () => out.includes('listening') ? true : undefined)
  const ping = (await app.inject({ method: 'POST', url: `/v1/event-subscriptions/${sub.id}/test`, headers: auth })).json()
  const line = await until('a printed event', () => out.split('\n').find((l) => l.startsWith('{')))
  t.match(JSON.parse(line), { id: ping.event_id, type: 'ping', data: { subscription_id: sub.id } })
  const forged = await fetch(`http://127.0.0.1:${port}/`, {
    method: 'POST', body: '{"type":"ping"}',
    headers: { 'webhook-id': 'x', 'webhook-timestamp': String(Math.floor(Date.now() / 1000)), 'webhook-signature': 'v1,AAAA' },
  })
  t.equal(forged.status, 400)
  await until('the refusal', () => err.includes('refused') ? true : undefined)
  await sql`delete from event_subscriptions`.execute(app.db)
})
