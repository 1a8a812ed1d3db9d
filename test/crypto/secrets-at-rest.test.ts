import t, { type Test } from 'tap'
import { sql } from 'kysely'
import { newEncryptionKey } from '../../src/crypto/secret-box.js'
import { rotateKeys } from '../../src/domain/key-rotation.js'
import { auth, build, LogCapture, TEST_ENCRYPTION_KEYS, uniquePageId } from '../helper.js'
import { dump } from '../fixtures/dump.js'
import { graphEnv, newPsid, notify, openWindow, world, type World } from '../fixtures/otn.js'
import { optIn } from '../fixtures/consent.js'
import { eventsEnv, startReceiver, until, type Receiver } from '../fixtures/event-receiver.js'

// Issue 31, first slice: Page access tokens and event signing secrets are encrypted at rest
// (docs/SECURITY.md). Every app of this file shares one database; the keyring is the process's, set
// by the newest app built, so each test builds the app with the keys it means.

/** The value in clear, its base64, base64url or hex: none may be in a dump. */
const clearForms = (value: string): string[] => [value, Buffer.from(value).toString('base64'), Buffer.from(value).toString('base64url'), Buffer.from(value).toString('hex')]
const holds = (text: string, value: string): boolean => clearForms(value).some((form) => text.includes(form))

async function subscribe (w: Pick<World, 'app'>, receiver: Receiver) {
  const res = await w.app.inject({ method: 'POST', url: '/v1/event-subscriptions', headers: auth, payload: { url: receiver.url, events: ['*'] } })
  if (res.statusCode !== 201) throw new Error(res.body)
  return res.json() as { id: string, secret: string }
}

/** A ping through the subscription, verified by standardwebhooks with `secret`. */
async function pingVerifies (t: Test, w: Pick<World, 'app'>, receiver: Receiver, id: string, secret: string) {
  const before = receiver.received.length
  const res = await w.app.inject({ method: 'POST', url: `/v1/event-subscriptions/${id}/test`, headers: auth })
  t.equal(res.statusCode, 202, res.body)
  const got = await until('the ping', () => receiver.received.slice(before).find((r) => r.json.type === 'ping'))
  t.ok(receiver.verify(got, secret), 'the ping verifies with the subscription\'s secret')
}

/** A notification through the Page: sent, and the emulator (which knows the Page by its token) saw it as that Page's. */
async function sendWorks (t: Test, w: World) {
  const psid = newPsid()
  await optIn(w, psid)
  const res = await notify(w.app, { topic_id: w.topic.id, psid, message: { text: 'back in stock' } })
  t.equal(res.statusCode, 201, res.body)
  t.equal(res.json().status, 'sent', 'sent with the clear access token')
  t.equal(w.emulator.requests.at(-1)?.pageId, w.pageId, 'the emulator received the Page\'s own access token')
}

async function eventWorld (t: Test, env: Record<string, string> = {}) {
  const w = await world(t, { env: { ...eventsEnv, ...env } })
  await sql`delete from event_subscriptions`.execute(w.db)
  await w.app.maintenance()
  return w
}

t.test('a dump of a database that served a Page and an event subscription holds neither the access token nor the signing secret', async (t) => {
  const w = await eventWorld(t)
  const receiver = await startReceiver(t)
  const sub = await subscribe(w, receiver)
  await sendWorks(t, w)
  await pingVerifies(t, w, receiver, sub.id, sub.secret)
  const text = await dump()
  t.ok(text.includes(w.pageId), 'the dump does hold the Page')
  t.notOk(holds(text, w.accessToken), 'no access token, in clear or base64')
  t.notOk(holds(text, sub.secret) || holds(text, sub.secret.replace(/^whsec_/, '')), 'no signing secret, in clear or base64')
  const page = await w.db.selectFrom('pages').select('access_token').where('id', '=', w.pageId).executeTakeFirstOrThrow()
  t.match(page.access_token, /^enc:v1:test-key:/, 'stored under the configured key')
  const row = await w.db.selectFrom('event_subscriptions').select('secret').where('id', '=', sub.id).executeTakeFirstOrThrow()
  t.match(row.secret, /^enc:v1:test-key:/)
  const listed = await w.app.inject({ url: `/v1/pages/${w.pageId}`, headers: auth })
  t.notMatch(listed.body, /enc:v1|EAApage/, 'the API shows neither form')
})

t.test('a Page token and a subscription secret stored in plaintext before are read, then encrypted by rotation', async (t) => {
  const w = await eventWorld(t)
  const receiver = await startReceiver(t)
  const secret = `whsec_${Buffer.alloc(32, 7).toString('base64')}`
  await sql`update pages set access_token = ${w.accessToken} where id = ${w.pageId}`.execute(w.db)
  const { rows: [legacy] } = await sql<{ id: string }>`
    insert into event_subscriptions (url, events, secret, previous_secret, previous_secret_expires_at)
    values (${receiver.url}, ${['*']}, ${secret}, ${'whsec_' + Buffer.alloc(32, 8).toString('base64')}, now() + interval '1 hour') returning id::text`.execute(w.db)
  await sendWorks(t, w)
  await pingVerifies(t, w, receiver, legacy.id, secret)
  t.ok(holds(await dump(), w.accessToken), 'the legacy value is in the dump before rotation')
  const counts = await rotateKeys(w.db, { batch: 1 })
  t.ok(counts.pages >= 1, 'the Page re-encrypted')
  t.equal(counts.event_subscriptions, 1)
  t.same(await rotateKeys(w.db), { pages: 0, event_subscriptions: 0 }, 'a second run has nothing left to do')
  const text = await dump()
  t.notOk(holds(text, w.accessToken), 'no access token in the dump after rotation')
  t.notOk(holds(text, secret), 'no signing secret either')
  const row = await sql<{ secret: string, previous_secret: string }>`select secret, previous_secret from event_subscriptions where id = ${legacy.id}::uuid`.execute(w.db)
  t.match(row.rows[0], { secret: /^enc:v1:test-key:/, previous_secret: /^enc:v1:test-key:/ })
  await sendWorks(t, w)
  await pingVerifies(t, w, receiver, legacy.id, secret)
})

t.test('after rotating to a new first key and removing the old one, every Page still sends and every subscription still signs', async (t) => {
  const w = await eventWorld(t)
  const receiver = await startReceiver(t)
  const sub = await subscribe(w, receiver)
  const rotatedSub = await w.app.inject({ method: 'POST', url: `/v1/event-subscriptions/${sub.id}/rotate-secret`, headers: auth })
  t.equal(rotatedSub.statusCode, 200, rotatedSub.body)
  const secret = (rotatedSub.json() as { secret: string }).secret
  const newKeys = newEncryptionKey('next')
  // Both keys, the new one first: the maintenance task re-encrypts everything under it.
  const both = await build(t, graphEnv(w.base, { ...eventsEnv, ENCRYPTION_KEYS: `${newKeys},${TEST_ENCRYPTION_KEYS}` }))
  await both.ready()
  await both.maintenance()
  const { rows } = await sql<{ n: number }>`
    select (select count(*) from pages where access_token is not null and access_token not like 'enc:v1:next:%')::int
         + (select count(*) from event_subscriptions where secret not like 'enc:v1:next:%' or previous_secret not like 'enc:v1:next:%')::int as n`.execute(w.db)
  t.equal(rows[0].n, 0, 'nothing is left under the old key, in any Page of the database')
  // Only the new key: the old one is removed.
  const only = await build(t, graphEnv(w.base, { ...eventsEnv, ENCRYPTION_KEYS: newKeys }))
  await sendWorks(t, { ...w, app: only })
  await pingVerifies(t, { app: only }, receiver, sub.id, secret)
})

t.test('a tampered ciphertext fails closed: nothing is sent or signed with it, and the error names the key id, not the value', async (t) => {
  const log = new LogCapture()
  const w = await world(t, { env: { ...eventsEnv, LOG_LEVEL: 'info' }, deps: { logStream: log } })
  await sql`delete from event_subscriptions`.execute(w.db)
  await w.app.maintenance()
  const receiver = await startReceiver(t)
  const sub = await subscribe(w, receiver)
  const flip = (stored: string) => {
    const [prefix, body] = [stored.slice(0, stored.lastIndexOf(':') + 1), stored.slice(stored.lastIndexOf(':') + 1)]
    const bytes = Buffer.from(body, 'base64url')
    bytes[bytes.length - 1] ^= 1
    return prefix + bytes.toString('base64url')
  }
  const row = await w.db.selectFrom('event_subscriptions').select('secret').where('id', '=', sub.id).executeTakeFirstOrThrow()
  await w.db.updateTable('event_subscriptions').set({ secret: flip(row.secret) }).where('id', '=', sub.id).execute()
  const ping = await w.app.inject({ method: 'POST', url: `/v1/event-subscriptions/${sub.id}/test`, headers: auth })
  t.equal(ping.statusCode, 202)
  const failed = await until('a failed attempt', async () => {
    const res = await w.app.inject({ url: `/v1/event-subscriptions/${sub.id}/deliveries`, headers: auth })
    return (res.json() as { items: Array<{ last_error: string | null }> }).items.find((d) => d.last_error)
  })
  t.match(failed.last_error, /not sent: a value of event_subscriptions\.secret under key id "test-key" fails authentication/)
  t.equal(receiver.received.length, 0, 'nothing reached the receiver')

  const page = await w.db.selectFrom('pages').select('access_token').where('id', '=', w.pageId).executeTakeFirstOrThrow()
  await w.db.updateTable('pages').set({ access_token: flip(page.access_token!) }).where('id', '=', w.pageId).execute()
  // Another Page, healthy, sending at the same moment (the sends' statements are batched together).
  const otherId = uniquePageId()
  const other: World = { ...w, pageId: otherId, accessToken: `EAApage-token-${otherId}` }
  w.emulator.addPage({ id: otherId, accessToken: other.accessToken })
  t.equal((await w.app.inject({ method: 'PUT', url: `/v1/pages/${otherId}`, headers: auth, payload: { name: 'Other', access_token: other.accessToken } })).statusCode, 201)
  const topic = await w.app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: otherId, name: `Restock ${otherId}` } })
  other.topic = topic.json()
  const [psid, otherPsid] = [newPsid(), newPsid()]
  await optIn(w, psid)
  await optIn(other, otherPsid)
  const sentBefore = w.emulator.requests.length
  const [res, fine] = await Promise.all([
    notify(w.app, { topic_id: w.topic.id, psid, message: { text: 'back in stock' } }),
    notify(w.app, { topic_id: other.topic.id, psid: otherPsid, message: { text: 'back in stock' } }),
  ])
  t.equal(res.statusCode, 500)
  t.match(res.json(), { code: 'page_token_unreadable', detail: /key id "test-key" fails authentication/ })
  t.notOk(holds(res.body, w.accessToken), 'the answer holds no token')
  t.equal(fine.json().status, 'sent', 'the other Page\'s send is not affected')
  const { rows: [n] } = await sql<{ status: string, code: string }>`select status, error->>'code' as code from notifications where page_id = ${w.pageId} and psid = ${psid}`.execute(w.db)
  t.same(n, { status: 'failed', code: 'page_token_unreadable' }, 'recorded failed, not left pending')
  const { rows: kept } = await sql<{ state: string, notification_id: string | null }>`select state, notification_id from optin_tokens where page_id = ${w.pageId} and psid = ${psid}`.execute(w.db)
  t.same(kept, [{ state: 'available', notification_id: null }], 'the opt-in token is kept, not held and not spent')
  const asker = newPsid()
  await openWindow(w, asker)
  const asked = await w.app.inject({ method: 'POST', url: `/v1/topics/${w.topic.id}/optin-requests`, headers: auth, payload: { psid: asker } })
  t.equal(asked.statusCode, 500)
  t.equal(asked.json().code, 'page_token_unreadable', 'an opt-in request is refused the same way')
  const { rows: [reserved] } = await sql<{ n: number }>`select count(*)::int as n from optin_requests where page_id = ${w.pageId} and psid = ${asker}`.execute(w.db)
  t.equal(reserved.n, 0, 'before anything is reserved: the next request is not throttled')
  t.same(w.emulator.requests.slice(sentBefore).map((r) => r.pageId), [otherId], 'Meta received the other Page\'s send only: nothing for the tampered Page')
  t.match(log.text, /pages\.access_token under key id \\?"test-key\\?" fails authentication/)
  t.notOk(holds(log.text, w.accessToken), 'the token is in no log line')
})
