import { DEFAULT_GRAPH_VERSION } from '../../src/graph/versions.js'
import t from 'tap'
import { auth, build, LogCapture, uniquePageId } from '../helper.js'
import { NO_ANSWER_LOG } from '../../src/domain/send.js'
import { appsecretProof } from '../../src/graph/client.js'
import {
  APP_SECRET, FAST_TIMEOUT, giveTokens, graphEnv, heldTokens, newPsid, notify, openWindow, recurringEvent, recurringRows, scripted, tokenStates, world,
} from '../fixtures/otn.js'

const text = (s = 'Your size is back in stock') => ({ text: s })

t.test('token route: spends the soonest-expiring token once, records it, and never shows or logs a token', async (t) => {
  const logs = new LogCapture()
  const w = await world(t, { env: { LOG_LEVEL: 'info' }, deps: { logStream: logs } })
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 2)

  const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text(), notification_type: 'SILENT_PUSH' }, 'key-token-1')
  t.equal(res.statusCode, 201, res.body)
  const body = res.json()
  t.match(body, {
    topic_id: w.topic.id, page_id: w.pageId, psid, status: 'sent', route: 'token', attempts: 1,
    token_state: 'used', tokens_refused: 0, http_status: 201, idempotency_key: 'key-token-1',
    message: text(), notification_type: 'SILENT_PUSH', use_window: true,
  })
  t.type(body.completed_at, 'string')
  t.notOk('error' in body)

  const [request] = w.emulator.requests
  t.same(request.recipient, { one_time_notif_token: tokens[0].token }, 'the soonest-expiring token went to Meta')
  t.equal(request.messagingType, 'UPDATE')
  t.equal(request.notificationType, 'SILENT_PUSH')
  t.same(request.message, text())
  const inbox = w.emulator.inbox(w.pageId, psid)
  t.equal(inbox.length, 1)
  t.equal(inbox[0].via, 'one_time_notif_token')
  t.equal(body.graph_message_id, inbox[0].messageId)

  t.same(await tokenStates(w.db, tokens.map((x) => x.id)), ['used', 'available'])
  const row = await w.db.selectFrom('optin_tokens').select(['notification_id', 'lease_expires_at']).where('id', '=', tokens[0].id).executeTakeFirstOrThrow()
  t.equal(row.notification_id, body.id, 'the used token names the notification that spent it')
  t.equal(row.lease_expires_at, null)

  const got = await w.app.inject({ method: 'GET', url: `/v1/notifications/${body.id}`, headers: auth })
  t.equal(got.statusCode, 200)
  t.same(got.json(), body)

  for (const secret of [...tokens.map((x) => x.token), w.accessToken]) {
    t.notOk(res.body.includes(secret) || got.body.includes(secret), 'no token in answers')
    t.notOk(logs.text.includes(secret), 'no token or access token in logs')
  }
  t.notOk(logs.text.includes('appsecret_proof='), 'no Graph query string in logs')
  t.ok(logs.lines.some((l) => l.msg === 'notification sent' && l.notification_id === body.id), 'the outcome is logged')
})

t.test('window route: a person who wrote in the last 24 hours gets a standard message and keeps the token', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 1)
  await openWindow(w, psid)

  const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text('inside the window') })
  t.equal(res.statusCode, 201, res.body)
  t.match(res.json(), { status: 'sent', route: 'window', attempts: 1 })
  t.notOk('token_state' in res.json())
  const sent = w.emulator.requests.at(-1)!
  t.same(sent.recipient, { id: psid })
  t.equal(sent.messagingType, 'UPDATE', 'a notification is a proactive message')
  t.same(await tokenStates(w.db, [tokens[0].id]), ['available'], 'token untouched')

  const forced = await notify(w.app, { topic_id: w.topic.id, psid, message: text('spend a token'), use_window: false })
  t.equal(forced.statusCode, 201)
  t.match(forced.json(), { route: 'token', use_window: false, token_state: 'used' })
  t.same(await tokenStates(w.db, [tokens[0].id]), ['used'])
})

t.test('window route: when Meta says the window is closed (clock skew), a token is used instead', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 1)
  await openWindow(w, psid, { emulator: false })

  const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(res.statusCode, 201, res.body)
  t.match(res.json(), { status: 'sent', route: 'token', attempts: 2, token_state: 'used' })
  t.match(w.emulator.requests.map((r) => r.error ?? 'ok'), [{ code: 10, subcode: 2018278 }, 'ok'])
  t.same(await tokenStates(w.db, [tokens[0].id]), ['used'])
})

t.test('no usable token: 409 no_token, the attempt recorded and listed', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(res.statusCode, 409)
  const problem = res.json()
  t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8')
  t.match(problem, { status: 409, code: 'no_token', notification: { psid, status: 'no_token', route: 'token', attempts: 0, http_status: 409 } })
  t.equal(w.emulator.requests.length, 0, 'nothing sent to Meta')
  const got = await w.app.inject({ method: 'GET', url: `/v1/notifications/${problem.notification.id}`, headers: auth })
  t.match(got.json(), { status: 'no_token', error: { code: 'no_token' } })
})

t.test('a token Meta refuses is marked invalid and the next one is tried; none left is 409', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const [bogus] = await giveTokens(w, psid, 1, { token: () => `bogus-${psid}` })
  const [spentElsewhere] = await giveTokens(w, psid, 1)
  const [good] = await giveTokens(w, psid, 1)
  // The second token was already used at Meta (say, by an old deployment): Meta refuses it too.
  const direct = await w.emulator.app.inject({
    method: 'POST', url: `/${DEFAULT_GRAPH_VERSION}/me/messages?access_token=${w.accessToken}&appsecret_proof=${appsecretProof(w.accessToken, APP_SECRET)}`,
    payload: { recipient: { one_time_notif_token: spentElsewhere.token }, messaging_type: 'UPDATE', message: text('old') },
  })
  t.equal(direct.statusCode, 200)

  const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(res.statusCode, 201, res.body)
  t.match(res.json(), { status: 'sent', tokens_refused: 2, attempts: 3, token_state: 'used' })
  t.same(await tokenStates(w.db, [bogus.id, spentElsewhere.id, good.id]), ['invalid', 'invalid', 'used'])

  const none = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(none.statusCode, 409)
  t.match(none.json(), { code: 'no_token', notification: { tokens_refused: 0 } })

  const psid2 = newPsid()
  await giveTokens(w, psid2, 1, { token: () => `bogus2-${psid2}` })
  const refusedOnly = await notify(w.app, { topic_id: w.topic.id, psid: psid2, message: text() })
  t.equal(refusedOnly.statusCode, 409)
  t.match(refusedOnly.json(), { code: 'no_token', graph: { code: 100 }, notification: { tokens_refused: 1 } })
  t.match(refusedOnly.json().detail, /refused 1 token/)
})

t.test('Meta refusals that are not about the token give it back and answer what the caller can act on', async (t) => {
  const cases = [
    { name: 'rate limit', faults: { errorRate: 1, error: { code: 613 } }, status: 429, code: 'graph_rate_limited', graph: { code: 613 }, retryAfter: '60' },
    { name: 'frequency limit (on a one-time token)', faults: { errorRate: 1, error: { code: 4, subcode: 2018354 } }, status: 429, code: 'graph_frequency_limited', graph: { code: 4, subcode: 2018354 }, retryAfter: '60' },
    { name: 'temporary', faults: { errorRate: 1, error: { code: 2, subcode: 2018344 } }, status: 503, code: 'graph_temporary', graph: { code: 2 }, retryAfter: '5' },
    { name: 'HTTP 5xx without a Graph body', faults: { http5xxRate: 1 }, status: 503, code: 'graph_temporary', graph: { code: null } },
    { name: 'page restricted', faults: { errorRate: 1, error: { code: 10, subcode: 1893063 } }, status: 502, code: 'graph_page_restricted', graph: { code: 10, subcode: 1893063 }, unhealthy: true },
    { name: 'permission', faults: { errorRate: 1, error: { code: 230 } }, status: 502, code: 'graph_permission_missing', graph: { code: 230 }, unhealthy: true },
    { name: 'message refused', faults: { errorRate: 1, error: { code: 100, message: '(#100) param message[attachment][payload] is not supported with this recipient' } }, status: 422, code: 'graph_request_invalid', graph: { code: 100 } },
  ] as const
  for (const c of cases) {
    await t.test(c.name, async (t) => {
      const w = await world(t)
      const psid = newPsid()
      const tokens = await giveTokens(w, psid, 2)
      w.emulator.setFaults(c.faults)
      const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
      t.equal(res.statusCode, c.status, res.body)
      const problem = res.json()
      t.match(problem, { code: c.code, graph: c.graph, notification: { status: 'failed', route: 'token', token_state: 'released', attempts: 1, http_status: c.status } })
      if ('retryAfter' in c) t.equal(res.headers['retry-after'], c.retryAfter)
      t.same(await tokenStates(w.db, tokens.map((x) => x.id)), ['available', 'available'], 'the token is back, the other untouched')
      const tokenRow = await w.db.selectFrom('optin_tokens').select('notification_id').where('id', '=', tokens[0].id).executeTakeFirstOrThrow()
      t.equal(tokenRow.notification_id, null)
      const page = (await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}`, headers: auth })).json()
      t.equal(page.healthy, !('unhealthy' in c && c.unhealthy), 'Page health')

      w.emulator.clearFaults()
      const again = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
      t.equal(again.statusCode, 201, 'the kept token is spent by the next send')
      t.same(await tokenStates(w.db, tokens.map((x) => x.id)), ['used', 'available'])
    })
  }
})

t.test('a rejected Page access token (190) marks the Page unhealthy and keeps the token', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const [token] = await giveTokens(w, psid, 1)
  await w.app.inject({ method: 'PUT', url: `/v1/pages/${w.pageId}`, headers: auth, payload: { name: 'Shop', access_token: 'EAArevoked' } })
  const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(res.statusCode, 502)
  t.match(res.json(), { code: 'graph_page_token_invalid', graph: { code: 190 }, notification: { status: 'failed', token_state: 'released' } })
  t.same(await tokenStates(w.db, [token.id]), ['available'])
  const page = (await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}`, headers: auth })).json()
  t.match(page, { healthy: false, last_error: { code: 190 } })
})

t.test('a person who cannot receive messages keeps the token (502)', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const [token] = await giveTokens(w, psid, 1)
  w.emulator.setPersonAvailable(w.pageId, psid, false)
  const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(res.statusCode, 502)
  t.match(res.json(), { code: 'graph_person_unavailable', graph: { code: 551, subcode: 1545041 } })
  t.same(await tokenStates(w.db, [token.id]), ['available'])
})

t.test('a person who stopped the topic: that token invalid, their other tokens on it discarded', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 3)
  const other = newPsid()
  const othersToken = await giveTokens(w, other, 1)
  w.emulator.setFaults({ errorRate: 1, error: { code: 10, subcode: 1893015 } })
  const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(res.statusCode, 502)
  t.match(res.json(), { code: 'graph_topic_stopped', notification: { token_state: 'invalid' } })
  t.same(await tokenStates(w.db, tokens.map((x) => x.id)), ['invalid', 'discarded', 'discarded'])
  t.same(await tokenStates(w.db, [othersToken[0].id]), ['available'], 'other people keep theirs')
})

t.test('no answer, then an answer: the same token is re-sent and spent once', async (t) => {
  for (const fault of ['hangRate', 'resetRate'] as const) {
    await t.test(fault, async (t) => {
      const w = await world(t, { env: FAST_TIMEOUT, emulator: { random: scripted(0) } })
      const psid = newPsid()
      const tokens = await giveTokens(w, psid, 2)
      w.emulator.setFaults({ [fault]: 0.5 })
      const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
      t.equal(res.statusCode, 201, res.body)
      t.match(res.json(), { status: 'sent', attempts: 2, token_state: 'used' })
      t.same(w.emulator.requests.map((r) => r.recipient), [{ one_time_notif_token: tokens[0].token }, { one_time_notif_token: tokens[0].token }], 'the same token twice')
      t.same([...w.emulator.tokenUses().values()], [1])
      t.same(await tokenStates(w.db, tokens.map((x) => x.id)), ['used', 'available'])
    })
  }
})

t.test('processed but the answer lost, then "already used": unconfirmed (504), never given to another send', async (t) => {
  for (const fault of ['hang', 'reset'] as const) {
    await t.test(fault, async (t) => {
      const w = await world(t, { env: FAST_TIMEOUT, emulator: { random: scripted(0) } })
      const psid = newPsid()
      const tokens = await giveTokens(w, psid, 2)
      w.emulator.setFaults({ [`${fault}Rate`]: 0.5, processThenFail: fault })
      const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
      t.equal(res.statusCode, 504, res.body)
      t.match(res.json(), {
        code: 'graph_unconfirmed', graph: { code: 100 },
        notification: { status: 'unconfirmed', route: 'token', token_state: 'unconfirmed', attempts: 2, http_status: 504 },
      })
      t.equal(w.emulator.inbox(w.pageId, psid).length, 1, 'the person did get the message once')
      t.same(w.emulator.doubleSpends(), [])
      t.same(await tokenStates(w.db, tokens.map((x) => x.id)), ['unconfirmed', 'available'])
    })
  }
})

t.test('never an answer: retried up to GRAPH_API_MAX_RETRIES, then unconfirmed', async (t) => {
  const logs = new LogCapture()
  const w = await world(t, { env: { ...FAST_TIMEOUT, LOG_LEVEL: 'debug' }, deps: { logStream: logs } })
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 1)
  w.emulator.setFaults({ hangRate: 1 })
  const started = Date.now()
  const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(res.statusCode, 504, res.body)
  t.ok(Date.now() - started < 15_000, 'bounded by the timeout and the retries')
  t.match(res.json(), { code: 'graph_unconfirmed', notification: { status: 'unconfirmed', attempts: 3, token_state: 'unconfirmed' } })
  t.notOk('graph' in res.json())
  t.equal(w.emulator.requests.length, 3)
  t.same(await tokenStates(w.db, [tokens[0].id]), ['unconfirmed'])

  const next = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(next.statusCode, 409, 'an unconfirmed token is never handed to another send')
  t.same(logs.lines.filter((l) => l.msg === NO_ANSWER_LOG).map((l) => l.retrying), [true, true, false])
  t.notOk(logs.text.includes(tokens[0].token), 'the token is not logged')
  t.notOk(logs.text.includes(w.accessToken), 'the access token is not logged')
})

t.test('window route with no answer: unconfirmed, not re-sent (a standard message could arrive twice)', async (t) => {
  const w = await world(t, { env: FAST_TIMEOUT })
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 1)
  await openWindow(w, psid)
  w.emulator.setFaults({ hangRate: 1, processThenFail: 'hang' })
  const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(res.statusCode, 504)
  t.match(res.json(), { code: 'graph_unconfirmed', notification: { status: 'unconfirmed', route: 'window', attempts: 1 } })
  t.equal(w.emulator.requests.length, 1)
  t.same(await tokenStates(w.db, [tokens[0].id]), ['available'])
})

t.test('Graph API unreachable: nothing left, so the token is kept (503)', async (t) => {
  const w = await world(t)
  // A port nobody listens on: the emulator's, after it closed.
  const dead = await build(t, graphEnv(w.base))
  await w.emulator.close()
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 1)
  const res = await notify(dead, { topic_id: w.topic.id, psid, message: text() })
  t.equal(res.statusCode, 503, res.body)
  t.match(res.json(), { code: 'graph_unreachable', notification: { status: 'failed', token_state: 'released', attempts: 3 } })
  t.equal(res.headers['retry-after'], '5')
  t.same(await tokenStates(w.db, [tokens[0].id]), ['available'])
})

t.test('GRAPH_API_CONNECTIONS bounds the sends in flight towards Meta; the others wait their turn and are sent', async (t) => {
  const w = await world(t, { env: { GRAPH_API_CONNECTIONS: '2' } })
  w.emulator.setFaults({ latencyMs: 150 }, w.pageId)
  let sockets = 0
  let inFlight = 0
  let most = 0
  w.emulator.app.server.on('connection', () => { sockets++ })
  w.emulator.app.server.on('request', (_req, res) => {
    inFlight++
    most = Math.max(most, inFlight)
    res.once('close', () => { inFlight-- })
  })
  const people = Array.from({ length: 6 }, () => newPsid())
  const tokens = await Promise.all(people.map((psid) => giveTokens(w, psid, 1)))
  const answers = await Promise.all(people.map((psid) => notify(w.app, { topic_id: w.topic.id, psid, message: text() })))
  t.same(answers.map((r) => r.statusCode), people.map(() => 201), answers.map((r) => r.body).join('\n'))
  t.same(answers.map((r) => r.json()).map(({ status, route, token_state }) => ({ status, route, token_state })),
    people.map(() => ({ status: 'sent', route: 'token', token_state: 'used' })))
  t.ok(sockets <= 2 && most <= 2, `at most two at once towards Meta (${sockets} sockets, ${most} requests at once)`)
  t.same(await tokenStates(w.db, tokens.map(([token]) => token.id)), people.map(() => 'used'))
})

t.test('idempotency: same key and body replays the result; another body is 422', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 2)
  const body = { topic_id: w.topic.id, psid, message: text() }
  const first = await notify(w.app, body, 'order-42-shipped')
  t.equal(first.statusCode, 201)
  const again = await notify(w.app, { message: text(), psid, topic_id: w.topic.id, use_window: true, notification_type: 'REGULAR' }, 'order-42-shipped')
  t.equal(again.statusCode, 201, 'defaults and key order do not change the request')
  t.equal(again.headers['idempotent-replayed'], 'true')
  t.same(again.json(), first.json())
  t.equal(w.emulator.requests.length, 1, 'one send')
  t.same(await tokenStates(w.db, tokens.map((x) => x.id)), ['used', 'available'], 'one token')

  const conflict = await notify(w.app, { ...body, message: text('something else') }, 'order-42-shipped')
  t.equal(conflict.statusCode, 422)
  t.match(conflict.json(), { code: 'idempotency_conflict', notification: { id: first.json().id } })

  // Failures replay too, with their status.
  const other = newPsid()
  const failed = await notify(w.app, { topic_id: w.topic.id, psid: other, message: text() }, 'nothing-yet')
  t.equal(failed.statusCode, 409)
  await giveTokens(w, other, 1)
  const replayed = await notify(w.app, { topic_id: w.topic.id, psid: other, message: text() }, 'nothing-yet')
  t.equal(replayed.statusCode, 409)
  t.equal(replayed.json().notification.id, failed.json().notification.id)
  t.equal(w.emulator.requests.length, 1)
})

t.test('idempotency: a key is scoped to the Page; the same key on two Pages is two requests, each replayed on its own Page', async (t) => {
  const w = await world(t)
  const otherPageId = uniquePageId()
  const otherToken = `EAApage-token-${otherPageId}`
  w.emulator.addPage({ id: otherPageId, accessToken: otherToken })
  await w.app.inject({ method: 'PUT', url: `/v1/pages/${otherPageId}`, headers: auth, payload: { name: 'Other shop', access_token: otherToken } })
  const otherTopic = (await w.app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: otherPageId, name: `Restock ${otherPageId}` } })).json()
  const psid = newPsid()
  await giveTokens(w, psid, 1)
  await giveTokens({ ...w, pageId: otherPageId, topic: otherTopic }, psid, 1)

  const onFirst = await notify(w.app, { topic_id: w.topic.id, psid, message: text() }, 'order-7')
  const onOther = await notify(w.app, { topic_id: otherTopic.id, psid, message: text('another message') }, 'order-7')
  t.equal(onFirst.statusCode, 201)
  t.equal(onOther.statusCode, 201, 'not a conflict: another Page, another request (before migration 20261202120000 this was a 422)')
  t.not(onOther.json().id, onFirst.json().id)
  t.equal(onOther.json().page_id, otherPageId)
  t.equal(w.emulator.requests.length, 2, 'one send on each Page')

  const replayOther = await notify(w.app, { topic_id: otherTopic.id, psid, message: text('another message') }, 'order-7')
  t.equal(replayOther.headers['idempotent-replayed'], 'true')
  t.equal(replayOther.json().id, onOther.json().id, "each Page's key replays its own request")
  const conflict = await notify(w.app, { topic_id: w.topic.id, psid, message: text('another message') }, 'order-7')
  t.equal(conflict.statusCode, 422, "the first Page's key still belongs to its first request")
  t.match(conflict.json(), { code: 'idempotency_conflict', notification: { id: onFirst.json().id } })
  t.equal(w.emulator.requests.length, 2)
})

t.test('idempotency: the same key racing on two instances sends once; the others are told at once to ask again', async (t) => {
  const w = await world(t)
  const second = await build(t, graphEnv(w.base))
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 3)
  w.emulator.setFaults({ latencyMs: 300 })
  const body = { topic_id: w.topic.id, psid, message: text() }
  const started = Date.now()
  const answers = await Promise.all([
    notify(w.app, body, 'race-key'), notify(second, body, 'race-key'),
    notify(w.app, body, 'race-key'), notify(second, body, 'race-key'),
  ])
  t.same(answers.map((a) => a.statusCode).sort(), [201, 409, 409, 409], 'one sends; the others do not wait for it')
  const winner = answers.find((a) => a.statusCode === 201)!.json()
  for (const a of answers.filter((x) => x.statusCode === 409)) {
    t.match(a.json(), { code: 'idempotency_in_progress', notification: { id: winner.id, status: 'pending' } })
    t.equal(a.headers['retry-after'], '1')
  }
  t.ok(Date.now() - started < 30_000)
  const later = await notify(second, body, 'race-key')
  t.equal(later.statusCode, 201, 'asked again once it is done: the first result')
  t.equal(later.headers['idempotent-replayed'], 'true')
  t.equal(later.json().id, winner.id, 'one notification')
  t.equal(w.emulator.requests.length, 1, 'one send')
  // Which token is spent is not fixed: a request that loses the race for the key may hold the
  // soonest-expiring token (SKIP LOCKED) until its statement is undone, so the winner takes the next.
  const states = await tokenStates(w.db, tokens.map((x) => x.id))
  t.same([...states].sort(), ['available', 'available', 'used'], 'one token spent, the others kept')
  t.equal(w.emulator.tokenUses().size, 1, 'Meta accepted one token')
  t.ok(tokens.some((x, i) => states[i] === 'used' && w.emulator.tokenUses().has(x.token)), 'the spent one is the one Meta got')
})

t.test('N parallel sends for a person holding K tokens, on two instances: exactly min(N, K) delivered, each token once', async (t) => {
  const N = 12
  const K = 5
  const w = await world(t)
  const second = await build(t, graphEnv(w.base))
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, K)
  w.emulator.setFaults({ latencyMs: 20 })
  const answers = await Promise.all(Array.from({ length: N }, (_, i) =>
    notify(i % 2 === 0 ? w.app : second, { topic_id: w.topic.id, psid, message: text(`message ${i}`) })))
  const codes = answers.map((a) => a.statusCode)
  t.equal(codes.filter((c) => c === 201).length, K, codes.join(','))
  t.equal(codes.filter((c) => c === 409).length, N - K)
  t.same(w.emulator.doubleSpends(), [])
  const uses = w.emulator.tokenUses()
  t.equal(uses.size, K)
  t.same(new Set(uses.keys()), new Set(tokens.map((x) => x.token)), 'every token accepted exactly once')
  t.equal(w.emulator.inbox(w.pageId, psid).length, K)
  t.same(await tokenStates(w.db, tokens.map((x) => x.id)), Array(K).fill('used'))
  const rows = await w.db.selectFrom('notifications').select(['status', 'token_id']).where('psid', '=', psid).execute()
  t.equal(rows.filter((r) => r.status === 'sent').length, K)
  t.equal(rows.filter((r) => r.status === 'no_token').length, N - K)
  t.equal(new Set(rows.filter((r) => r.status === 'sent').map((r) => String(r.token_id))).size, K, 'a different token for each')
})

t.test('validation: the message is checked like the Send API does', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const bad: Array<[string, unknown]> = [
    ['text and attachment', { text: 'a', attachment: { type: 'image', payload: { url: 'https://x.invalid/a.png' } } }],
    ['neither', {}],
    ['text too long', { text: 'x'.repeat(2001) }],
    ['blank text', { text: '   ' }],
    ['unknown attachment type', { attachment: { type: 'sticker', payload: { id: 1 } } }],
    ['attachment without payload', { attachment: { type: 'image' } }],
    ['unknown field', { text: 'a', colour: 'red' }],
  ]
  for (const [name, message] of bad) {
    const res = await notify(w.app, { topic_id: w.topic.id, psid, message })
    t.equal(res.statusCode, 400, name)
    t.equal(res.json().code, 'validation_failed', name)
  }
  const ok = [{ text: 'x'.repeat(2000) }, { text: 'pick', quick_replies: [{ content_type: 'text', title: 'Yes', payload: 'Y' }] },
    { attachment: { type: 'template', payload: { template_type: 'button', text: 'hi', buttons: [] } } }]
  await giveTokens(w, psid, ok.length)
  for (const message of ok) {
    const res = await notify(w.app, { topic_id: w.topic.id, psid, message })
    t.equal(res.statusCode, 201, JSON.stringify(message).slice(0, 40))
  }
  t.equal((await notify(w.app, { topic_id: w.topic.id, psid, message: text(), notification_type: 'LOUD' })).statusCode, 400)
  t.equal((await notify(w.app, { topic_id: w.topic.id, psid, message: text(), extra: 1 })).statusCode, 400)
  t.equal((await notify(w.app, { topic_id: w.topic.id, psid: 'not a psid!', message: text() })).statusCode, 400)
  const longKey = await notify(w.app, { topic_id: w.topic.id, psid, message: text() }, 'k'.repeat(256))
  t.equal(longKey.statusCode, 400)
  t.match(longKey.json().errors, [{ field: /idempotency-key/ }])

  const unknown = await notify(w.app, { topic_id: '00000000-0000-4000-8000-000000000000', psid, message: text() })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'topic_not_found')
})

t.test('a Page without an access token: 409 page_without_access_token, nothing recorded', async (t) => {
  const w = await world(t)
  const pageId = `9${w.pageId}`
  await w.app.inject({ method: 'PUT', url: `/v1/pages/${pageId}`, headers: auth, payload: { name: 'No token' } })
  const topic = (await w.app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'T' } })).json()
  const res = await notify(w.app, { topic_id: topic.id, psid: newPsid(), message: text() })
  t.equal(res.statusCode, 409)
  t.equal(res.json().code, 'page_without_access_token')
  const rows = await w.db.selectFrom('notifications').select('id').where('page_id', '=', pageId).execute()
  t.equal(rows.length, 0)
})

t.test('list notifications: filters and cursor pagination, oldest first', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  await giveTokens(w, psid, 3)
  const ids: string[] = []
  for (let i = 0; i < 5; i++) {
    const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text(`n${i}`) })
    ids.push(res.statusCode === 201 ? res.json().id : res.json().notification.id)
  }
  const seen: string[] = []
  let cursor: string | null = null
  do {
    const res = await w.app.inject({ method: 'GET', url: '/v1/notifications', headers: auth, query: { psid, limit: '2', ...(cursor ? { cursor } : {}) } })
    t.equal(res.statusCode, 200)
    const page = res.json() as { items: Array<{ id: string }>, next_cursor: string | null }
    seen.push(...page.items.map((n) => n.id))
    cursor = page.next_cursor
  } while (cursor)
  t.same(seen, ids, 'every notification once, oldest first')

  const sent = (await w.app.inject({ method: 'GET', url: '/v1/notifications', headers: auth, query: { psid, status: 'sent' } })).json()
  t.equal(sent.items.length, 3)
  const noToken = (await w.app.inject({ method: 'GET', url: '/v1/notifications', headers: auth, query: { topic_id: w.topic.id, psid, status: 'no_token' } })).json()
  t.same(noToken.items.map((n: { id: string }) => n.id), ids.slice(3))
  const future = (await w.app.inject({ method: 'GET', url: '/v1/notifications', headers: auth, query: { psid, created_after: new Date(Date.now() + 60_000).toISOString() } })).json()
  t.same(future.items, [])
  const before = (await w.app.inject({ method: 'GET', url: '/v1/notifications', headers: auth, query: { psid, created_before: new Date(Date.now() + 60_000).toISOString() } })).json()
  t.equal(before.items.length, 5)
  t.equal((await w.app.inject({ method: 'GET', url: '/v1/notifications?status=bogus', headers: auth })).statusCode, 400)
  const missing = await w.app.inject({ method: 'GET', url: '/v1/notifications/00000000-0000-4000-8000-000000000000', headers: auth })
  t.equal(missing.statusCode, 404)
  t.equal(missing.json().code, 'notification_not_found')
})

const pageHealth = async (w: { app: import('fastify').FastifyInstance, pageId: string }) =>
  (await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}`, headers: auth })).json().healthy

t.test("Meta's bare (#100) Invalid parameter costs at most the one token sent and ends the attempt; the person's others are kept", async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 3)
  // What Meta answers for a message it will not send (MESSENGER.md §8), here for every request.
  w.emulator.setFaults({ errorRate: 1, error: { code: 100, message: '(#100) Invalid parameter' } })
  const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(res.statusCode, 422, res.body)
  t.match(res.json(), {
    code: 'graph_message_refused', graph: { code: 100, subcode: null, message: '(#100) Invalid parameter' },
    notification: { status: 'failed', route: 'token', token_state: 'invalid', tokens_refused: 1, http_status: 422 },
  })
  t.equal(w.emulator.requests.length, 1, 'one Graph call: no second token was tried')
  t.same(await tokenStates(w.db, tokens.map((x) => x.id)), ['invalid', 'available', 'available'])
  t.equal(await pageHealth(w), true)
  w.emulator.clearFaults()
  const next = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(next.statusCode, 201, 'the person can still be notified with the next token')
  t.same(await tokenStates(w.db, tokens.map((x) => x.id)), ['invalid', 'used', 'available'])
})

t.test('a spent token refused with the bare (#100) does not block the person: it is set aside, the next send uses the next token', async (t) => {
  const w = await world(t, { emulator: { tokenRefusal: 'generic_parameter' } })
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 2)
  // The first token was spent elsewhere (another app of the Page); Meta now refuses it in the generic words.
  const { appsecretProof: proof } = await import('../../src/graph/client.js')
  const spent = await fetch(`${w.base}/${DEFAULT_GRAPH_VERSION}/me/messages?access_token=${w.accessToken}&appsecret_proof=${proof(w.accessToken, APP_SECRET)}`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ recipient: { one_time_notif_token: tokens[0].token }, message: { text: 'elsewhere' } }),
  })
  t.equal(spent.status, 200)
  const first = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(first.statusCode, 422)
  t.match(first.json(), { code: 'graph_message_refused', notification: { token_state: 'invalid' } })
  const second = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(second.statusCode, 201)
  t.same(await tokenStates(w.db, tokens.map((x) => x.id)), ['invalid', 'used'])
  t.same(w.emulator.doubleSpends(), [])
})

t.test('a refusal naming a parameter of the message keeps every token (422 graph_request_invalid)', async (t) => {
  const w = await world(t, { emulator: { paramErrors: 'detailed' } })
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 2)
  w.emulator.setFaults({ errorRate: 1, error: { code: 100, message: '(#100) Invalid tag.' } })
  const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(res.statusCode, 422)
  t.match(res.json(), { code: 'graph_request_invalid', notification: { token_state: 'released', tokens_refused: 0 } })
  t.same(await tokenStates(w.db, tokens.map((x) => x.id)), ['available', 'available'])
})

t.test("person-level refusals keep the token and leave the Page healthy; Page-level ones mark it", async (t) => {
  const w = await world(t)
  const people: Array<[string, 'not_receiving' | 'blocked' | 'unavailable', number, number | null]> = [
    ['not receiving', 'not_receiving', 200, null], ['blocked', 'blocked', 10, null], ['unavailable', 'unavailable', 551, 1545041],
  ]
  for (const [name, reason, code, subcode] of people) {
    const psid = newPsid()
    const [token] = await giveTokens(w, psid, 1)
    w.emulator.setPersonAvailable(w.pageId, psid, false, reason)
    const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
    t.equal(res.statusCode, 502, name)
    t.match(res.json(), { code: 'graph_person_unavailable', graph: { code, subcode }, notification: { token_state: 'released' } }, name)
    t.same(await tokenStates(w.db, [token.id]), ['available'], `${name}: token kept`)
    t.equal(await pageHealth(w), true, `${name}: the Page stays healthy`)
  }
  // Inside the window too.
  const writer = newPsid()
  await openWindow(w, writer)
  w.emulator.setPersonAvailable(w.pageId, writer, false, 'not_receiving')
  const windowed = await notify(w.app, { topic_id: w.topic.id, psid: writer, message: text() })
  t.match(windowed.json(), { code: 'graph_person_unavailable', notification: { route: 'window' } })
  t.equal(await pageHealth(w), true)

  const pageLevel: Array<[string, { code: number, subcode?: number, message?: string }, string]> = [
    ['app not live', { code: 10, message: '(#10) Cannot message users who are not admins, developers or testers of the app until pages_messaging permission is reviewed and the app is live.' }, 'graph_permission_missing'],
    ['Page token', { code: 190, subcode: 463, message: 'Error validating access token: Session has expired.' }, 'graph_page_token_invalid'],
    ['restricted', { code: 10, subcode: 1893063, message: '(#10) This Page is temporarily restricted.' }, 'graph_page_restricted'],
  ]
  for (const [name, error, code] of pageLevel) {
    await w.app.inject({ method: 'PUT', url: `/v1/pages/${w.pageId}`, headers: auth, payload: { name: 'Shop', access_token: w.accessToken } })
    t.equal(await pageHealth(w), true, `${name}: healthy before`)
    const psid = newPsid()
    const [token] = await giveTokens(w, psid, 1)
    w.emulator.setFaults({ errorRate: 1, error })
    const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
    w.emulator.clearFaults()
    t.match(res.json(), { code, notification: { token_state: 'released' } }, name)
    t.same(await tokenStates(w.db, [token.id]), ['available'], `${name}: token kept`)
    t.equal(await pageHealth(w), false, `${name}: the Page is marked unhealthy`)
  }
})

t.test('every throttling answer Meta documents is a 429 with Retry-After, and the token is kept', async (t) => {
  const w = await world(t)
  const throttles: Array<{ code: number, subcode?: number }> = [
    { code: 4 }, { code: 17 }, { code: 32 }, { code: 341 }, { code: 613 }, { code: 613, subcode: 2534040 }, { code: 613, subcode: 1893016 },
  ]
  for (const error of throttles) {
    const name = `${error.code}/${error.subcode ?? '-'}`
    const psid = newPsid()
    const [token] = await giveTokens(w, psid, 1)
    w.emulator.setFaults({ errorRate: 1, error })
    const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
    t.equal(res.statusCode, 429, name)
    t.equal(res.headers['retry-after'], '60', name)
    t.match(res.json(), { code: 'graph_rate_limited', graph: { code: error.code, subcode: error.subcode ?? null }, notification: { token_state: 'released', status: 'failed' } }, name)
    t.same(await tokenStates(w.db, [token.id]), ['available'], `${name}: token kept`)
    // Inside the window as well.
    await openWindow(w, psid, { emulator: false })
    const windowed = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
    t.equal(windowed.statusCode, 429, `${name} (window)`)
    t.equal(windowed.headers['retry-after'], '60')
    w.emulator.clearFaults()
  }
  t.equal(await pageHealth(w), true)
})

t.test('messaging_type: UPDATE by default inside the window, RESPONSE or MESSAGE_TAG with a tag when asked; token sends keep UPDATE', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const [token] = await giveTokens(w, psid, 1)
  await openWindow(w, psid)
  const sent = async (body: Record<string, unknown>) => {
    const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text(), ...body })
    t.equal(res.statusCode, 201, res.body)
    const r = w.emulator.requests.at(-1)!
    return { res: res.json(), type: r.messagingType, tag: r.tag, recipient: r.recipient }
  }
  t.match(await sent({}), { type: 'UPDATE', tag: undefined, res: { route: 'window', messaging_type: 'UPDATE' } })
  t.match(await sent({ messaging_type: 'RESPONSE' }), { type: 'RESPONSE', res: { messaging_type: 'RESPONSE' } })
  t.match(await sent({ messaging_type: 'MESSAGE_TAG', tag: 'HUMAN_AGENT' }), { type: 'MESSAGE_TAG', tag: 'HUMAN_AGENT', res: { messaging_type: 'MESSAGE_TAG', tag: 'HUMAN_AGENT' } })
  const byToken = await sent({ messaging_type: 'RESPONSE', use_window: false })
  t.match(byToken, { type: 'UPDATE', tag: undefined, recipient: { one_time_notif_token: token.token }, res: { route: 'token' } }, 'a token send goes out as Meta documents it')

  for (const [body, code] of [[{ messaging_type: 'MESSAGE_TAG' }, 'tag_required'], [{ tag: 'HUMAN_AGENT' }, 'tag_without_message_tag'],
    [{ messaging_type: 'RESPONSE', tag: 'HUMAN_AGENT' }, 'tag_without_message_tag']] as const) {
    const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text(), ...body })
    t.equal(res.statusCode, 400, JSON.stringify(body))
    t.match(res.json(), { code })
  }
  const bad = await notify(w.app, { topic_id: w.topic.id, psid, message: text(), messaging_type: 'PROMOTION' })
  t.equal(bad.statusCode, 400)

  // The labelling is part of the request an Idempotency-Key stands for.
  t.equal((await notify(w.app, { topic_id: w.topic.id, psid, message: text('k') }, 'label-key')).statusCode, 201)
  t.equal((await notify(w.app, { topic_id: w.topic.id, psid, message: text('k'), messaging_type: 'UPDATE' }, 'label-key')).headers['idempotent-replayed'], 'true', 'UPDATE is the default')
  t.equal((await notify(w.app, { topic_id: w.topic.id, psid, message: text('k'), messaging_type: 'RESPONSE' }, 'label-key')).statusCode, 422)
})

t.test('Meta answering HTTP 200 with an error body: nothing was sent, the token is kept', async (t) => {
  // courier's facebook_test.go "Response is channel specific error" (test/fixtures/meta/graph-errors/courier-36000-error-with-http-200.json).
  const { createServer } = await import('node:http')
  const { readFileSync } = await import('node:fs')
  const fixture = JSON.parse(readFileSync(new URL('../fixtures/meta/graph-errors/courier-36000-error-with-http-200.json', import.meta.url), 'utf8'))
  const server = createServer((_req, res) => { res.writeHead(fixture.http_status, { 'content-type': 'application/json' }).end(JSON.stringify(fixture.body)) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => server.close())
  const w = await world(t)
  const metaLike = await build(t, graphEnv(`http://127.0.0.1:${(server.address() as import('node:net').AddressInfo).port}`))
  const psid = newPsid()
  const [token] = await giveTokens(w, psid, 1)
  const res = await notify(metaLike, { topic_id: w.topic.id, psid, message: text() })
  t.equal(res.statusCode, 502)
  t.match(res.json(), { code: 'graph_error', graph: { code: 36000, message: 'The image size is too large.' }, notification: { status: 'failed', token_state: 'released' } })
  t.same(await tokenStates(w.db, [token.id]), ['available'])
})

// ---- recurring notifications (notification_messages) ----

const HOUR_MS = 3_600_000

/** The first instant after `from` at which it is 00:00 on `weekday` (0 = Sunday … 1 = Monday), or on any day, in `timeZone`, found by walking quarter hours. */
function nextLocalMidnight (from: number, timeZone: string, weekday?: number): number {
  const parts = new Intl.DateTimeFormat('en-US', { timeZone, weekday: 'short', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' })
  const days = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat']
  for (let at = Math.ceil((from + 1) / 900_000) * 900_000; ; at += 900_000) {
    const p = Object.fromEntries(parts.formatToParts(new Date(at)).map((x) => [x.type, x.value]))
    if (p.hour === '00' && p.minute === '00' && (weekday === undefined || days.indexOf(p.weekday) === weekday)) return at
  }
}

t.test('recurring: the window closed, a recurring token sends, stays usable and starts its cooldown; the next send is a 429 with next_send_at', async (t) => {
  const logs = new LogCapture()
  const w = await world(t, { env: { LOG_LEVEL: 'info' }, deps: { logStream: logs } })
  const psid = newPsid()
  const token = await recurringEvent(w, psid, { frequency: 'DAILY', timezone: 'UTC' })

  const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text('Deal of the day') })
  t.equal(res.statusCode, 201, res.body)
  t.match(res.json(), { status: 'sent', route: 'recurring', token_state: 'used', attempts: 1 })
  const [request] = w.emulator.requests
  t.same(request.recipient, { notification_messages_token: token }, 'Meta gets the recurring token as the recipient')
  t.equal(request.messagingType, 'UPDATE')
  t.equal(w.emulator.inbox(w.pageId, psid)[0]?.via, 'notification_messages_token')

  const [row] = await recurringRows(w.db, w.pageId, psid)
  t.match(row, { state: 'available', notification_id: null, lease_expires_at: null, stopped_at: null }, 'kept: usable again after its pacing')
  const sentAt = row.last_sent_at!.getTime()
  t.ok(Math.abs(sentAt - Date.now()) < 60_000, 'last_sent_at is the send')
  t.equal(row.next_send_at!.getTime(), sentAt + 48 * HOUR_MS, 'the 48-hour cooldown outlasts the day')

  const again = await notify(w.app, { topic_id: w.topic.id, psid, message: text('Another deal') })
  t.equal(again.statusCode, 429, again.body)
  const problem = again.json()
  t.match(problem, { code: 'recurring_cooldown', next_send_at: row.next_send_at!.toISOString(), notification: { status: 'failed', route: 'recurring', attempts: 0 } })
  const retryAfter = Number(again.headers['retry-after'])
  t.ok(Math.abs(retryAfter - (row.next_send_at!.getTime() - Date.now()) / 1000) < 5, `Retry-After ${retryAfter} s is the wait until next_send_at`)
  t.equal(w.emulator.requests.length, 1, 'nothing went to Meta')
  t.notOk(logs.text.includes(token), 'the token is not logged')
  t.notOk(again.body.includes(token) || res.body.includes(token), 'nor answered')

  // A one-time token on the same topic is the way when the recurring one must wait.
  const [otn] = await giveTokens(w, psid, 1)
  const third = await notify(w.app, { topic_id: w.topic.id, psid, message: text('Restocked') })
  t.equal(third.statusCode, 201, third.body)
  t.match(third.json(), { route: 'token' })
  t.same(await tokenStates(w.db, [otn.id]), ['used'])
  t.same(w.emulator.requests[1].recipient, { one_time_notif_token: otn.token })

  // The caller may insist on a kind.
  const onlyRecurring = await notify(w.app, { topic_id: w.topic.id, psid, message: text(), token_kind: 'notification_messages' })
  t.equal(onlyRecurring.statusCode, 429)
  t.match(onlyRecurring.json(), { code: 'recurring_cooldown' })
  const onlyOtn = await notify(w.app, { topic_id: w.topic.id, psid, message: text(), token_kind: 'one_time_notif' })
  t.equal(onlyOtn.statusCode, 409)
  t.match(onlyOtn.json(), { code: 'no_token' })
})

t.test('recurring: the window first (the token untouched), a stopped token never sends, resume brings it back', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const t0 = Date.now() - 60_000
  await recurringEvent(w, psid, { at: t0 })
  await openWindow(w, psid)
  const inWindow = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.match(inWindow.json(), { status: 'sent', route: 'window' })
  t.match((await recurringRows(w.db, w.pageId, psid))[0], { last_sent_at: null, next_send_at: null }, 'the window spends no pacing')

  const other = newPsid()
  const token = await recurringEvent(w, other, { at: t0 })
  await recurringEvent(w, other, { token, at: t0 + 1000, status: 'STOP NOTIFICATIONS' })
  const stopped = await notify(w.app, { topic_id: w.topic.id, psid: other, message: text() })
  t.equal(stopped.statusCode, 409)
  t.match(stopped.json(), { code: 'no_token' })
  await recurringEvent(w, other, { token, at: t0 + 2000, status: 'RESUME_NOTIFICATIONS' })
  const resumed = await notify(w.app, { topic_id: w.topic.id, psid: other, message: text() })
  t.equal(resumed.statusCode, 201, resumed.body)
  t.match(resumed.json(), { route: 'recurring' })
})

t.test("recurring: Meta's answers — frequency limit keeps the token and records when, a stop at Meta stops it, an invalid token is set aside for the next", async (t) => {
  const w = await world(t)
  const limited = newPsid()
  await recurringEvent(w, limited)
  w.emulator.setFaults({ errorRate: 1, error: { code: 4, subcode: 2018354, message: '(#4) Notification frequency limit reached' } })
  const res = await notify(w.app, { topic_id: w.topic.id, psid: limited, message: text() })
  t.equal(res.statusCode, 429, res.body)
  t.match(res.json(), { code: 'recurring_cooldown', graph: { code: 4, subcode: 2018354 }, notification: { token_state: 'deferred', route: 'recurring' } })
  t.equal(res.headers['retry-after'], '60')
  const [kept] = await recurringRows(w.db, w.pageId, limited)
  t.match(kept, { state: 'available', notification_id: null, last_sent_at: null, stopped_at: null })
  t.ok(kept.next_send_at!.getTime() > Date.now() + 47 * HOUR_MS, 'the next send time is recorded')

  const stopping = newPsid()
  await recurringEvent(w, stopping)
  w.emulator.setFaults({ errorRate: 1, error: { code: 10, subcode: 1893015, message: '(#10) This person has stopped these notifications' } })
  const stoppedRes = await notify(w.app, { topic_id: w.topic.id, psid: stopping, message: text() })
  t.equal(stoppedRes.statusCode, 502, stoppedRes.body)
  t.match(stoppedRes.json(), { code: 'graph_topic_stopped', notification: { token_state: 'stopped' } })
  const [stoppedRow] = await recurringRows(w.db, w.pageId, stopping)
  t.match(stoppedRow, { state: 'available', notification_id: null })
  t.type(stoppedRow.stopped_at, Date, 'stopped until the person resumes')

  w.emulator.clearFaults()
  const refused = newPsid()
  await recurringEvent(w, refused, { token: 'rec-token-meta-does-not-know-0001' })
  const [otn] = await giveTokens(w, refused, 1)
  const next = await notify(w.app, { topic_id: w.topic.id, psid: refused, message: text() })
  t.equal(next.statusCode, 201, next.body)
  t.match(next.json(), { route: 'token', tokens_refused: 1 })
  t.match((await recurringRows(w.db, w.pageId, refused))[0], { state: 'invalid' })
  t.same(await tokenStates(w.db, [otn.id]), ['used'])
})

t.test('recurring: no answer is never re-sent with a reusable token; it ends unconfirmed and keeps the cooldown', async (t) => {
  const w = await world(t, { env: FAST_TIMEOUT })
  const psid = newPsid()
  await recurringEvent(w, psid)
  w.emulator.setFaults({ hangRate: 1 })
  const res = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(res.statusCode, 504, res.body)
  t.match(res.json(), { code: 'graph_unconfirmed', notification: { status: 'unconfirmed', attempts: 1, token_state: 'unconfirmed', route: 'recurring' } })
  t.equal(w.emulator.requests.length, 1, 'one attempt, not GRAPH_API_MAX_RETRIES + 1')
  const [row] = await recurringRows(w.db, w.pageId, psid)
  t.match(row, { state: 'available', notification_id: null })
  t.ok(row.next_send_at!.getTime() > Date.now() + 47 * HOUR_MS, 'the cooldown holds: the message may have arrived')
  w.emulator.clearFaults()
  const again = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
  t.equal(again.statusCode, 429)
})

t.test('recurring: one message per calendar period in the token\'s time zone, else the Page\'s; Retry-After and next_send_at across the boundary', async (t) => {
  const w = await world(t, { env: { RECURRING_COOLDOWN_HOURS: '0' } })
  const cases = [
    { name: 'weekly in Pacific/Auckland (the token\'s zone)', event: { frequency: 'WEEKLY', timezone: 'Pacific/Auckland' } as const, zone: 'Pacific/Auckland', weekday: 1 },
    { name: 'daily in America/Los_Angeles (the Page\'s zone)', event: { frequency: 'DAILY' } as const, zone: 'America/Los_Angeles', page: 'America/Los_Angeles' },
    { name: 'daily without any zone: UTC', event: { frequency: 'DAILY' } as const, zone: 'UTC' },
  ]
  for (const c of cases) {
    await w.db.updateTable('pages').set({ timezone: c.page ?? 'UTC' }).where('id', '=', w.pageId).execute()
    const psid = newPsid()
    await recurringEvent(w, psid, c.event)
    const sent = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
    t.equal(sent.statusCode, 201, `${c.name}: ${sent.body}`)
    const expected = nextLocalMidnight(Date.now() - 5_000, c.zone, c.weekday)
    const [row] = await recurringRows(w.db, w.pageId, psid)
    t.equal(row.next_send_at!.toISOString(), new Date(expected).toISOString(), `${c.name}: the next period starts at local midnight`)
    const again = await notify(w.app, { topic_id: w.topic.id, psid, message: text() })
    t.equal(again.statusCode, 429, c.name)
    t.equal(again.json().next_send_at, new Date(expected).toISOString(), `${c.name}: next_send_at`)
    const retryAfter = Number(again.headers['retry-after'])
    t.ok(Math.abs(retryAfter - (expected - Date.now()) / 1000) <= 5, `${c.name}: Retry-After ${retryAfter} s`)
  }
})

t.test('recurring: concurrent sends on one token across two instances — exactly one goes to Meta', async (t) => {
  const w = await world(t)
  const second = await build(t, graphEnv(w.base))
  const psid = newPsid()
  await recurringEvent(w, psid)
  const results = await Promise.all(Array.from({ length: 12 }, (_, i) =>
    notify(i % 2 === 0 ? w.app : second, { topic_id: w.topic.id, psid, message: text(`deal ${i}`) })))
  const statuses = results.map((r) => r.statusCode).sort()
  t.same(statuses, [201, ...Array(11).fill(429)], statuses.join(','))
  t.equal(w.emulator.requests.filter((r) => r.recipient.notification_messages_token !== undefined).length, 1, 'Meta saw one recurring send')
  t.equal(w.emulator.inbox(w.pageId, psid).length, 1)
})

t.test('recurring: a re-opt-in while a send holds the old token cannot open a second message inside the cooldown', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const old = await recurringEvent(w, psid, { at: Date.now() - 60_000 })
  w.emulator.setFaults({ latencyMs: 1000 }, w.pageId)
  const sending = notify(w.app, { topic_id: w.topic.id, psid, message: text('First') })
  for (let i = 0; i < 100 && (await heldTokens(w.db, w.pageId)).length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.equal((await heldTokens(w.db, w.pageId)).length, 1, 'the send holds the old token')
  const fresh = await recurringEvent(w, psid, { userTokenStatus: 'REFRESHED' })
  const first = await sending
  t.equal(first.statusCode, 201, first.body)
  w.emulator.clearFaults()
  const rows = await recurringRows(w.db, w.pageId, psid)
  t.same(rows.map((r) => [r.token === old ? 'old' : r.token === fresh ? 'fresh' : '?', r.state]), [['old', 'available'], ['fresh', 'available']],
    'the held token was not replaced under its send')
  t.same(rows[1].next_send_at, rows[0].next_send_at, "the send's cooldown holds for the new token too")
  const second = await notify(w.app, { topic_id: w.topic.id, psid, message: text('Second') })
  t.equal(second.statusCode, 429, second.body)
  t.equal(w.emulator.inbox(w.pageId, psid).length, 1)
})
