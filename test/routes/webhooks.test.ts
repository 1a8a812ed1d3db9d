import t, { type Test } from 'tap'
import { readFileSync } from 'node:fs'
import pg from 'pg'
import { Kysely, PostgresDialect, sql } from 'kysely'
import { PGliteDialect, SessionLock } from '../../src/db/pglite-dialect.js'
import { PGlite } from '@electric-sql/pglite'
import type { DB } from '../../src/db/types.js'
import type { Database } from '../../src/db/database.js'
import { OTN_TOKEN_LIFETIME_MS } from '../../src/domain/window.js'
import { keyedDigest, openBytes } from '../../src/crypto/secret-box.js'
import { auth, build, databaseKind, LogCapture, testDatabase, uniquePageId } from '../helper.js'
import {
  APP_SECRET, deliveryEvent, entry, envelope, messageEvent, notificationMessagesOptinEvent, optinEvent,
  pluginOptinEvent, postbackEvent, reactionEvent, readEvent, referralEvent, sign, signedPost, uniquePsid,
  uniqueToken, VERIFY_TOKEN, webhookEnv,
} from '../fixtures/webhooks.js'
import { inClear, isToken } from '../fixtures/tokens.js'

const HOUR = 3_600_000

async function db (): Promise<Database> {
  return (await testDatabase()).db
}

async function tokenRows (pageId: string) {
  return inClear(await (await db()).selectFrom('optin_tokens').selectAll().where('page_id', '=', pageId).execute()).sort((a, b) => a.token < b.token ? -1 : a.token > b.token ? 1 : 0)
}

async function subscriber (pageId: string, psid: string) {
  return (await db()).selectFrom('subscribers').selectAll().where('page_id', '=', pageId).where('psid', '=', psid).executeTakeFirst()
}

async function storedEvents (): Promise<number> {
  const { n } = await (await db()).selectFrom('webhook_events').select((eb) => eb.fn.countAll<string>().as('n')).executeTakeFirstOrThrow()
  return Number(n)
}

async function tokenCount (): Promise<number> {
  const { n } = await (await db()).selectFrom('optin_tokens').select((eb) => eb.fn.countAll<string>().as('n')).executeTakeFirstOrThrow()
  return Number(n)
}

t.test('verification handshake', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, { ...webhookEnv, LOG_LEVEL: 'info' }, { logStream: logs })
  const ok = await app.inject({ method: 'GET', url: '/webhooks/messenger', query: { 'hub.mode': 'subscribe', 'hub.verify_token': VERIFY_TOKEN, 'hub.challenge': '1158201444' } })
  t.equal(ok.statusCode, 200)
  t.equal(ok.body, '1158201444', 'the bare challenge')
  t.match(ok.headers['content-type'], /^text\/plain/)

  const refused: Array<Record<string, string>> = [
    { 'hub.mode': 'subscribe', 'hub.verify_token': 'wrong', 'hub.challenge': '1' },
    { 'hub.mode': 'unsubscribe', 'hub.verify_token': VERIFY_TOKEN, 'hub.challenge': '1' },
    { 'hub.mode': 'subscribe', 'hub.challenge': '1' },
    { 'hub.mode': 'subscribe', 'hub.verify_token': VERIFY_TOKEN },
  ]
  for (const query of refused) {
    const res = await app.inject({ method: 'GET', url: '/webhooks/messenger', query })
    t.equal(res.statusCode, 403, JSON.stringify(Object.keys(query)))
    t.match(res.json(), { status: 403, code: 'verification_failed', type: String, title: 'Forbidden', detail: String })
    t.match(res.headers['content-type'], /^application\/problem\+json/)
  }
  t.notOk(logs.text.includes(VERIFY_TOKEN), 'the verify token is not logged')

  const unset = await build(t, { META_APP_SECRET: APP_SECRET })
  const res = await unset.inject({ method: 'GET', url: '/webhooks/messenger', query: { 'hub.mode': 'subscribe', 'hub.verify_token': 'x', 'hub.challenge': '1' } })
  t.equal(res.statusCode, 403)
  t.match(res.json().detail, /META_VERIFY_TOKEN/)
})

t.test('without META_APP_SECRET deliveries are refused with 503 and nothing is stored', async (t) => {
  const app = await build(t, { META_VERIFY_TOKEN: VERIFY_TOKEN })
  const before = await storedEvents()
  const res = await signedPost(app, envelope([messageEvent({ pageId: uniquePageId(), psid: uniquePsid() })]))
  t.equal(res.statusCode, 503)
  t.match(res.json(), { status: 503, code: 'webhook_not_configured' })
  t.equal(await storedEvents(), before)
})

t.test('every event kind in one signed batch: tokens, interactions, and the rest only in the raw log', async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  const [opter, writer, echoed, poster, reactor, referred, reader, delivered, recurring, standby] = Array.from({ length: 10 }, uniquePsid)
  const t0 = Date.now() - 2 * HOUR
  const token = uniqueToken()
  const body = envelope([
    entry(pageId, [optinEvent({ pageId, psid: opter, payload: 'deals', token, timestamp: t0 })]),
    entry(pageId, [messageEvent({ pageId, psid: writer, timestamp: t0 + 1000 })]),
    entry(pageId, [messageEvent({ pageId, psid: echoed, timestamp: t0 + 2000, isEcho: true })]),
    entry(pageId, [postbackEvent({ pageId, psid: poster, timestamp: t0 + 3000 })]),
    entry(pageId, [reactionEvent({ pageId, psid: reactor, timestamp: t0 + 4000 })]),
    entry(pageId, [referralEvent({ pageId, psid: referred, timestamp: t0 + 5000 })]),
    entry(pageId, [readEvent({ pageId, psid: reader, timestamp: t0 + 6000 })]),
    entry(pageId, [deliveryEvent({ pageId, psid: delivered, timestamp: t0 + 7000 })]),
    entry(pageId, [notificationMessagesOptinEvent({ pageId, psid: recurring, timestamp: t0 + 8000 })]),
    entry(pageId, [pluginOptinEvent({ pageId, timestamp: t0 + 9000 })]),
    entry(pageId, [messageEvent({ pageId, psid: standby, timestamp: t0 + 10_000 })], { field: 'standby' }),
    entry(pageId, [{ sender: { id: writer }, recipient: { id: pageId }, timestamp: t0, some_future_event: { x: 1 } }]),
  ])
  const raw = JSON.stringify(body)
  const res = await signedPost(app, raw)
  t.equal(res.statusCode, 200)
  const receipt = res.json()
  t.match(receipt, { event_id: String, object: 'page', tokens_recorded: 2, interactions: 5, ignored_events: 5 })

  const row = (await tokenRows(pageId)).find((r) => r.kind === 'one_time_notif')
  t.match(row, {
    kind: 'one_time_notif', page_id: pageId, psid: opter, payload: 'deals', token, state: 'available',
    webhook_event_id: receipt.event_id, notification_id: null, lease_expires_at: null,
  })
  t.equal(row!.opted_in_at.getTime(), t0, 'opted in at the event time')
  t.equal(row!.expires_at.getTime(), t0 + OTN_TOKEN_LIFETIME_MS, 'expires a year later')
  t.match((await tokenRows(pageId)).map((r) => [r.kind, r.psid]).sort(), [['notification_messages', recurring], ['one_time_notif', opter]])

  const optedIn = await subscriber(pageId, opter)
  t.equal(optedIn?.first_seen_at.getTime(), t0)
  t.equal(optedIn?.last_interaction_at, null, 'an opt-in alone does not open the window')
  for (const [psid, at] of [[writer, t0 + 1000], [poster, t0 + 3000], [reactor, t0 + 4000], [referred, t0 + 5000], [standby, t0 + 10_000]] as const) {
    t.equal((await subscriber(pageId, psid))?.last_interaction_at?.getTime(), at, `interaction of ${psid}`)
  }
  for (const psid of [echoed, reader, delivered]) t.notOk(await subscriber(pageId, psid), 'not an interaction')
  t.equal((await subscriber(pageId, recurring))?.last_interaction_at, null, 'a recurring opt-in alone does not open the window')
  t.notOk(await subscriber(pageId, pageId), 'an echo does not make the Page a subscriber')

  const stored = await (await db()).selectFrom('webhook_events').selectAll().where('id', '=', receipt.event_id).executeTakeFirstOrThrow()
  t.ok(openBytes('webhook_events.body', stored.body).equals(Buffer.from(raw)), 'the raw body is stored byte for byte')
  t.equal(stored.signature, sign(raw))
  t.equal(stored.object, 'page')
})

t.test('a many-entry batch records every token, and a body as Meta formats it is stored byte-exact', async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  const at = Date.now() - HOUR
  const events = Array.from({ length: 300 }, (_, i) => optinEvent({ pageId, psid: `p${i % 50}`, payload: `topic-${i % 3}`, token: uniqueToken(), timestamp: at + i }))
  // Pretty-printed, non-ASCII, with a trailing newline: whatever bytes were signed are kept.
  const raw = Buffer.from(`${JSON.stringify({ object: 'page', entry: [entry(pageId, events.slice(0, 150)), entry(pageId, events.slice(150), { field: 'standby' })], note: 'café ✨' }, null, 2)}\n`)
  const res = await signedPost(app, raw)
  t.equal(res.statusCode, 200)
  t.equal(res.json().tokens_recorded, 300)
  const rows = await tokenRows(pageId)
  t.equal(rows.length, 300)
  t.same(new Set(rows.map((r) => r.token)), new Set(events.map((e) => (e.optin as { one_time_notif_token: string }).one_time_notif_token)))
  const { n } = await (await db()).selectFrom('subscribers').select((eb) => eb.fn.countAll<string>().as('n')).where('page_id', '=', pageId).executeTakeFirstOrThrow()
  t.equal(Number(n), 50, 'one subscriber row per person')
  const stored = await (await db()).selectFrom('webhook_events').select('body').where('id', '=', res.json().event_id).executeTakeFirstOrThrow()
  t.ok(openBytes('webhook_events.body', stored.body).equals(raw))
})

t.test('duplicates: the same POST twice, the same token in another POST, twice in one body: one token', async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  const psid = uniquePsid()
  const token = uniqueToken()
  const at = Date.now() - HOUR
  const body = envelope([optinEvent({ pageId, psid, payload: 'deals', token, timestamp: at })])
  const before = await storedEvents()
  const first = await signedPost(app, body)
  const again = await signedPost(app, body)
  t.match(first.json(), { duplicate: false, tokens_recorded: 1 })
  t.match(again.json(), { duplicate: true, event_id: first.json().event_id, tokens_recorded: 0, tokens_already_held: 1 }, 'a re-delivery adds nothing')
  t.equal(await storedEvents(), before + 1, 'the same bytes are stored once')

  const other = envelope([
    optinEvent({ pageId, psid, payload: 'deals', token, timestamp: at + 5000 }),
    optinEvent({ pageId, psid, payload: 'deals', token, timestamp: at + 6000 }),
    messageEvent({ pageId, psid, timestamp: at + 7000 }),
  ])
  t.equal((await signedPost(app, other)).json().tokens_recorded, 0)
  const rows = await tokenRows(pageId)
  t.equal(rows.length, 1)
  t.equal(rows[0].opted_in_at.getTime(), at, 'the first recording stands')
  t.equal(rows[0].webhook_event_id, first.json().event_id)

  const twiceInOne = uniqueToken()
  const res = await signedPost(app, envelope([
    optinEvent({ pageId, psid, payload: 'deals', token: twiceInOne, timestamp: at + 9000 }),
    optinEvent({ pageId, psid, payload: 'deals', token: twiceInOne, timestamp: at + 8000 }),
  ]))
  t.equal(res.json().tokens_recorded, 1)
  const row = (await tokenRows(pageId)).find((r) => r.token === twiceInOne)
  t.equal(row?.opted_in_at.getTime(), at + 8000, 'the earlier opt-in time of the two')
})

t.test('concurrent re-deliveries of one batch and overlapping batches record each token once', async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  const at = Date.now() - HOUR
  const people = Array.from({ length: 10 }, uniquePsid)
  const events = people.flatMap((psid, i) => [
    optinEvent({ pageId, psid, payload: 'deals', token: uniqueToken(), timestamp: at + i }),
    messageEvent({ pageId, psid, timestamp: at + 1000 + i }),
  ])
  const raw = JSON.stringify(envelope(events))
  const before = await storedEvents()
  const results = await Promise.all(Array.from({ length: 12 }, () => signedPost(app, raw)))
  t.same(results.map((r) => r.statusCode), Array(12).fill(200))
  t.equal(results.reduce((sum, r) => sum + r.json().tokens_recorded, 0), 10, 'ten tokens recorded once between them')
  t.equal((await tokenRows(pageId)).length, 10)
  t.equal(await storedEvents(), before + 1, 'the delivery is stored once')
  t.equal(new Set(results.map((r) => r.json().event_id)).size, 1, 'every answer names the stored delivery')
  t.equal(results.filter((r) => !r.json().duplicate).length, 1, 'one stored it; the others are duplicates')

  // The same people in opposite orders at once: rows are written in key order, so no deadlock.
  const more = people.map((psid, i) => optinEvent({ pageId, psid, payload: 'deals', token: uniqueToken(), timestamp: at + 2000 + i }))
  const forward = envelope([...more, ...people.map((psid) => messageEvent({ pageId, psid, timestamp: at + 3000 }))])
  const backward = envelope([...more].reverse().concat(people.map((psid) => postbackEvent({ pageId, psid, timestamp: at + 4000 })).reverse()))
  const crossed = await Promise.all(Array.from({ length: 8 }, (_, i) => signedPost(app, i % 2 ? forward : backward)))
  t.same(crossed.map((r) => r.statusCode), Array(8).fill(200))
  t.equal((await tokenRows(pageId)).length, 20)
  for (const psid of people) t.equal((await subscriber(pageId, psid))?.last_interaction_at?.getTime(), at + 4000)
})

t.test('a replayed 5 MB delivery is stored once, answered 200 each time with the first event (#24.6)', async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  const psid = uniquePsid()
  const token = uniqueToken()
  // A real opt-in padded with echo events to just under WEBHOOK_BODY_LIMIT_BYTES.
  const filler = Array.from({ length: 1000 }, () => messageEvent({ pageId, psid, isEcho: true, text: 'x'.repeat(4800) }))
  const raw = JSON.stringify(envelope([entry(pageId, [optinEvent({ pageId, psid, payload: 'deals', token }), ...filler])]))
  t.ok(raw.length > 4_500_000 && raw.length < 5_242_880, `${raw.length} bytes`)
  const before = await storedEvents()
  const answers = []
  for (let i = 0; i < 4; i++) answers.push(await signedPost(app, raw))
  t.same(answers.map((a) => a.statusCode), [200, 200, 200, 200])
  const first = answers[0].json()
  t.match(first, { duplicate: false, tokens_recorded: 1, ignored_events: 1000 })
  for (const again of answers.slice(1)) {
    t.match(again.json(), { duplicate: true, event_id: first.event_id, tokens_recorded: 0, tokens_already_held: 1 })
  }
  t.equal(await storedEvents(), before + 1, 'one webhook_events row, not four')
  const { rows } = await sql<{ n: number }>`select count(*)::int as n from webhook_events where digest = ${keyedDigest('webhook_body', Buffer.from(raw))} and id = ${first.event_id}`.execute(await db())
  t.same(rows, [{ n: 1 }], 'the stored row carries the keyed digest of its body')

  // One byte different is another delivery.
  const other = await signedPost(app, `${raw} `)
  t.match(other.json(), { duplicate: false, tokens_recorded: 0, tokens_already_held: 1 })
  t.not(other.json().event_id, first.event_id)
})

t.test('out-of-order deliveries leave the latest interaction and the earliest first sight', async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  const psid = uniquePsid()
  const at = Date.now() - 3 * HOUR
  await signedPost(app, envelope([messageEvent({ pageId, psid, timestamp: at + 2 * HOUR })]))
  await signedPost(app, envelope([postbackEvent({ pageId, psid, timestamp: at + HOUR })]))
  await signedPost(app, envelope([optinEvent({ pageId, psid, payload: 'x', token: uniqueToken(), timestamp: at })]))
  const row = await subscriber(pageId, psid)
  t.equal(row?.last_interaction_at?.getTime(), at + 2 * HOUR, 'never moved backwards')
  t.equal(row?.first_seen_at.getTime(), at)

  // A timestamp ahead of the database clock is held at now: skew must not stretch the window.
  const future = Date.now() + 10 * HOUR
  await signedPost(app, envelope([messageEvent({ pageId, psid, timestamp: future })]))
  const skewed = await subscriber(pageId, psid)
  t.ok(skewed!.last_interaction_at!.getTime() <= Date.now() + 1000, 'held at the time of receipt')
  t.ok(skewed!.last_interaction_at!.getTime() > at + 2 * HOUR)
})

t.test('an opt-in for an unknown Page and topic is kept and shows up once both exist', async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  const psid = uniquePsid()
  const token = uniqueToken()
  const at = Date.now() - HOUR
  const res = await signedPost(app, envelope([optinEvent({ pageId, psid, payload: 'back-in-stock', token, timestamp: at })]))
  t.equal(res.statusCode, 200)
  t.equal(res.json().tokens_recorded, 1)

  const url = `/v1/pages/${pageId}/subscribers/${psid}`
  t.equal((await app.inject({ method: 'GET', url, headers: auth })).json().code, 'page_not_found')
  await app.inject({ method: 'PUT', url: `/v1/pages/${pageId}`, headers: auth, payload: { name: 'Late Page' } })
  const unmatched = (await app.inject({ method: 'GET', url, headers: auth })).json()
  t.same(unmatched.topics, [])
  t.match(unmatched.unmatched_tokens, [{ payload: 'back-in-stock', opted_in_at: new Date(at).toISOString() }])
  t.notOk(JSON.stringify(unmatched).includes(token))

  const topic = (await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Restock', payload: 'back-in-stock' } })).json()
  const counted = (await app.inject({ method: 'GET', url: `/v1/topics/${topic.id}`, headers: auth })).json()
  t.same(counted.counts, { usable_tokens: 1, subscribers: 1, expiring_soon: 0, recurring: { active: 0, stopped: 0 } })
  const matched = (await app.inject({ method: 'GET', url, headers: auth })).json()
  t.match(matched.topics, [{ topic_id: topic.id, name: 'Restock', payload: 'back-in-stock', usable_tokens: 1 }])
  t.same(matched.unmatched_tokens, [])
})

t.test('an opt-in older than a year is stored expired and never counts', async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  const psid = uniquePsid()
  await app.inject({ method: 'PUT', url: `/v1/pages/${pageId}`, headers: auth, payload: { name: 'P' } })
  const topic = (await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Old', payload: 'old' } })).json()
  const at = Date.now() - OTN_TOKEN_LIFETIME_MS - HOUR
  const res = await signedPost(app, envelope([optinEvent({ pageId, psid, payload: 'old', token: uniqueToken(), timestamp: at })]))
  t.match(res.json(), { tokens_received: 1, tokens_recorded: 0, tokens_unusable: 1, tokens_already_held: 0, reasons: { token_expired: 1 } },
    'the receipt does not count an expired token as recorded, and says why')
  const [row] = await tokenRows(pageId)
  t.equal(row.state, 'expired')
  t.equal(row!.expires_at.getTime(), at + OTN_TOKEN_LIFETIME_MS)
  t.equal((await app.inject({ method: 'GET', url: `/v1/topics/${topic.id}`, headers: auth })).json().counts.usable_tokens, 0)
  const view = (await app.inject({ method: 'GET', url: `/v1/pages/${pageId}/subscribers/${psid}`, headers: auth })).json()
  t.same(view.topics, [])
  t.same(view.unmatched_tokens, [])
})

t.test('bad, missing and mismatched signatures are 401 and store nothing', async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  const body = JSON.stringify(envelope([optinEvent({ pageId, psid: uniquePsid(), payload: 'p', token: uniqueToken() })]))
  const before = await storedEvents()
  const post = (headers: Record<string, string>, payload: string = body) =>
    app.inject({ method: 'POST', url: '/webhooks/messenger', headers: { 'content-type': 'application/json', ...headers }, payload })
  const cases: Array<[string, Record<string, string>, string?]> = [
    ['missing', {}],
    ['wrong secret', { 'x-hub-signature-256': sign(body, 'another-secret') }],
    ['sha1 only', { 'x-hub-signature': 'sha1=0000000000000000000000000000000000000000' }],
    ['not hex', { 'x-hub-signature-256': `sha256=${'z'.repeat(64)}` }],
    ['truncated', { 'x-hub-signature-256': sign(body).slice(0, 40) }],
    ['bare hex', { 'x-hub-signature-256': sign(body).slice('sha256='.length) }],
    ['one space more than was signed', { 'x-hub-signature-256': sign(body) }, body.replace('{"object"', '{ "object"')],
    ['signed bytes, then re-serialised', { 'x-hub-signature-256': sign(JSON.stringify(JSON.parse(body), null, 1)) }],
  ]
  for (const [name, headers, payload] of cases) {
    const res = await post(headers, payload)
    t.equal(res.statusCode, 401, name)
    t.match(res.json(), { status: 401, code: 'invalid_signature', title: 'Unauthorized' }, name)
  }
  t.equal(await storedEvents(), before, 'nothing stored')
  t.same(await tokenRows(pageId), [])
})

t.test('a correctly signed body that is not JSON or not the envelope is 400, stored nowhere', async (t) => {
  const app = await build(t, webhookEnv)
  const before = await storedEvents()
  for (const raw of ['{"object":"page","entry":[', '', 'null', '[]', '"page"', '{"object":"page"}',
    '{"object":"page","entry":{}}', '{"object":7,"entry":[]}', '{"object":"","entry":[]}']) {
    const res = await signedPost(app, raw)
    t.equal(res.statusCode, 400, JSON.stringify(raw))
    t.match(res.json(), { status: 400, code: 'invalid_webhook_body' })
  }
  t.equal(await storedEvents(), before)
})

t.test('a body over WEBHOOK_BODY_LIMIT_BYTES is 413, signed or not', async (t) => {
  const app = await build(t, { ...webhookEnv, WEBHOOK_BODY_LIMIT_BYTES: '2048' })
  const pageId = uniquePageId()
  const before = await storedEvents()
  const big = JSON.stringify(envelope(Array.from({ length: 20 }, () => optinEvent({ pageId, psid: uniquePsid(), payload: 'p', token: uniqueToken() }))))
  t.ok(big.length > 2048)
  const res = await signedPost(app, big)
  t.equal(res.statusCode, 413)
  t.match(res.json(), { status: 413, code: 'body_too_large' })
  t.equal(await storedEvents(), before)
  // Larger than /v1's BODY_LIMIT_BYTES but within the webhook's own limit is fine.
  const roomy = await build(t, { ...webhookEnv, BODY_LIMIT_BYTES: '1024', WEBHOOK_BODY_LIMIT_BYTES: '65536' })
  t.equal((await signedPost(roomy, big)).statusCode, 200)
})

t.test('another object, another content type: stored raw, acknowledged, otherwise ignored', async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  const psid = uniquePsid()
  const raw = JSON.stringify(envelope([entry(pageId, [optinEvent({ pageId, psid, payload: 'p', token: uniqueToken() }), messageEvent({ pageId, psid })])], 'instagram'))
  const res = await signedPost(app, raw)
  t.equal(res.statusCode, 200)
  t.match(res.json(), { object: 'instagram', tokens_recorded: 0, interactions: 0 })
  const stored = await (await db()).selectFrom('webhook_events').selectAll().where('id', '=', res.json().event_id).executeTakeFirstOrThrow()
  t.equal(stored.object, 'instagram')
  t.ok(openBytes('webhook_events.body', stored.body).equals(Buffer.from(raw)))
  t.same(await tokenRows(pageId), [])
  t.notOk(await subscriber(pageId, psid))

  const odd = JSON.stringify(envelope([messageEvent({ pageId, psid })]))
  const plain = await signedPost(app, odd, APP_SECRET, { 'content-type': 'text/plain' })
  t.equal(plain.statusCode, 200, 'the signature decides, not the content type')
  t.ok(await subscriber(pageId, psid))
})

t.test('logs name the delivery but never a token, the signature or the secret', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, { ...webhookEnv, LOG_LEVEL: 'info' }, { logStream: logs })
  const pageId = uniquePageId()
  const token = uniqueToken()
  const raw = JSON.stringify(envelope([optinEvent({ pageId, psid: uniquePsid(), payload: 'p', token })]))
  const signature = sign(raw)
  t.equal((await signedPost(app, raw)).statusCode, 200)
  await signedPost(app, raw, 'wrong-secret')
  await signedPost(app, `${raw.slice(0, -1)}, "oops": ${token}}`)
  const recorded = logs.lines.find((l) => l.msg === 'webhook recorded') as { webhook?: Record<string, unknown> } | undefined
  t.match(recorded?.webhook, { tokens_recorded: 1, tokens_received: 1 })
  t.ok(logs.lines.some((l) => l.msg === 'webhook refused: bad or missing signature'))
  for (const secret of [token, signature.slice('sha256='.length), APP_SECRET]) t.notOk(logs.text.includes(secret))
})

/** A database the app can be built on (migrated), then taken away: closed (PGlite) or unreachable (Postgres). */
async function databaseThatGoesDown (t: Test): Promise<{ db: Database, goDown: () => Promise<void> }> {
  if (databaseKind === 'pglite') {
    const pglite = await PGlite.create('memory://', { parsers: { 20: (value: string) => value } })
    t.teardown(async () => { if (!pglite.closed) await pglite.close() })
    return { db: new Kysely<DB>({ dialect: new PGliteDialect(pglite, new SessionLock()) }), goDown: () => pglite.close() }
  }
  const { url } = await testDatabase()
  const up = new pg.Pool({ connectionString: url, max: 2 })
  const down = new pg.Pool({ host: '127.0.0.1', port: 1, user: 'postgres', database: 'none', connectionTimeoutMillis: 2000 })
  let current = up
  const pool = { connect: () => current.connect(), end: async () => { await up.end(); await down.end() } }
  const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) })
  t.teardown(() => db.destroy())
  return { db, goDown: async () => { current = down } }
}

t.test('database down: 503 so that Meta retries', async (t) => {
  const { db: doomed, goDown } = await databaseThatGoesDown(t)
  const app = await build(t, webhookEnv, { db: doomed, dbKind: databaseKind })
  const pageId = uniquePageId()
  const body = envelope([optinEvent({ pageId, psid: uniquePsid(), payload: 'p', token: uniqueToken() })])
  t.equal((await signedPost(app, body)).statusCode, 200, 'works while the database is up')
  await goDown()
  const res = await signedPost(app, body)
  t.equal(res.statusCode, 503)
  t.match(res.headers['content-type'], /^application\/problem\+json/)
  t.match(res.json(), { status: 503, code: 'database_unavailable', title: 'Service Unavailable', type: String, detail: String })
  t.equal(res.headers['retry-after'], '5')
})

t.test('a failure part-way leaves nothing half-written', async (t) => {
  const app = await build(t, webhookEnv)
  const database = await db()
  await sql`create or replace function fail_on_boom() returns trigger language plpgsql as $$
    begin if new.psid = 'boom' then raise exception 'subscriber write failed'; end if; return new; end $$`.execute(database)
  await sql`create trigger subscribers_boom before insert on subscribers for each row execute function fail_on_boom()`.execute(database)
  t.teardown(async () => { await sql`drop trigger subscribers_boom on subscribers`.execute(database) })
  const pageId = uniquePageId()
  const before = await storedEvents()
  const tokensBefore = await tokenCount()
  const res = await signedPost(app, envelope([
    optinEvent({ pageId, psid: 'alice', payload: 'p', token: uniqueToken() }),
    messageEvent({ pageId, psid: 'boom' }),
  ]))
  t.equal(res.statusCode, 500, 'a 5xx: Meta retries the delivery')
  t.match(res.json(), { code: 'internal_error' })
  t.notOk(res.body.includes('subscriber write failed'), 'the cause is not leaked')
  t.equal(await storedEvents(), before, 'no raw event')
  t.equal(await tokenCount(), tokensBefore, 'no token')
  t.notOk(await subscriber(pageId, 'alice'), 'no subscriber')
})

t.test('Meta stamps in seconds and as strings: an opt-in so stamped is usable, and a referral so stamped opens the window', async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  const [bySeconds, byString, byEntry, referred] = Array.from({ length: 4 }, uniquePsid)
  const [t1, t2, t3] = [uniqueToken(), uniqueToken(), uniqueToken()]
  const nowS = Math.floor(Date.now() / 1000)
  const body = envelope([
    entry(pageId, [optinEvent({ pageId, psid: bySeconds, payload: 'deals', token: t1, timestamp: nowS - 3600 })]),
    entry(pageId, [{ ...optinEvent({ pageId, psid: byString, payload: 'deals', token: t2 }), timestamp: String(nowS - 1800) }]),
    // No time of its own: the entry's, which Meta's test button writes in seconds.
    { id: pageId, time: nowS - 600, messaging: [{ ...optinEvent({ pageId, psid: byEntry, payload: 'deals', token: t3 }), timestamp: undefined }] },
    // The shape of courier's referral_seconds.json, stamped now.
    { id: pageId, time: Date.now(), messaging: [{ referral: { ref: 'referral id', source: 'SHORTLINK', type: 'OPEN_THREAD' }, recipient: { id: pageId }, sender: { id: referred }, timestamp: nowS - 60 }] },
  ])
  const res = await signedPost(app, body)
  t.equal(res.statusCode, 200)
  t.match(res.json(), { tokens_received: 3, tokens_recorded: 3, tokens_unusable: 0, interactions: 1, restamped_events: 1, reasons: {} })
  const rows = await tokenRows(pageId)
  const at = Object.fromEntries(rows.map((r) => [r.token, [r.state, r.opted_in_at.getTime(), r.expires_at.getTime()]]))
  t.same(at[t1], ['available', (nowS - 3600) * 1000, (nowS - 3600) * 1000 + OTN_TOKEN_LIFETIME_MS], 'seconds are read as seconds, not 1970')
  t.same(at[t2], ['available', (nowS - 1800) * 1000, (nowS - 1800) * 1000 + OTN_TOKEN_LIFETIME_MS], 'a numeric string is read')
  t.same(at[t3], ['available', (nowS - 600) * 1000, (nowS - 600) * 1000 + OTN_TOKEN_LIFETIME_MS], "the entry's time stands in")
  await app.inject({ method: 'PUT', url: `/v1/pages/${pageId}`, headers: auth, payload: { name: 'P' } })
  t.equal((await subscriber(pageId, referred))?.last_interaction_at?.getTime(), (nowS - 60) * 1000)
  const view = await app.inject({ method: 'GET', url: `/v1/pages/${pageId}/subscribers/${referred}`, headers: auth })
  t.match(view.json(), { window: { open: true } }, 'the referral opened the 24-hour window')
})

t.test('one bad event among good ones: the good ones are recorded, the bad one counted with its reason, the delivery kept whole', async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  const psid = uniquePsid()
  const good = uniqueToken()
  const at = Date.now() - HOUR
  const raw = JSON.stringify(envelope([
    entry(pageId, [optinEvent({ pageId, psid, payload: 'deals', token: good, timestamp: at })]),
    entry(pageId, [optinEvent({ pageId, psid, payload: 'deals', token: 'x'.repeat(3000), timestamp: at })]),
    entry(pageId, [optinEvent({ pageId, psid: 'p'.repeat(5000), payload: 'deals', token: uniqueToken(), timestamp: at })]),
    entry(pageId, [optinEvent({ pageId, psid, payload: 'deals', token: uniqueToken(), timestamp: 253402300800000 })]),
    { time: at, messaging: [messageEvent({ pageId, psid, timestamp: at })].map(({ recipient: _r, ...e }) => e) },
  ]))
  const res = await signedPost(app, raw)
  t.equal(res.statusCode, 200)
  t.match(res.json(), {
    tokens_received: 2, tokens_recorded: 2, rejected_events: 2, ignored_events: 1, restamped_events: 1,
    reasons: { invalid_token: 1, invalid_psid: 1, page_unknown: 1 },
  })
  const rows = await tokenRows(pageId)
  t.equal(rows.length, 2)
  t.ok(rows.some((r) => r.token === good && r.opted_in_at.getTime() === at))
  t.ok(rows.every((r) => r.opted_in_at.getTime() <= Date.now()), 'a time in the year 10000 falls back to the receipt time')
  const stored = await (await db()).selectFrom('webhook_events').select('body').where('id', '=', res.json().event_id).executeTakeFirstOrThrow()
  t.equal(openBytes('webhook_events.body', stored.body).toString(), raw, 'the whole delivery is in the raw log')
})

t.test("real bodies from Meta's docs and open-source clients: each is answered 200 and stored raw (test/fixtures/meta)", async (t) => {
  const app = await build(t, webhookEnv)
  const dir = new URL('../fixtures/meta/webhooks/', import.meta.url)
  const { readdirSync } = await import('node:fs')
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.json'))) {
    const raw = readFileSync(new URL(file, dir))
    const res = await signedPost(app, raw)
    if (file === 'meta-docs-postbacks-field-value-string-timestamp.json') {
      t.equal(res.statusCode, 400, `${file}: a field/value sample is not a delivery`)
      continue
    }
    t.equal(res.statusCode, 200, file)
    const stored = await (await db()).selectFrom('webhook_events').select('body').where('id', '=', res.json().event_id).executeTakeFirst()
    t.ok(stored && openBytes('webhook_events.body', stored.body).equals(raw), `${file}: stored byte for byte`)
  }
})

t.test("a business adopts its existing opt-ins: a topic with a JSON payload takes the tokens vlab's opt-in carries", async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  const psid = '00000000-0000-4000-8000-000000000001'
  const payload = '{ "ref": "908088b3-5e9e-4b53-b746-799ac51bc758"}'
  await app.inject({ method: 'PUT', url: `/v1/pages/${pageId}`, headers: auth, payload: { name: 'P' } })
  const topic = await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Survey', payload } })
  t.equal(topic.statusCode, 201, topic.body)
  // vlab's opt-in (test/fixtures/meta/webhooks/vlab-otn-optin-json-string-payload.json), for this Page and stamped an hour ago.
  const { readFileSync } = await import('node:fs')
  const body = JSON.parse(readFileSync(new URL('../fixtures/meta/webhooks/vlab-otn-optin-json-string-payload.json', import.meta.url), 'utf8'))
  const event = body.entry[0].messaging[0]
  event.recipient.id = pageId
  event.timestamp = Date.now() - HOUR
  event.optin.one_time_notif_token = uniqueToken()
  const res = await signedPost(app, body)
  t.match(res.json(), { object: 'page', tokens_recorded: 1 })
  const got = (await app.inject({ method: 'GET', url: `/v1/topics/${topic.json().id}`, headers: auth })).json()
  t.equal(got.counts.usable_tokens, 1)
  const view = (await app.inject({ method: 'GET', url: `/v1/pages/${pageId}/subscribers/${psid}`, headers: auth })).json()
  t.equal(view.topics[0]?.topic_id, topic.json().id)
})

t.test('against the emulator playing Meta with times in ms, seconds, strings and none, and no recipient: every opt-in usable, every window open', async (t) => {
  const { createEmulator } = await import('../../src/emulator/emulator.js')
  const app = await build(t, { ...webhookEnv, GRAPH_API_BASE_URL: 'http://127.0.0.1:9' })
  const address = await app.listen({ host: '127.0.0.1', port: 0 })
  const emulator = createEmulator({ appSecret: APP_SECRET, webhookUrl: `${address}/webhooks/messenger`, webhookStamps: 'mixed', omitRecipient: true })
  await emulator.listen(0)
  t.teardown(() => emulator.close())
  const pageId = uniquePageId()
  emulator.addPage({ id: pageId, accessToken: `EAA-${pageId}` })
  await app.inject({ method: 'PUT', url: `/v1/pages/${pageId}`, headers: auth, payload: { name: 'P', access_token: `EAA-${pageId}` } })
  const topic = (await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Mixed' } })).json()
  const people = Array.from({ length: 4 }, uniquePsid)
  const started = Date.now()
  for (const psid of people) {
    t.equal((await emulator.personWrites(pageId, psid, 'hello')).status, 200)
    t.equal((await emulator.clickNotifyMe(pageId, psid, { payload: topic.payload })).status, 200)
  }
  const bodies = emulator.webhooks.map((w) => JSON.parse(w.body).entry[0].messaging[0])
  t.same(bodies.map((e) => typeof e.timestamp), ['number', 'number', 'string', 'undefined', 'number', 'number', 'string', 'undefined'], 'the cycle went round twice')
  t.ok(bodies.every((e) => e.recipient === undefined), 'no event named its recipient')

  const got = (await app.inject({ method: 'GET', url: `/v1/topics/${topic.id}`, headers: auth })).json()
  t.equal(got.counts.usable_tokens, 4, 'every opt-in recorded usable')
  for (const psid of people) {
    const s = await subscriber(pageId, psid)
    t.ok(s?.last_interaction_at && s.last_interaction_at.getTime() >= started - 1000, `${psid}: the window opened now, not in 1970`)
    const [row] = (await tokenRows(pageId)).filter((r) => r.psid === psid)
    t.ok(row.opted_in_at.getTime() >= started - 1000 && row.state === 'available', `${psid}: opted in now`)
  }
})

/**
 * A recurring fixture in Meta's shape (test/fixtures/meta/webhooks/recurring, sources in
 * SOURCES.md) with its placeholders filled for this test: ids, payload, token and time.
 */
function recurringFixture (name: string, fill: { pageId: string, psid: string, payload: string, token: string, at: number, entryTime?: number }): string {
  const body = JSON.parse(readFileSync(new URL(`../fixtures/meta/webhooks/recurring/${name}`, import.meta.url), 'utf8'))
  const entry = body.entry[0]
  entry.id = fill.pageId
  entry.time = fill.entryTime ?? fill.at
  const event = entry.messaging[0]
  event.sender.id = fill.psid
  event.recipient.id = fill.pageId
  event.timestamp = fill.at
  event.optin.payload = fill.payload
  event.optin.notification_messages_token = fill.token
  return JSON.stringify(body)
}

t.test("recurring opt-ins in Meta's shapes: stop, resume and refresh apply in event-time order; duplicates and late deliveries change nothing", async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  const psid = uniquePsid()
  const payload = 'weekly-deals'
  const [a, b, c] = [uniqueToken(), uniqueToken(), uniqueToken()]
  const t0 = Date.now() - 10 * 60_000
  const post = async (name: string, token: string, at: number, entryTime?: number) => {
    const res = await signedPost(app, recurringFixture(name, { pageId, psid, payload, token, at, entryTime }))
    t.equal(res.statusCode, 200, res.body)
    return res.json()
  }
  const row = async (token: string) => (await db()).selectFrom('optin_tokens').selectAll().where('page_id', '=', pageId).where(isToken(token)).executeTakeFirstOrThrow()

  // Meta's Marketing Messages FAQ opt-in: no frequency, no expiry.
  const first = await post('meta-docs-mm-faq-optin-no-frequency.json', a, t0)
  t.match(first, { tokens_received: 1, tokens_recorded: 1, recurring_stops: 0 })
  t.match(await row(a), {
    kind: 'notification_messages', psid, payload, state: 'available', stopped_at: null, frequency: null, timezone: 'UTC',
    user_token_status: 'NOT_REFRESHED', title: '<TITLE-FOR-THE-NOTIFICATION>', notification_id: null,
  })
  t.equal((await row(a)).expires_at.toISOString(), '9999-12-31T00:00:00.000Z', 'no expiry')
  t.equal((await row(a)).opted_in_at.getTime(), t0)

  const stop = await post('meta-docs-optin-stop-space-filled.json', a, t0 + 1000)
  t.match(stop, { tokens_received: 0, tokens_recorded: 0, recurring_stops: 1 })
  t.equal((await row(a)).stopped_at?.getTime(), t0 + 1000, '"STOP NOTIFICATIONS" (with a space) stops it')
  await post('meta-docs-mm-faq-optin-no-frequency.json', a, t0, t0 + 5) // the opt-in again, in other bytes
  t.equal((await row(a)).stopped_at?.getTime(), t0 + 1000, 'a late opt-in does not undo a later stop')

  const resume = await post('meta-docs-optin-resume-space-filled.json', a, t0 + 3000)
  t.match(resume, { recurring_resumes: 1 })
  t.equal((await row(a)).stopped_at, null, 'resumed')
  await post('meta-docs-optin-stop-space-filled.json', a, t0 + 2000)
  t.equal((await row(a)).stopped_at, null, 'a stop older than the resume, delivered late, changes nothing')
  t.equal((await row(a)).opted_in_at.getTime(), t0, 'the opt-in time stays the first')

  // Meta's re-opt-in: a new token replaces the old one and inherits its pacing.
  const sentAt = new Date(t0 + 3500)
  const nextAt = new Date(t0 + 48 * 3_600_000)
  await (await db()).updateTable('optin_tokens').set({ last_sent_at: sentAt, next_send_at: nextAt }).where('page_id', '=', pageId).where(isToken(a)).execute()
  const refreshed = await post('meta-docs-optin-refreshed-filled.json', b, t0 + 4000)
  t.match(refreshed, { tokens_received: 1, tokens_recorded: 1 })
  t.match(await row(a), { state: 'replaced' })
  t.match(await row(b), { state: 'available', user_token_status: 'REFRESHED', frequency: 'WEEKLY' })
  t.equal((await row(b)).expires_at.getTime(), 2145916800000, "Meta's token_expiry_timestamp")
  t.same([(await row(b)).last_sent_at, (await row(b)).next_send_at], [sentAt, nextAt], 'the cooldown carries over to the new token')

  // An older token delivered after the refresh arrives already replaced.
  await post('meta-docs-mm-faq-optin-no-frequency.json', c, t0 - 10_000)
  t.match(await row(c), { state: 'replaced' })
  t.match(await row(b), { state: 'available' })

  // The same bytes again: a duplicate, nothing changes.
  const raw = recurringFixture('meta-docs-optin-stop-space-filled.json', { pageId, psid, payload, token: b, at: t0 + 5000 })
  t.equal((await signedPost(app, raw)).json().duplicate, false)
  t.equal((await row(b)).stopped_at?.getTime(), t0 + 5000)
  t.equal((await signedPost(app, raw)).json().duplicate, true)
  t.equal((await row(b)).stopped_at?.getTime(), t0 + 5000)
})
