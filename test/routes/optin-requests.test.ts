import t from 'tap'
import { auth, build } from '../helper.js'
import { appsecretProof } from '../../src/graph/client.js'
import { DEFAULT_GRAPH_VERSION } from '../../src/graph/versions.js'
import { APP_SECRET, FAST_TIMEOUT, graphEnv, newPsid, openWindow, world, type World } from '../fixtures/otn.js'

const ask = (w: Pick<World, 'app' | 'topic'>, body: Record<string, unknown>, topicId = w.topic.id) =>
  w.app.inject({ method: 'POST', url: `/v1/topics/${topicId}/optin-requests`, headers: auth, payload: body })

const rows = (w: World, psid: string) => w.db.selectFrom('optin_requests').selectAll().where('psid', '=', psid).orderBy('created_at').execute()

t.test('inside the window: sends one_time_notif_req with the topic payload, records it; the person can then opt in', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  await openWindow(w, psid)
  const res = await ask(w, { psid })
  t.equal(res.statusCode, 201, res.body)
  const body = res.json()
  t.match(body, { topic_id: w.topic.id, page_id: w.pageId, psid, title: w.topic.title, payload: w.topic.payload, status: 'sent' })
  const request = w.emulator.requests.at(-1)!
  t.same(request.recipient, { id: psid })
  t.same(request.message, { attachment: { type: 'template', payload: { template_type: 'one_time_notif_req', title: w.topic.title, payload: w.topic.payload } } })
  t.equal(body.graph_message_id, request.messageId)
  t.match(await rows(w, psid), [{ id: body.id, status: 'sent', graph_message_id: request.messageId }])
  const click = await w.emulator.clickNotifyMe(w.pageId, psid)
  t.type(click.token, 'string', 'the emulator accepted it as a real request')

  const other = newPsid()
  await openWindow(w, other)
  const titled = await ask(w, { psid: other, title: 'Tell me when size 42 is back' })
  t.equal(titled.statusCode, 201)
  t.equal(w.emulator.requests.at(-1)!.message.attachment.payload.title, 'Tell me when size 42 is back')
})

t.test('outside the window: 409 window_closed, nothing sent', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const res = await ask(w, { psid })
  t.equal(res.statusCode, 409)
  t.equal(res.json().code, 'window_closed')
  t.equal(w.emulator.requests.length, 0)
  t.same(await rows(w, psid), [])

  // Our record says open, Meta says closed (clock skew): Meta's answer wins, and is recorded.
  const skewed = newPsid()
  await openWindow(w, skewed, { emulator: false })
  w.emulator.issueToken(w.pageId, skewed, 'unrelated') // the emulator knows the person, without a window
  const refused = await ask(w, { psid: skewed })
  t.equal(refused.statusCode, 409)
  t.match(refused.json(), { code: 'window_closed', graph: { code: 10, subcode: 2018278 }, optin_request: { status: 'failed' } })
  t.match(await rows(w, skewed), [{ status: 'failed', error: { code: 10, subcode: 2018278 } }])
})

t.test('throttled per topic and person, with Retry-After from the last request, also under a race', async (t) => {
  const w = await world(t, { env: { OPTIN_REQUEST_INTERVAL_SECONDS: '3600' } })
  const second = await build(t, graphEnv(w.base, { OPTIN_REQUEST_INTERVAL_SECONDS: '3600' }))
  const psid = newPsid()
  await openWindow(w, psid)
  const answers = await Promise.all([ask(w, { psid }), ask({ app: second, topic: w.topic }, { psid }), ask(w, { psid }), ask({ app: second, topic: w.topic }, { psid })])
  const codes = answers.map((a) => a.statusCode).sort()
  t.same(codes, [201, 429, 429, 429])
  const throttled = answers.find((a) => a.statusCode === 429)!
  t.equal(throttled.json().code, 'optin_request_throttled')
  const retryAfter = Number(throttled.headers['retry-after'])
  t.ok(retryAfter > 3500 && retryAfter <= 3600, `Retry-After ${retryAfter}`)
  t.equal(w.emulator.requests.length, 1, 'one request reached Meta')
  t.equal((await rows(w, psid)).length, 1)

  // Another topic, or another person, is not throttled by this one.
  const topic2 = (await w.app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: w.pageId, name: `Other ${psid}` } })).json()
  t.equal((await ask(w, { psid }, topic2.id)).statusCode, 201)
  const someone = newPsid()
  await openWindow(w, someone)
  t.equal((await ask(w, { psid: someone })).statusCode, 201)

  // A request Meta refused did not reach the person: it does not count.
  const refusedFirst = newPsid()
  await openWindow(w, refusedFirst)
  w.emulator.setFaults({ errorRate: 1, error: { code: 2 } })
  t.equal((await ask(w, { psid: refusedFirst })).statusCode, 503)
  w.emulator.clearFaults()
  t.equal((await ask(w, { psid: refusedFirst })).statusCode, 201)
})

t.test('Meta\'s refusals come back with graph: 613/1893016 is a 429 throttle, 190 marks the Page, a lost answer is 504 and throttles', async (t) => {
  const w = await world(t, { env: { ...FAST_TIMEOUT, OPTIN_REQUEST_INTERVAL_SECONDS: '0' }, emulator: { optinRequestCooldownMs: 60_000 } })
  const psid = newPsid()
  await openWindow(w, psid)
  t.equal((await ask(w, { psid })).statusCode, 201)
  const repeated = await ask(w, { psid })
  t.equal(repeated.statusCode, 429)
  t.match(repeated.json(), { code: 'optin_request_throttled', graph: { code: 613, subcode: 1893016 }, optin_request: { status: 'failed' } })
  t.equal(repeated.headers['retry-after'], '1', 'our interval is 0: Meta named no time, so a second')

  const restricted = newPsid()
  await openWindow(w, restricted)
  w.emulator.setFaults({ errorRate: 1, error: { code: 10, subcode: 1404170 } })
  const r = await ask(w, { psid: restricted })
  t.equal(r.statusCode, 502)
  t.match(r.json(), { code: 'graph_optin_restricted', graph: { code: 10, subcode: 1404170 } })
  w.emulator.clearFaults()

  const lost = newPsid()
  await openWindow(w, lost)
  w.emulator.setFaults({ hangRate: 1, processThenFail: 'hang' })
  const unconfirmed = await ask(w, { psid: lost })
  t.equal(unconfirmed.statusCode, 504)
  t.match(unconfirmed.json(), { code: 'graph_unconfirmed', optin_request: { status: 'failed', error: { ambiguous: true } } })
  t.equal(w.emulator.requests.filter((x) => x.recipient?.id === lost).length, 1, 'not sent again')
  w.emulator.clearFaults()

  await w.app.inject({ method: 'PUT', url: `/v1/pages/${w.pageId}`, headers: auth, payload: { name: 'Shop', access_token: 'EAArevoked' } })
  const other = newPsid()
  await openWindow(w, other)
  const revoked = await ask(w, { psid: other })
  t.equal(revoked.statusCode, 502)
  t.match(revoked.json(), { code: 'graph_page_token_invalid', graph: { code: 190 } })
  t.equal((await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}`, headers: auth })).json().healthy, false)
})

t.test('a lost answer counts toward our throttle (the request may have reached the person)', async (t) => {
  const w = await world(t, { env: { OPTIN_REQUEST_INTERVAL_SECONDS: '600' } })
  const psid = newPsid()
  await openWindow(w, psid)
  w.emulator.setFaults({ resetRate: 1 })
  t.equal((await ask(w, { psid })).statusCode, 504)
  w.emulator.clearFaults()
  const again = await ask(w, { psid })
  t.equal(again.statusCode, 429)
  t.equal(again.json().code, 'optin_request_throttled')
})

t.test('validation and lookups', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  await openWindow(w, psid)
  t.equal((await ask(w, { psid, title: 'x'.repeat(66) })).statusCode, 400, 'title at most 65')
  t.equal((await ask(w, { psid, title: '' })).statusCode, 400)
  t.equal((await ask(w, { psid, extra: true })).statusCode, 400)
  t.equal((await ask(w, {})).statusCode, 400)
  const unknown = await ask(w, { psid }, '00000000-0000-4000-8000-000000000000')
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'topic_not_found')
  t.equal(w.emulator.requests.length, 0)
})

t.test("Meta's \"already asked\" (613/1893016) is remembered: the next request inside the interval is refused here, without a Graph call", async (t) => {
  const w = await world(t, { env: { OPTIN_REQUEST_INTERVAL_SECONDS: '600' }, emulator: { optinRequestCooldownMs: 60_000 } })
  const psid = newPsid()
  await openWindow(w, psid)
  // Another tool of the Page asked this person first, straight through the Send API.
  const other = await fetch(`${w.base}/${DEFAULT_GRAPH_VERSION}/me/messages?access_token=${w.accessToken}&appsecret_proof=${appsecretProof(w.accessToken, APP_SECRET)}`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ recipient: { id: psid }, message: { attachment: { type: 'template', payload: { template_type: 'one_time_notif_req', title: 'Back in stock?', payload: w.topic.payload } } } }),
  })
  t.equal(other.status, 200)
  const calls = () => w.emulator.requests.filter((r) => r.recipient?.id === psid).length

  const first = await ask(w, { psid })
  t.equal(first.statusCode, 429)
  t.match(first.json(), { code: 'optin_request_throttled', graph: { code: 613, subcode: 1893016 }, optin_request: { status: 'failed' } })
  t.equal(first.headers['retry-after'], '600', 'our interval, since Meta names none')
  t.equal(calls(), 2, 'this request went to Meta')

  const second = await ask(w, { psid })
  t.equal(second.statusCode, 429)
  t.match(second.json(), { code: 'optin_request_throttled' })
  t.notOk('graph' in second.json(), 'decided here')
  t.ok(Number(second.headers['retry-after']) > 590 && Number(second.headers['retry-after']) <= 600)
  t.equal(calls(), 2, 'no Graph call for the second request')
  t.equal((await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}`, headers: auth })).json().healthy, true, 'the Page stays healthy')
})

const WEEK_S = 7 * 24 * 3600
const recurring = (w: Pick<World, 'app' | 'topic'>, body: Record<string, unknown>, topicId?: string) =>
  ask(w, { kind: 'notification_messages', ...body }, topicId)

t.test('recurring: the notification_messages template with the options under Meta\'s names, inside the window, recorded with its kind', async (t) => {
  const w = await world(t)
  await w.app.inject({ method: 'PUT', url: `/v1/pages/${w.pageId}`, headers: auth, payload: { name: 'Shop', timezone: 'Europe/Berlin' } })
  const psid = newPsid()
  await openWindow(w, psid)
  const res = await recurring(w, { psid, frequency: 'WEEKLY', image_url: 'https://shop.example/img/deals.png', cta_text: 'SIGN_UP', reoptin: true, timezone: 'America/New_York' })
  t.equal(res.statusCode, 201, res.body)
  const body = res.json()
  t.match(body, { topic_id: w.topic.id, page_id: w.pageId, psid, title: w.topic.title, payload: w.topic.payload, status: 'sent', kind: 'notification_messages' })
  const request = w.emulator.requests.at(-1)!
  t.same(request.recipient, { id: psid })
  t.equal(request.messagingType, 'RESPONSE')
  t.same(request.message, {
    attachment: {
      type: 'template',
      payload: {
        template_type: 'notification_messages',
        title: w.topic.title,
        payload: w.topic.payload,
        image_url: 'https://shop.example/img/deals.png',
        notification_messages_frequency: 'WEEKLY',
        notification_messages_cta_text: 'SIGN_UP',
        notification_messages_reoptin: 'ENABLED',
        notification_messages_timezone: 'America/New_York',
      },
    },
  }, 'the exact template Meta documents')
  t.equal(body.graph_message_id, request.messageId)
  t.match(await rows(w, psid), [{ id: body.id, status: 'sent', kind: 'notification_messages', title: w.topic.title }])

  // Without options: only what Meta needs, the time zone the Page's; reoptin false sends nothing (Meta documents only ENABLED).
  const plain = newPsid()
  await openWindow(w, plain)
  t.equal((await recurring(w, { psid: plain, title: 'Deals, every week', reoptin: false })).statusCode, 201)
  t.same(w.emulator.requests.at(-1)!.message.attachment.payload, {
    template_type: 'notification_messages', title: 'Deals, every week', payload: w.topic.payload,
    notification_messages_timezone: 'Europe/Berlin',
  })

  // The default kind is unchanged: one_time_notif_req, recorded as one_time_notif.
  const otn = newPsid()
  await openWindow(w, otn)
  const asked = await ask(w, { psid: otn })
  t.equal(asked.json().kind, 'one_time_notif')
  t.same(w.emulator.requests.at(-1)!.message.attachment.payload, { template_type: 'one_time_notif_req', title: w.topic.title, payload: w.topic.payload })
  t.match(await rows(w, otn), [{ kind: 'one_time_notif' }])
})

t.test('recurring: outside the window 409, a bad time zone 400 invalid_timezone, options without the kind 400; nothing sent', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const closed = await recurring(w, { psid })
  t.equal(closed.statusCode, 409)
  t.equal(closed.json().code, 'window_closed')

  await openWindow(w, psid)
  for (const timezone of ['Mars/Olympus_Mons', '+02:00', 'Europe/Berlinn']) {
    const res = await recurring(w, { psid, timezone })
    t.equal(res.statusCode, 400, timezone)
    t.match(res.json(), { code: 'invalid_timezone', detail: /not an IANA time zone name/ })
  }
  const misplaced = await ask(w, { psid, frequency: 'DAILY', timezone: 'UTC' })
  t.equal(misplaced.statusCode, 400)
  t.match(misplaced.json(), { code: 'validation_failed', errors: [{ field: 'body/frequency', message: 'only with kind notification_messages' }, { field: 'body/timezone' }] })
  for (const bad of [{ frequency: 'HOURLY' }, { cta_text: 'CLICK_ME' }, { reoptin: 'yes' }, { image_url: 'ftp://x.example/a.png' }, { image_url: 'not a url' }, { kind: 'checkbox' }]) {
    t.equal((await recurring(w, { psid, ...bad })).statusCode, 400, JSON.stringify(bad))
  }
  t.equal(w.emulator.requests.length, 0)
  t.same(await rows(w, psid), [])
})

t.test("recurring: Meta's one request per title, person and week, enforced here: 429 with Retry-After and next_request_at, on any topic, also under a race", async (t) => {
  const w = await world(t, { env: { OPTIN_REQUEST_INTERVAL_SECONDS: '3600' } })
  const second = await build(t, graphEnv(w.base, { OPTIN_REQUEST_INTERVAL_SECONDS: '3600' }))
  const psid = newPsid()
  await openWindow(w, psid)
  const answers = await Promise.all([recurring(w, { psid }), recurring({ app: second, topic: w.topic }, { psid }), recurring(w, { psid })])
  t.same(answers.map((a) => a.statusCode).sort(), [201, 429, 429])
  const sent = answers.find((a) => a.statusCode === 201)!.json()
  const refused = answers.find((a) => a.statusCode === 429)!
  const [row] = await rows(w, psid)
  const next = new Date(row.created_at.getTime() + WEEK_S * 1000).toISOString()
  t.match(refused.json(), { status: 429, code: 'recurring_optin_weekly_limit', next_request_at: next, retry_after_seconds: Number(refused.headers['retry-after']) })
  t.equal(refused.headers['content-type'], 'application/problem+json; charset=utf-8')
  const retryAfter = Number(refused.headers['retry-after'])
  t.ok(retryAfter > WEEK_S - 60 && retryAfter <= WEEK_S, `Retry-After ${retryAfter}`)
  t.equal(w.emulator.requests.length, 1, 'one request reached Meta')
  t.equal(sent.kind, 'notification_messages')

  // The same title on another topic of the Page is the same request for Meta; another title is not.
  const topic2 = (await w.app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: w.pageId, name: `Other ${psid}`, title: w.topic.title } })).json()
  const sameTitle = await recurring(w, { psid }, topic2.id)
  t.equal(sameTitle.statusCode, 429)
  t.equal(sameTitle.json().next_request_at, next)
  t.equal((await recurring(w, { psid, title: 'Flash sales, daily' })).statusCode, 201, 'another title')
  // Each kind has its own rule: the recurring request did not use up the OTN interval, nor the other way round.
  t.equal((await ask(w, { psid })).statusCode, 201, 'a one-time request on the topic')
  t.equal((await ask(w, { psid })).statusCode, 429, 'the OTN interval still holds for one-time requests')
  const someone = newPsid()
  await openWindow(w, someone)
  t.equal((await recurring(w, { psid: someone })).statusCode, 201, 'another person')

  // The week runs from the last request: six days ago leaves a day; eight days ago allows it.
  const { sql } = await import('kysely')
  await sql`update optin_requests set created_at = now() - interval '6 days' where page_id = ${w.pageId} and psid = ${psid} and kind = 'notification_messages'`.execute(w.db)
  const later = await recurring(w, { psid })
  t.equal(later.statusCode, 429)
  const left = Number(later.headers['retry-after'])
  t.ok(left > 86400 - 60 && left <= 86400, `a day left: ${left}`)
  t.ok(Math.abs(Date.parse(later.json().next_request_at) - (Date.now() + 86400_000)) < 60_000, later.json().next_request_at)
  await sql`update optin_requests set created_at = now() - interval '8 days' where page_id = ${w.pageId} and psid = ${psid} and kind = 'notification_messages'`.execute(w.db)
  t.equal((await recurring(w, { psid })).statusCode, 201, 'a week later')
})

t.test('recurring: a request Meta refused does not count toward the week; a lost answer does', async (t) => {
  const w = await world(t, { env: FAST_TIMEOUT })
  const psid = newPsid()
  await openWindow(w, psid)
  w.emulator.setFaults({ errorRate: 1, error: { code: 2 } })
  t.equal((await recurring(w, { psid })).statusCode, 503)
  w.emulator.clearFaults()
  t.equal((await recurring(w, { psid })).statusCode, 201, 'the refused one did not reach the person')

  const lost = newPsid()
  await openWindow(w, lost)
  w.emulator.setFaults({ resetRate: 1 })
  t.equal((await recurring(w, { psid: lost })).statusCode, 504)
  w.emulator.clearFaults()
  const again = await recurring(w, { psid: lost })
  t.equal(again.statusCode, 429)
  t.equal(again.json().code, 'recurring_optin_weekly_limit')
  t.equal(w.emulator.requests.filter((r) => r.recipient?.id === lost).length, 1, 'not sent again')
})

t.test("recurring: Meta's \"already asked\" (613/1893016) starts the week like a sent request; the next one is refused here", async (t) => {
  const w = await world(t)
  const psid = newPsid()
  await openWindow(w, psid)
  w.emulator.setFaults({ errorRate: 1, error: { code: 613, subcode: 1893016 } })
  const first = await recurring(w, { psid })
  w.emulator.clearFaults()
  t.equal(first.statusCode, 429)
  t.match(first.json(), { code: 'recurring_optin_weekly_limit', graph: { code: 613, subcode: 1893016 }, optin_request: { status: 'failed', kind: 'notification_messages' } })
  const wait = Number(first.headers['retry-after'])
  t.ok(wait > WEEK_S - 60 && wait <= WEEK_S, `Retry-After ${wait}`)
  const calls = () => w.emulator.requests.filter((r) => r.recipient?.id === psid).length
  const sentBefore = calls()
  const second = await recurring(w, { psid })
  t.equal(second.statusCode, 429)
  t.notOk('graph' in second.json(), 'decided here')
  t.equal(second.json().next_request_at, first.json().next_request_at)
  t.equal(calls(), sentBefore, 'no Graph call')
})
