import t from 'tap'
import { recipientKey } from '../../src/domain/broadcasts.js'
import { auth, uniquePageId } from '../helper.js'
import { world } from '../fixtures/otn.js'
import {
  accountedForOnce, broadcastEnv, NOWHERE, people, postBroadcast, readBroadcast, recurringFor, seeded, settled, sumOf, tokensFor, until, windowsFor,
} from '../fixtures/broadcasts.js'

const message = { text: 'The jacket you asked about is back in stock' }

t.test('1,000 people mixing tokens, open windows, no token and Meta faults: each accounted for exactly once', async (t) => {
  const w = await world(t, {
    // No hang among the faults below, so a long Graph timeout costs nothing; it keeps a busy
    // machine (on PGlite the in-process emulator waits behind the database on the one event loop)
    // from turning whole batches into lost answers, after which every refusal is unconfirmed.
    env: broadcastEnv({ BROADCAST_RATE_PER_SECOND: '400', BROADCAST_BATCH_SIZE: '100', BROADCAST_CONCURRENCY: '6', GRAPH_API_TIMEOUT_MS: '15000', TOKEN_LEASE_SECONDS: '31' }),
    emulator: { webhookUrl: NOWHERE, random: seeded(6) },
  })
  const tokenOnly = people(500, 'tok')
  const tokenAndWindow = people(150, 'both')
  const windowOnly = people(100, 'win')
  const nothing = people(150, 'none')
  const refused = people(50, 'bogus')
  const unavailable = people(50, 'gone')
  await tokensFor(w, [...tokenOnly, ...tokenAndWindow, ...unavailable])
  await tokensFor(w, refused, { token: (p) => `never-issued-${p}` })
  await windowsFor(w, [...tokenAndWindow, ...windowOnly])
  for (const p of unavailable) w.emulator.setPersonAvailable(w.pageId, p, false)
  const audience = [...tokenOnly, ...tokenAndWindow, ...windowOnly, ...nothing, ...refused, ...unavailable]
  t.equal(audience.length, 1000)
  // Temporary errors, bare 5xx, lost connections and Meta's own rate limit, drawn from a fixed seed.
  w.emulator.setFaults({ errorRate: 0.04, http5xxRate: 0.03, resetRate: 0.02 })

  const res = await postBroadcast(w.app, { topic_id: w.topic.id, message, psids: [...audience, ...audience.slice(0, 20)] })
  t.equal(res.statusCode, 202, res.body)
  const created = res.json()
  t.match(created, { topic_id: w.topic.id, page_id: w.pageId, state: 'running', audience: 'explicit', audience_estimate: 1000 })

  const b = await settled(w.app, created.id, ['completed'], 100_000)
  t.equal(b.progress.total, 1000, 'duplicates in the list are one person')
  t.ok(b.completed_at && b.started_at && b.planned_at)
  await accountedForOnce(t, w, b)

  const rows = await w.db.selectFrom('broadcast_recipients').select(['psid', 'outcome', 'error_code', 'retries', 'notification_id'])
    .where('broadcast_id', '=', b.id).execute()
  const outcome = new Map(rows.map((r) => [r.psid, r]))
  const count = (group: string[], pred: (o: { outcome: string | null, error_code: string | null }) => boolean) => group.filter((p) => pred(outcome.get(p)!)).length
  t.equal(count(nothing, (o) => o.outcome === 'no_token'), nothing.length, 'no token, no window: no_token, nothing sent')
  // A lost answer (a reset, or on a busy machine a timeout) makes any send ambiguous: `unconfirmed`,
  // never counted as sent, even when a later attempt is refused. Every other person ends as their
  // group says; how many are unconfirmed depends on the machine, so the counts only ask for some.
  const endsAs = (group: string[], expected: (o: { outcome: string | null, error_code: string | null }) => boolean) =>
    group.filter((p) => { const o = outcome.get(p)!; return o.outcome !== 'unconfirmed' && !expected(o) })
  t.same(endsAs(refused, (o) => o.outcome === 'no_token'), [], 'a refused token is invalid and, none being left, the person no_token')
  t.ok(count(refused, (o) => o.outcome === 'no_token') >= 10, 'refused people were told so')
  t.same(endsAs(unavailable, (o) => o.outcome === 'failed' && o.error_code === 'graph_person_unavailable'), [], 'failed counted by reason')
  t.ok(count(unavailable, (o) => o.error_code === 'graph_person_unavailable') >= 10, 'unavailable people were told so')
  t.same(endsAs(tokenOnly, (o) => o.outcome === 'sent_token'), [], 'token holders: sent with a token')
  t.ok(count(tokenOnly, (o) => o.outcome === 'sent_token') >= 250, 'token holders were sent to')
  t.same(endsAs([...tokenAndWindow, ...windowOnly], (o) => o.outcome === 'sent_window'), [], 'open window: standard message')
  t.ok(count([...tokenAndWindow, ...windowOnly], (o) => o.outcome === 'sent_window') >= 125, 'open windows were sent to')
  t.ok(rows.some((r) => r.retries > 0), 'some people were retried after Meta refused for a reason that spent nothing')
  t.equal(b.progress.failed.graph_person_unavailable ?? 0, count(unavailable, (o) => o.error_code === 'graph_person_unavailable'), 'progress counts failures by reason')

  // Retries used fresh keys; the recorded notification is the one under the final key.
  const sample = rows.find((r) => r.retries > 0 && r.notification_id !== null)!
  const n = await w.db.selectFrom('notifications').select(['idempotency_key']).where('id', '=', sample.notification_id!).executeTakeFirstOrThrow()
  t.equal(n.idempotency_key, recipientKey(b.id, sample.psid, sample.retries), 'the recorded notification is the last attempt\'s')

  const tokensLeft = await w.db.selectFrom('optin_tokens').select(['psid', 'state']).where('page_id', '=', w.pageId).execute()
  const stateOf = new Map(tokensLeft.map((x) => [x.psid, x.state]))
  t.equal(tokenAndWindow.filter((p) => outcome.get(p)!.outcome === 'sent_window' && stateOf.get(p) !== 'available').length, 0,
    'a standard message kept the token')
  t.equal(unavailable.filter((p) => outcome.get(p)!.outcome === 'failed' && stateOf.get(p) !== 'available').length, 0,
    'an unavailable person keeps the token')
})

t.test('topic audience: everyone holding a usable token when it starts, once each however many tokens', async (t) => {
  const w = await world(t, { env: broadcastEnv({ BROADCAST_BATCH_SIZE: '7' }), emulator: { webhookUrl: NOWHERE } })
  const holders = people(30, 'h')
  const inWindow = holders.slice(0, 5)
  await tokensFor(w, holders)
  await tokensFor(w, holders.slice(0, 10)) // a second token each: still one message
  await windowsFor(w, inWindow)
  const expiredOnly = people(3, 'x')
  await w.db.insertInto('optin_tokens').values(expiredOnly.map((psid) => ({
    page_id: w.pageId, psid, payload: w.topic.payload, token: `expired-${psid}`, opted_in_at: new Date(Date.now() - 400 * 86400_000), expires_at: new Date(Date.now() - 86400_000),
  }))).execute()

  const res = await postBroadcast(w.app, { topic_id: w.topic.id, message, notification_type: 'SILENT_PUSH' })
  t.equal(res.statusCode, 202, res.body)
  t.match(res.json(), { audience: 'topic', audience_estimate: 30, notification_type: 'SILENT_PUSH', use_window: true, state: 'running' })
  const b = await settled(w.app, res.json().id)
  t.match(b.progress, { total: 30, sent_window: 5, sent_token: 25, no_token: 0, unconfirmed: 0, cancelled: 0, remaining: 0, failed: {} })
  await accountedForOnce(t, w, b)
  const batches = await w.db.selectFrom('broadcast_recipients').select('batch').distinct().where('broadcast_id', '=', b.id).execute()
  t.equal(batches.length, 5, 'listed in pages of BROADCAST_BATCH_SIZE')
  t.ok(w.emulator.requests.every((r) => r.notificationType === 'SILENT_PUSH'))
  const used = await w.db.selectFrom('optin_tokens').select((eb) => eb.fn.countAll<string>().as('n'))
    .where('page_id', '=', w.pageId).where('state', '=', 'used').executeTakeFirstOrThrow()
  t.equal(Number(used.n), 25, 'one token spent per person reached by token')

  const forced = await postBroadcast(w.app, { topic_id: w.topic.id, message: { text: 'Second call' }, use_window: false })
  const second = await settled(w.app, forced.json().id)
  t.equal(second.progress.total, 10, 'the second broadcast reaches who still holds a token: the first ten people')
  t.equal(second.progress.sent_token, 10, 'use_window false: always a token')
  await accountedForOnce(t, w, second)
})

t.test('a scheduled broadcast waits for send_at, then runs', async (t) => {
  const w = await world(t, { env: broadcastEnv(), emulator: { webhookUrl: NOWHERE } })
  await tokensFor(w, people(5, 's'))
  const sendAt = new Date(Date.now() + 2500)
  const res = await postBroadcast(w.app, { topic_id: w.topic.id, message, send_at: sendAt.toISOString() })
  t.equal(res.statusCode, 202, res.body)
  t.match(res.json(), { state: 'scheduled', send_at: sendAt.toISOString(), started_at: null, audience_estimate: 5 })

  // One assertion for all the polls, so that the test's count does not depend on how many there were.
  let scheduledPolls = 0
  let sentWhileScheduled = 0
  const running = await until('the broadcast to start', async () => {
    const b = await readBroadcast(w.app, res.json().id)
    if (b.state !== 'scheduled') return b
    scheduledPolls++
    sentWhileScheduled = Math.max(sentWhileScheduled, w.emulator.requests.length)
    return undefined
  })
  t.ok(scheduledPolls > 0, 'seen scheduled before it ran')
  t.equal(sentWhileScheduled, 0, 'nothing sent while scheduled')
  t.ok(Date.parse(running.started_at) >= sendAt.getTime(), 'started at or after send_at')
  const b = await settled(w.app, running.id)
  t.equal(b.progress.sent_token, 5)
  t.ok(w.emulator.requests.every((r) => r.at >= sendAt.getTime()), 'no send before send_at')

  const listed = await w.app.inject({ method: 'GET', url: `/v1/broadcasts?topic_id=${w.topic.id}&state=completed`, headers: auth })
  t.same(listed.json().items.map((x: { id: string }) => x.id), [b.id])
})

t.test('cancel midway: nobody else is sent to, what was sent stays sent, no token stays held', async (t) => {
  const w = await world(t, { env: broadcastEnv({ BROADCAST_RATE_PER_SECOND: '25', BROADCAST_BATCH_SIZE: '20' }), emulator: { webhookUrl: NOWHERE } })
  await tokensFor(w, people(200, 'c'))
  const created = (await postBroadcast(w.app, { topic_id: w.topic.id, message })).json()
  await until('some sends', async () => (await readBroadcast(w.app, created.id)).progress.sent_token >= 10 ? true : undefined)

  const res = await w.app.inject({ method: 'POST', url: `/v1/broadcasts/${created.id}/cancel`, headers: auth })
  t.equal(res.statusCode, 200, res.body)
  t.match(res.json(), { id: created.id, state: 'cancelled' })
  t.type(res.json().cancelled_at, 'string')

  const b = await settled(w.app, created.id, ['cancelled'])
  t.ok(b.progress.sent_token >= 10 && b.progress.sent_token < 200, `sent ${b.progress.sent_token} before the cancel`)
  t.ok(b.progress.cancelled > 0)
  t.equal(b.progress.sent_token + b.progress.cancelled, 200)
  t.equal(b.completed_at, null)
  await accountedForOnce(t, w, b)
  const requests = w.emulator.requests.length
  t.equal(requests, b.progress.sent_token, 'one Graph request per person sent, none for the cancelled')
  const available = await w.db.selectFrom('optin_tokens').select((eb) => eb.fn.countAll<string>().as('n'))
    .where('page_id', '=', w.pageId).where('state', '=', 'available').executeTakeFirstOrThrow()
  t.equal(Number(available.n), b.progress.cancelled, 'the cancelled keep their tokens')

  const again = await w.app.inject({ method: 'POST', url: `/v1/broadcasts/${created.id}/cancel`, headers: auth })
  t.equal(again.statusCode, 200, 'cancelling twice is harmless')
  t.match(again.json().progress, b.progress)

  const done = (await postBroadcast(w.app, { topic_id: w.topic.id, message: { text: 'Another' }, psids: ['someone-else'] })).json()
  await settled(w.app, done.id)
  const late = await w.app.inject({ method: 'POST', url: `/v1/broadcasts/${done.id}/cancel`, headers: auth })
  t.equal(late.statusCode, 409)
  t.match(late.json(), { code: 'broadcast_completed', status: 409 })
  t.equal(late.headers['content-type'], 'application/problem+json; charset=utf-8')
})

t.test('cancelling a scheduled broadcast: it never starts', async (t) => {
  const w = await world(t, { env: broadcastEnv(), emulator: { webhookUrl: NOWHERE } })
  await tokensFor(w, people(3, 'k'))
  const created = (await postBroadcast(w.app, { topic_id: w.topic.id, message, send_at: new Date(Date.now() + 1000).toISOString() })).json()
  const res = await w.app.inject({ method: 'POST', url: `/v1/broadcasts/${created.id}/cancel`, headers: auth })
  t.match(res.json(), { state: 'cancelled', started_at: null, progress: { total: 0 } })
  // The plan job still fires at send_at; it must find the broadcast cancelled and send nothing.
  await until('the plan job to run', async () => {
    const job = await w.db.selectFrom('broadcasts').select('id').where('id', '=', created.id).executeTakeFirst()
    const jobs = await w.app.jobs.getQueueSize('broadcast-plan')
    return job && jobs === 0 ? true : undefined
  })
  t.equal(w.emulator.requests.length, 0)
  t.match(await readBroadcast(w.app, created.id), { state: 'cancelled', started_at: null })
})

t.test('Idempotency-Key is scoped to the Page: the same key for two Pages\' topics makes two broadcasts', async (t) => {
  const w = await world(t, { env: broadcastEnv(), emulator: { webhookUrl: NOWHERE } })
  const otherPageId = uniquePageId()
  await w.app.inject({ method: 'PUT', url: `/v1/pages/${otherPageId}`, headers: auth, payload: { name: 'Other', access_token: `EAA-${otherPageId}` } })
  const otherTopic = (await w.app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: otherPageId, name: `Other ${otherPageId}` } })).json()
  const later = new Date(Date.now() + 60_000).toISOString()
  const first = await postBroadcast(w.app, { topic_id: w.topic.id, message, psids: ['a1'], send_at: later }, 'spring-sale')
  const second = await postBroadcast(w.app, { topic_id: otherTopic.id, message, psids: ['b1'], send_at: later }, 'spring-sale')
  t.equal(first.statusCode, 202)
  t.equal(second.statusCode, 202, 'not a conflict: another Page')
  t.not(second.headers['idempotent-replayed'], 'true')
  t.not(second.json().id, first.json().id)
  t.equal(second.json().page_id, otherPageId)
  const replay = await postBroadcast(w.app, { topic_id: otherTopic.id, message, psids: ['b1'], send_at: later }, 'spring-sale')
  t.equal(replay.headers['idempotent-replayed'], 'true')
  t.equal(replay.json().id, second.json().id)
  const conflict = await postBroadcast(w.app, { topic_id: w.topic.id, message, psids: ['b1'], send_at: later }, 'spring-sale')
  t.equal(conflict.statusCode, 422, "the first Page's key keeps its first body")
})

t.test('validation, unknown ids, auth, Idempotency-Key, listing', async (t) => {
  const w = await world(t, { env: broadcastEnv(), emulator: { webhookUrl: NOWHERE } })
  const unknown = '00000000-0000-4000-8000-000000000000'
  const missing = await postBroadcast(w.app, { topic_id: unknown, message })
  t.equal(missing.statusCode, 404)
  t.match(missing.json(), { code: 'topic_not_found' })
  for (const body of [
    { topic_id: w.topic.id },
    { topic_id: w.topic.id, message: { text: '' } },
    { topic_id: w.topic.id, message, extra: 1 },
    { topic_id: w.topic.id, message, psids: [] },
    { topic_id: w.topic.id, message, psids: ['not a psid'] },
    { topic_id: w.topic.id, message, send_at: 'tomorrow' },
    { topic_id: w.topic.id, message, notification_type: 'LOUD' },
  ]) {
    const res = await postBroadcast(w.app, body)
    t.equal(res.statusCode, 400, JSON.stringify(body))
    t.equal(res.json().code, 'validation_failed')
  }
  const tooMany = await postBroadcast(w.app, { topic_id: w.topic.id, message, psids: Array.from({ length: 10_001 }, (_, i) => `p${i}`) })
  t.equal(tooMany.statusCode, 400, 'at most 10,000 explicit people')
  t.equal((await w.app.inject({ method: 'POST', url: '/v1/broadcasts', payload: { topic_id: w.topic.id, message } })).statusCode, 401)
  t.equal((await w.app.inject({ method: 'GET', url: `/v1/broadcasts/${unknown}`, headers: auth })).json().code, 'broadcast_not_found')
  t.equal((await w.app.inject({ method: 'POST', url: `/v1/broadcasts/${unknown}/cancel`, headers: auth })).statusCode, 404)
  t.equal((await w.app.inject({ method: 'GET', url: '/v1/broadcasts/not-a-uuid', headers: auth })).statusCode, 400)

  await w.app.inject({ method: 'PUT', url: `/v1/pages/${w.pageId}`, headers: auth, payload: { name: 'Shop' } })
  const page = await w.db.selectFrom('pages').select('access_token').where('id', '=', w.pageId).executeTakeFirstOrThrow()
  if (page.access_token === null) {
    const noToken = await postBroadcast(w.app, { topic_id: w.topic.id, message })
    t.equal(noToken.statusCode, 409)
    t.equal(noToken.json().code, 'page_without_access_token')
    await w.app.inject({ method: 'PUT', url: `/v1/pages/${w.pageId}`, headers: auth, payload: { name: 'Shop', access_token: w.accessToken } })
  }

  const body = { topic_id: w.topic.id, message, psids: ['a1', 'a2'], send_at: new Date(Date.now() + 60_000).toISOString() }
  const first = await postBroadcast(w.app, body, 'campaign-42')
  t.equal(first.statusCode, 202)
  const replay = await postBroadcast(w.app, { ...body, psids: ['a2', 'a1', 'a1'] }, 'campaign-42')
  t.equal(replay.statusCode, 202)
  t.equal(replay.headers['idempotent-replayed'], 'true')
  t.equal(replay.json().id, first.json().id, 'the same broadcast, not a second one')
  t.equal(replay.json().idempotency_key, 'campaign-42')
  const conflict = await postBroadcast(w.app, { ...body, message: { text: 'other' } }, 'campaign-42')
  t.equal(conflict.statusCode, 422)
  t.equal(conflict.json().code, 'idempotency_conflict')

  const other = (await postBroadcast(w.app, { ...body, psids: ['b1'] })).json()
  const third = (await postBroadcast(w.app, { ...body, psids: ['c1'] })).json()
  const page1 = await w.app.inject({ method: 'GET', url: `/v1/broadcasts?topic_id=${w.topic.id}&limit=2`, headers: auth })
  t.equal(page1.statusCode, 200)
  t.same(page1.json().items.map((x: { id: string }) => x.id), [first.json().id, other.id])
  t.match(page1.json().items[0], { state: 'scheduled', progress: { total: 2, remaining: 2 } })
  const page2 = await w.app.inject({ method: 'GET', url: `/v1/broadcasts?topic_id=${w.topic.id}&limit=2&cursor=${page1.json().next_cursor}`, headers: auth })
  t.same(page2.json().items.map((x: { id: string }) => x.id), [third.id])
  t.equal(page2.json().next_cursor, null)
  const scheduled = await w.app.inject({ method: 'GET', url: '/v1/broadcasts?state=scheduled&limit=200', headers: auth })
  t.ok(scheduled.json().items.every((x: { state: string }) => x.state === 'scheduled'))
  for (const id of [first.json().id, other.id, third.id]) {
    const c = await w.app.inject({ method: 'POST', url: `/v1/broadcasts/${id}/cancel`, headers: auth })
    t.match(c.json(), { state: 'cancelled', progress: { total: c.json().progress.cancelled, remaining: 0 } })
    t.equal(sumOf(c.json().progress), c.json().progress.total)
  }
})

t.test("a broadcast's messaging_type and tag label its window sends; its token sends keep UPDATE", async (t) => {
  const w = await world(t, { env: broadcastEnv(), emulator: { webhookUrl: NOWHERE } })
  const windowed = people(3, 'lw')
  const tokened = people(2, 'lt')
  await windowsFor(w, windowed)
  await tokensFor(w, tokened)
  const refused = await postBroadcast(w.app, { topic_id: w.topic.id, message, psids: [...windowed, ...tokened], messaging_type: 'MESSAGE_TAG' })
  t.equal(refused.statusCode, 400)
  t.match(refused.json(), { code: 'tag_required' })
  const res = await postBroadcast(w.app, { topic_id: w.topic.id, message, psids: [...windowed, ...tokened], messaging_type: 'MESSAGE_TAG', tag: 'ACCOUNT_UPDATE' })
  t.equal(res.statusCode, 202, res.body)
  t.match(res.json(), { messaging_type: 'MESSAGE_TAG', tag: 'ACCOUNT_UPDATE' })
  const b = await settled(w.app, res.json().id)
  t.equal(b.progress.sent_window, 3)
  t.equal(b.progress.sent_token, 2)
  const sent = w.emulator.requests.filter((r) => r.outcome === 'accepted')
  t.same(sent.filter((r) => r.recipient?.id).map((r) => [r.messagingType, r.tag]), Array(3).fill(['MESSAGE_TAG', 'ACCOUNT_UPDATE']))
  t.same(sent.filter((r) => r.recipient?.one_time_notif_token).map((r) => [r.messagingType, r.tag]), Array(2).fill(['UPDATE', undefined]))
})

t.test('audience filters: the estimate, then a broadcast that records it and plans exactly that audience, sending only with the kind asked', async (t) => {
  const w = await world(t, { env: broadcastEnv({ BROADCAST_BATCH_SIZE: '4' }), emulator: { webhookUrl: NOWHERE } })
  const oneTime = people(10, 'ot')
  const both = people(2, 'bo')
  const recurringOnly = people(4, 'rc')
  await tokensFor(w, [...oneTime, ...both])
  await recurringFor(w, [...both, ...recurringOnly])
  await windowsFor(w, oneTime.slice(1, 4))
  const audience = { token_kind: 'one_time_notif', exclude_psids: [oneTime[0]] }
  const body = { topic_id: w.topic.id, message: { text: 'One-time holders only' }, audience }

  const estimate = await w.app.inject({ method: 'POST', url: '/v1/broadcasts/estimate', headers: auth, payload: body })
  t.equal(estimate.statusCode, 200, estimate.body)
  t.same(estimate.json(), { audience: 11, by_route: { window: 3, recurring: 0, token: 8, without_token: 0 } },
    'ten one-time holders and two with both kinds, less one excluded; three of them in their window')
  t.equal(Number((await w.db.selectFrom('broadcasts').select((eb) => eb.fn.countAll<string>().as('n')).where('page_id', '=', w.pageId).executeTakeFirstOrThrow()).n), 0,
    'an estimate creates nothing')

  const res = await postBroadcast(w.app, body)
  t.equal(res.statusCode, 202, res.body)
  t.match(res.json(), { audience: 'topic', audience_estimate: 11, audience_filter: { token_kind: 'one_time_notif', exclude_psids: [oneTime[0]] } })
  const b = await settled(w.app, res.json().id)
  t.match(b, { audience_estimate: 11, audience_final: 11, audience_change: 0 }, 'nothing changed in between: the estimate is the planned audience')
  t.match(b.progress, { total: 11, sent_window: 3, sent_token: 8, sent_recurring: 0, no_token: 0 })
  await accountedForOnce(t, w, b)
  t.same([...recurringOnly, oneTime[0]].filter((p) => w.emulator.inbox(w.pageId, p).length > 0), [], 'the excluded and the recurring-only were not sent to')
  t.same(both.map((p) => w.emulator.inbox(w.pageId, p).map((m) => m.via)), [['one_time_notif_token'], ['one_time_notif_token']],
    'people holding both kinds were reached with their one-time token, as token_kind asked')
})

t.test('audience: bad input is refused with a stable code and creates nothing; the explicit list and idempotency', async (t) => {
  const w = await world(t, { env: broadcastEnv(), emulator: { webhookUrl: NOWHERE } })
  const holders = people(3, 'ex')
  await tokensFor(w, holders)
  const message = { text: 'Filtered' }
  const later = new Date(Date.now() + 60_000).toISOString()
  const unknownTopic = '00000000-0000-4000-8000-000000000000'
  const refusals: Array<[Record<string, unknown>, number, string]> = [
    [{ psids: holders, audience: { window: 'open' } }, 400, 'audience_with_psids'],
    [{ audience: { opted_in_after: '2026-11-02T00:00:00Z', opted_in_before: '2026-11-01T00:00:00Z' } }, 400, 'audience_range_empty'],
    [{ audience: { holds_topics: [w.topic.id], excludes_topics: [w.topic.id] } }, 400, 'audience_range_empty'],
    [{ audience: { holds_topics: [unknownTopic] } }, 422, 'audience_topic_not_found'],
    [{ audience: { window: 'ajar' } }, 400, 'validation_failed'],
    [{ audience: { token_kind: 'OTN' } }, 400, 'validation_failed'],
    [{ audience: { opted_in_after: 'last week' } }, 400, 'validation_failed'],
    [{ audience: { psids: [] } }, 400, 'validation_failed'],
    [{ audience: { holds_topics: ['not-a-uuid'] } }, 400, 'validation_failed'],
    [{ audience: { everyone: true } }, 400, 'validation_failed'],
  ]
  for (const [extra, status, code] of refusals) {
    for (const url of ['/v1/broadcasts', '/v1/broadcasts/estimate']) {
      const res = await w.app.inject({ method: 'POST', url, headers: auth, payload: { topic_id: w.topic.id, message, send_at: later, ...extra } })
      t.equal(res.statusCode, status, `${url} ${JSON.stringify(extra)}`)
      t.equal(res.json().code, code, `${url} ${JSON.stringify(extra)}: ${res.json().detail}`)
    }
  }
  const otherPage = uniquePageId()
  await w.app.inject({ method: 'PUT', url: `/v1/pages/${otherPage}`, headers: auth, payload: { name: 'Other', access_token: `EAA-${otherPage}` } })
  const foreign = (await w.app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: otherPage, name: `Foreign ${otherPage}` } })).json()
  const crossPage = await postBroadcast(w.app, { topic_id: w.topic.id, message, send_at: later, audience: { excludes_topics: [foreign.id] } })
  t.equal(crossPage.json().code, 'audience_topic_not_found', "another Page's topic is not one of this Page's")
  t.equal(Number((await w.db.selectFrom('broadcasts').select((eb) => eb.fn.countAll<string>().as('n')).where('page_id', '=', w.pageId).executeTakeFirstOrThrow()).n), 0,
    'nothing was created by a refused request')
  const missing = await w.app.inject({ method: 'POST', url: '/v1/broadcasts/estimate', headers: auth, payload: { topic_id: unknownTopic, message } })
  t.equal(missing.statusCode, 404)
  t.equal(missing.json().code, 'topic_not_found')

  const explicit = await w.app.inject({ method: 'POST', url: '/v1/broadcasts/estimate', headers: auth, payload: { topic_id: w.topic.id, message, psids: [...holders, 'nobody1', 'nobody1'] } })
  t.same(explicit.json(), { audience: 4, by_route: { window: 0, recurring: 0, token: 3, without_token: 1 } }, 'an explicit list: as given, duplicates once')

  const filtered = { topic_id: w.topic.id, message, send_at: later, audience: { window: 'closed', psids: [holders[1], holders[0]] } }
  const first = await postBroadcast(w.app, filtered, 'filtered-1')
  t.equal(first.statusCode, 202, first.body)
  t.match(first.json(), { audience_estimate: 2, audience_final: null, audience_change: null, audience_filter: { window: 'closed', psids: [holders[0], holders[1]].sort() } })
  const replay = await postBroadcast(w.app, { ...filtered, audience: { psids: [holders[0], holders[1], holders[0]], window: 'closed', token_kind: 'any' } }, 'filtered-1')
  t.equal(replay.headers['idempotent-replayed'], 'true', 'the same filter in another order is the same request')
  t.equal(replay.json().id, first.json().id)
  const conflict = await postBroadcast(w.app, { ...filtered, audience: { window: 'open' } }, 'filtered-1')
  t.equal(conflict.statusCode, 422)
  t.equal(conflict.json().code, 'idempotency_conflict')
  await w.app.inject({ method: 'POST', url: `/v1/broadcasts/${first.json().id}/cancel`, headers: auth })
})
