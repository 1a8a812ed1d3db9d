import t, { type Test } from 'tap'
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { sql } from 'kysely'
import { keyedDigest, newEncryptionKey, openSecret } from '../../src/crypto/secret-box.js'
import { rotateKeys } from '../../src/domain/key-rotation.js'
import { maskToken } from '../../src/domain/window.js'
import { auth, build, LogCapture, TEST_ENCRYPTION_KEYS, testDatabase, uniquePageId } from '../helper.js'
import { dump } from '../fixtures/dump.js'
import { APP_SECRET, graphEnv, newPsid, notify, openWindow, recurringEvent, world, type World } from '../fixtures/otn.js'
import { envelope, optinEvent, signedPost } from '../fixtures/webhooks.js'
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
  t.same(await rotateKeys(w.db), { pages: 0, event_subscriptions: 0, optin_tokens: 0, webhook_events: 0 }, 'a second run has nothing left to do')
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

// ---- Issue 31: raw webhook bodies (webhook_events.body) sealed, deduplicated by a keyed digest, found
// for erasure by `mentions`. Imported here, not at the top, so that these blocks stay together.
const { readFileSync } = await import('node:fs')
const { Keyring, openBytes, parseEncryptionKeys } = await import('../../src/crypto/secret-box.js')
const { messageEvent, sign, uniqueToken } = await import('../fixtures/webhooks.js')

const ring = (...keys: string[]) => new Keyring(keys.flatMap((k) => parseEncryptionKeys(k).keys))
/** No maintenance run but the one at start-up (awaited by the tests), so nothing rotates behind a test's back. */
const QUIET = { MAINTENANCE_INTERVAL_SECONDS: '86400' }
const bodyWorld = async (t: Test) => {
  const w = await world(t, { env: QUIET })
  await w.app.maintenance()
  return w
}
/** A Meta-shaped fixture (test/fixtures/meta/webhooks, sources in SOURCES.md) as text. */
const metaFixture = (file: string): string => readFileSync(new URL(`../fixtures/meta/webhooks/${file}`, import.meta.url), 'utf8')
/** Meta's echo of a Page's template message, in standby (meta-docs-echo-standby-template.json): the person is the recipient. */
const echoBody = (pageId: string, psid: string): string => metaFixture('meta-docs-echo-standby-template.json').replaceAll('<PAGE_ID>', pageId).replaceAll('<PSID>', psid)
/** vlab's one-time opt-in (vlab-otn-optin-json-string-payload.json), for this Page and person. */
function vlabOptin (pageId: string, psid: string, token: string): string {
  const body = JSON.parse(metaFixture('vlab-otn-optin-json-string-payload.json'))
  body.entry[0].id = pageId
  Object.assign(body.entry[0].messaging[0], { sender: { id: psid }, recipient: { id: pageId }, timestamp: Date.now() - 60_000 })
  body.entry[0].messaging[0].optin.one_time_notif_token = token
  return JSON.stringify(body)
}
async function post (t: Test, app: World['app'], raw: string) {
  const res = await signedPost(app, raw, APP_SECRET)
  t.equal(res.statusCode, 200, res.body)
  return res.json() as { event_id: string, duplicate: boolean, tokens_recorded: number }
}
/** A row as the build before this change stored it: the body in clear, its unkeyed SHA-256, no mentions. */
async function legacyBody (w: World, raw: string): Promise<string> {
  const bytes = Buffer.from(raw)
  const { rows: [row] } = await sql<{ id: string }>`
    insert into webhook_events (page_id, signature, object, body, digest)
    values (${w.pageId}, ${sign(bytes, APP_SECRET)}, 'page', ${bytes}, sha256(${bytes})) returning id::text as id`.execute(w.db)
  return row.id
}
const storedBody = async (w: World, id: string) =>
  (await sql<{ body: Buffer, digest: Buffer | null, mentions: unknown }>`select body, digest, mentions from webhook_events where id = ${id}::bigint`.execute(w.db)).rows[0]
const rowsOf = async (w: World) =>
  (await sql<{ n: number }>`select count(*)::int as n from webhook_events where page_id = ${w.pageId}`.execute(w.db)).rows[0].n
/**
 * Earlier tests of this file rotated to keys they then dropped, or tampered with a value: those Pages
 * lose their token, those subscriptions get a plaintext secret and those bodies are deleted, so that
 * a rotation reads everything.
 */
async function forgetUnreadable (w: World): Promise<void> {
  const test = ring(TEST_ENCRYPTION_KEYS)
  const unreadable = (column: 'pages.access_token' | 'event_subscriptions.secret', value: string | null): boolean => {
    try {
      if (value !== null) test.open(column, value)
      return false
    } catch {
      return true
    }
  }
  const pages = await sql<{ id: string, access_token: string | null }>`select id, access_token from pages`.execute(w.db)
  const lost = pages.rows.filter((p) => unreadable('pages.access_token', p.access_token)).map((p) => p.id)
  if (lost.length > 0) await sql`update pages set access_token = null where id = any(${lost}::text[])`.execute(w.db)
  const subs = await sql<{ id: string, secret: string, previous_secret: string | null }>`select id::text as id, secret, previous_secret from event_subscriptions`.execute(w.db)
  const reset = subs.rows.filter((r) => unreadable('event_subscriptions.secret', r.secret) || unreadable('event_subscriptions.secret', r.previous_secret)).map((r) => r.id)
  if (reset.length > 0) await sql`update event_subscriptions set secret = 'whsec_forgotten', previous_secret = null where id::text = any(${reset}::text[])`.execute(w.db)
  const bodies = await sql<{ id: string, body: Uint8Array }>`select id::text as id, body from webhook_events where length(body) > 0`.execute(w.db)
  const gone = bodies.rows.filter((r) => {
    try {
      test.openBytes('webhook_events.body', r.body)
      return false
    } catch {
      return true
    }
  }).map((r) => r.id)
  if (gone.length > 0) await sql`delete from webhook_events where id::text = any(${gone}::text[])`.execute(w.db)
  const tokens = await sql<{ page_id: string, id: string, token: string }>`select page_id, id::text as id, token from optin_tokens`.execute(w.db)
  const lostTokens = tokens.rows.filter((r) => { try { test.open('optin_tokens.token', r.token); return false } catch { return true } })
  for (const x of lostTokens) await sql`delete from optin_tokens where page_id = ${x.page_id} and id::text = ${x.id}`.execute(w.db)
}
const messageBody = (pageId: string, psid: string, text: string): string => JSON.stringify(envelope([messageEvent({ pageId, psid, text })]))

t.test('raw webhook bodies are stored sealed: a dump of webhook_events holds neither the PSIDs nor the tokens they carry', async (t) => {
  const w = await bodyWorld(t)
  const [psid, other, echoed] = [newPsid(), newPsid(), newPsid()]
  const { token, body, res } = await optIn(w, psid)
  t.equal(res.json().tokens_recorded, 1)
  const recurring = await recurringEvent(w, psid, { frequency: 'WEEKLY' })
  const vlabToken = uniqueToken()
  const vlab = await post(t, w.app, vlabOptin(w.pageId, other, vlabToken))
  t.equal(vlab.tokens_recorded, 1, 'vlab\'s opt-in is recorded')
  await post(t, w.app, echoBody(w.pageId, echoed))

  const text = await dump({ table: 'webhook_events' })
  t.ok(text.includes(w.pageId), 'the dump does hold the rows (their Page)')
  for (const [what, value] of [['a PSID', psid], ['another PSID', other], ['an echo\'s recipient', echoed], ['a one-time token', token], ['a recurring token', recurring], ['vlab\'s token', vlabToken]]) {
    t.notOk(holds(text, value), `no ${what}, in clear, base64 or hex`)
  }
  const stored = await storedBody(w, res.json().event_id)
  t.equal(Buffer.from(stored.body).subarray(0, 16).toString(), 'enc:v1:test-key:', 'sealed under the configured key')
  t.equal(openBytes('webhook_events.body', stored.body).toString(), body, 'and opened byte for byte')
  t.notOk(Buffer.from(stored.digest!).equals(ring().digest('webhook_body', body)), 'its digest is keyed, not the SHA-256 anyone can compute from a guessed body')
  t.ok(Buffer.from(stored.digest!).equals(ring(TEST_ENCRYPTION_KEYS).digest('webhook_body', body)), 'the HMAC under the configured key')
})

t.test('a re-delivery is a duplicate: under the current key, under an older key after a new one comes first, and for a body stored in clear before', async (t) => {
  const w = await bodyWorld(t)
  const psid = newPsid()
  const first = await optIn(w, psid)
  t.match(first.res.json(), { duplicate: false, tokens_recorded: 1 })
  t.match(await post(t, w.app, first.body), { duplicate: true, event_id: first.res.json().event_id, tokens_recorded: 0 }, 'the same key: a duplicate')

  // A new key first, the test key second; the body is still under the test key (rotation has not reached it).
  const next = newEncryptionKey('bodies-next')
  const app = await build(t, graphEnv(w.base, { ...QUIET, ENCRYPTION_KEYS: `${next},${TEST_ENCRYPTION_KEYS}` }))
  await app.ready()
  await app.maintenance()
  const old = ring(TEST_ENCRYPTION_KEYS)
  await sql`update webhook_events set body = ${old.sealBytes('webhook_events.body', Buffer.from(first.body))}, digest = ${old.digest('webhook_body', first.body)}
             where id = ${first.res.json().event_id}::bigint`.execute(w.db)
  t.match(await post(t, app, first.body), { duplicate: true, event_id: first.res.json().event_id, tokens_recorded: 0 }, 'under the older key: still a duplicate')

  const legacyPsid = newPsid()
  const raw = JSON.stringify(envelope([optinEvent({ pageId: w.pageId, psid: legacyPsid, payload: w.topic.payload, token: w.emulator.issueToken(w.pageId, legacyPsid, w.topic.payload) })]))
  const legacy = await legacyBody(w, raw)
  t.match(await post(t, app, raw), { duplicate: true, event_id: legacy, tokens_recorded: 0 }, 'stored in clear before encryption: still a duplicate')
  t.equal(await rowsOf(w), 2, 'nothing stored twice')
  const tokens = await w.db.selectFrom('optin_tokens').select('psid').where('page_id', '=', w.pageId).execute()
  t.same(tokens.map((r) => r.psid), [psid], 'nothing recorded twice: one token, and none from the duplicate of the legacy body')
})

t.test('erasure deletes the sealed bodies that mention the person and their bodies stored in clear before, leaves the others, and a re-delivery does not bring them back', async (t) => {
  const w = await bodyWorld(t)
  const [psid, other] = [newPsid(), newPsid()]
  const mine = await optIn(w, psid, Date.now() - 60_000)
  const echo = echoBody(w.pageId, psid)
  const echoed = await post(t, w.app, echo)
  const theirs = await optIn(w, other)
  const legacyMine = await legacyBody(w, messageBody(w.pageId, psid, 'hi from before'))
  const legacyTheirs = await legacyBody(w, messageBody(w.pageId, other, 'hello from before'))
  t.ok(holds(await dump({ table: 'webhook_events' }), psid), 'the legacy body holds their id in clear before the erasure')

  const res = await w.app.inject({ method: 'DELETE', url: `/v1/pages/${w.pageId}/subscribers/${psid}`, headers: auth })
  t.equal(res.statusCode, 200, res.body)
  t.equal(res.json().erased.webhook_events, 3, 'their opt-in, the Page\'s echo to them, and their body from before')
  const left = await sql<{ id: string }>`select id::text as id from webhook_events where page_id = ${w.pageId} order by id`.execute(w.db)
  t.same(left.rows.map((r) => r.id), [theirs.res.json().event_id, legacyTheirs].sort((a, b) => Number(a) - Number(b)), 'the other person\'s bodies stay')
  t.notOk([mine.res.json().event_id, echoed.event_id, legacyMine].some((id) => left.rows.some((r) => r.id === id)))
  t.notOk(holds(await dump({ table: 'webhook_events' }), psid), 'the dump of webhook_events no longer holds their id')

  // Meta re-delivers what the erasure deleted.
  const again = await post(t, w.app, mine.body)
  t.match(again, { duplicate: false, tokens_recorded: 0 }, 'not recorded again')
  const withheld = await storedBody(w, again.event_id)
  t.equal(withheld.body.length, 0, 'stored without its body')
  t.match(await post(t, w.app, mine.body), { duplicate: true, event_id: again.event_id }, 'and a further re-delivery is a duplicate of it')
  const person = await w.app.inject({ url: `/v1/pages/${w.pageId}/subscribers/${psid}`, headers: auth })
  t.equal(person.json().code, 'subscriber_not_found', 'the person does not come back')
  t.same(await w.db.selectFrom('optin_tokens').select('psid').where('page_id', '=', w.pageId).where('psid', '=', psid).execute(), [], 'nor their token')
})

t.test('rotate-keys seals the bodies stored in clear and re-digests every body: with the old key removed a re-delivery is still a duplicate, and erasure still finds them', async (t) => {
  const w = await bodyWorld(t)
  await forgetUnreadable(w)
  const [psid, other] = [newPsid(), newPsid()]
  const sealed = await optIn(w, psid)
  const mineRaw = messageBody(w.pageId, psid, 'mine, from before')
  const theirsRaw = messageBody(w.pageId, other, 'theirs, from before')
  const legacyMine = await legacyBody(w, mineRaw)
  const legacyTheirs = await legacyBody(w, theirsRaw)
  t.ok(holds(await dump({ table: 'webhook_events' }), other), 'a body in clear is in the dump before rotation')

  const next = newEncryptionKey('bodies-rotated')
  const both = await build(t, graphEnv(w.base, { ...QUIET, ENCRYPTION_KEYS: `${next},${TEST_ENCRYPTION_KEYS}` }))
  await both.ready()
  await both.maintenance()
  const current = ring(next)
  for (const [id, raw] of [[sealed.res.json().event_id, sealed.body], [legacyMine, mineRaw], [legacyTheirs, theirsRaw]]) {
    const row = await storedBody(w, id)
    t.equal(Buffer.from(row.body).subarray(0, 22).toString(), 'enc:v1:bodies-rotated:', `body ${id} sealed under the new key`)
    t.equal(current.openBytes('webhook_events.body', row.body).toString(), raw, 'byte for byte')
    t.ok(Buffer.from(row.digest!).equals(current.digest('webhook_body', raw)), 'its digest under the new key')
  }
  // (Only the bodies are asserted: a subscription an event delivery held at that moment was skipped, as designed.)
  t.equal((await rotateKeys(w.db, { keyring: ring(next, TEST_ENCRYPTION_KEYS) })).webhook_events, 0, 'no body left under an older key, or in clear')
  const text = await dump({ table: 'webhook_events' })
  t.notOk(holds(text, other) || holds(text, psid), 'no PSID in the dump of webhook_events after rotation')

  // The old key removed.
  const only = await build(t, graphEnv(w.base, { ...QUIET, ENCRYPTION_KEYS: next }))
  await only.ready()
  await only.maintenance()
  t.match(await post(t, only, sealed.body), { duplicate: true, event_id: sealed.res.json().event_id }, 'a re-delivery of a body sealed under the old key: a duplicate')
  t.match(await post(t, only, mineRaw), { duplicate: true, event_id: legacyMine }, 'a re-delivery of a body stored in clear before: a duplicate')
  const res = await only.inject({ method: 'DELETE', url: `/v1/pages/${w.pageId}/subscribers/${psid}`, headers: auth })
  t.equal(res.statusCode, 200, res.body)
  t.equal(res.json().erased.webhook_events, 2, 'erasure finds the body from before by the mentions rotation gave it')
  const left = await sql<{ id: string }>`select id::text as id from webhook_events where page_id = ${w.pageId}`.execute(w.db)
  t.same(left.rows.map((r) => r.id), [legacyTheirs], 'the other person\'s body stays')

  // Back under the test key, for whatever runs after this test.
  const back = await build(t, graphEnv(w.base, { ...QUIET, ENCRYPTION_KEYS: `${TEST_ENCRYPTION_KEYS},${next}` }))
  await back.ready()
  await back.maintenance()
})

// ---- Issue 31, opt-in tokens (both kinds): sealed at rest, a keyed digest for equality ----

/** optin_tokens as an outsider sees it: pg_dump --table=optin_tokens on Postgres; its rows as JSON on PGlite (no pg_dump). */
async function dumpTokens (): Promise<string> {
  const { db, kind, url } = await testDatabase()
  if (kind === 'postgres') return execFileSync('pg_dump', ['--no-owner', '--data-only', '--table=optin_tokens', url!], { maxBuffer: 512 * 1024 * 1024 }).toString()
  const { rows } = await sql<{ row: string }>`select row_to_json(x)::text as row from optin_tokens x`.execute(db)
  return rows.map((r) => r.row).join('\n')
}

/** A one-time opt-in for `token` in a body of its own (other bytes than any earlier one: not a re-delivery of the body). */
async function optInAgain (w: World, psid: string, token: string, at: number) {
  const res = await signedPost(w.app, JSON.stringify(envelope([optinEvent({ pageId: w.pageId, psid, payload: w.topic.payload, token, timestamp: at })])), APP_SECRET)
  t.equal(res.statusCode, 200, res.body)
  return res.json() as { duplicate: boolean, tokens_recorded: number, tokens_already_held: number }
}

/** The person's token rows on the world's Page, values as stored. */
async function storedTokens (w: World, psid: string) {
  return await w.db.selectFrom('optin_tokens').select(['id', 'kind', 'token', 'token_digest', 'state', 'stopped_at']).where('page_id', '=', w.pageId).where('psid', '=', psid).orderBy('id').execute()
}

/**
 * The tests above leave Pages and subscriptions under keys of their own (one-off `next` keys) or
 * altered on purpose, in the file's shared database; a rotation here must not meet them: the values
 * the current keys cannot read are set aside.
 */
async function forgetOtherKeys (w: World) {
  const unreadable = (column: 'pages.access_token' | 'optin_tokens.token', stored: string): boolean => {
    try { openSecret(column, stored); return false } catch { return true }
  }
  const pages = await w.db.selectFrom('pages').select(['id', 'access_token']).where('access_token', 'is not', null).execute()
  const pageIds = pages.filter((p) => unreadable('pages.access_token', p.access_token!)).map((p) => p.id)
  if (pageIds.length > 0) await w.db.updateTable('pages').set({ access_token: null }).where('id', 'in', pageIds).execute()
  await sql`delete from event_subscriptions`.execute(w.db)
  const tokens = await w.db.selectFrom('optin_tokens').select(['page_id', 'id', 'token']).execute()
  for (const x of tokens.filter((x) => unreadable('optin_tokens.token', x.token))) {
    await w.db.deleteFrom('optin_tokens').where('page_id', '=', x.page_id).where('id', '=', x.id).execute()
  }
}

/** A send to `psid` that must go out with `token` (the emulator saw that value as the recipient). */
async function sendsWith (t: Test, w: World, app: World['app'], psid: string, token: string) {
  const res = await notify(app, { topic_id: w.topic.id, psid, message: { text: 'back in stock' } })
  t.equal(res.statusCode, 201, res.body)
  t.equal(res.json().status, 'sent')
  const recipient = w.emulator.requests.at(-1)?.recipient as Record<string, string>
  t.equal(recipient.one_time_notif_token ?? recipient.notification_messages_token, token, 'Meta received the token in clear')
}

t.test('opt-in tokens of both kinds are stored sealed with a keyed digest: the optin_tokens rows and their dump hold none in clear, a re-delivery adds none', async (t) => {
  const w = await world(t)
  const [one, two, rec] = [newPsid(), newPsid(), newPsid()]
  const first = await optIn(w, one)
  const second = await optIn(w, two)
  const recurring = await recurringEvent(w, rec, { frequency: 'WEEKLY' })
  await sendWorks(t, w)
  await sendsWith(t, w, w.app, one, first.token)
  const clear = [first.token, second.token, recurring]

  const rows = await sql<{ token: string, token_digest: Buffer }>`select token, token_digest from optin_tokens where page_id = ${w.pageId} and psid in (${one}, ${two}, ${rec})`.execute(w.db)
  t.equal(rows.rows.length, 3)
  t.ok(rows.rows.every((r) => r.token.startsWith('enc:v1:test-key:')), 'every token sealed under the configured key')
  t.notOk(rows.rows.some((r) => clear.includes(r.token)), 'none in clear')
  t.same(new Set(rows.rows.map((r) => Buffer.from(r.token_digest).toString('hex'))), new Set(clear.map((c) => keyedDigest('optin_token', c).toString('hex'))),
    'each row carries the keyed digest of its token')
  t.notOk(rows.rows.some((r) => clear.some((c) => Buffer.from(r.token_digest).equals(createHash('sha256').update(c).digest()))), 'not an unkeyed digest a guess could be checked against')
  const { rows: all } = await sql<{ n: number }>`select count(*)::int as n from optin_tokens where token not like 'enc:v1:%'`.execute(w.db)
  t.equal(all[0].n, 0, 'no row of the table, any Page, holds a token in clear')
  const text = await dumpTokens()
  t.ok(text.includes(w.pageId), 'the dump does hold the rows')
  for (const c of clear) t.notOk(holds(text, c), 'no opt-in token in the dump of optin_tokens, in clear, base64 or hex')

  // Re-deliveries, in other bytes: the digest finds the token already held.
  t.match(await optInAgain(w, two, second.token, Date.now() - 1000), { duplicate: false, tokens_recorded: 0, tokens_already_held: 1 })
  t.match(await optInAgain(w, one, first.token, Date.now() - 500), { tokens_recorded: 0 }, 'a spent token is not recorded again')
  await recurringEvent(w, rec, { token: recurring, frequency: 'WEEKLY', at: Date.now() + 1 })
  t.equal((await storedTokens(w, one)).length, 1)
  t.equal((await storedTokens(w, two)).length, 1)
  t.match(await storedTokens(w, rec), [{ kind: 'notification_messages', state: 'available' }], 'the recurring one once, still active')

  // Views show the token masked, from its clear value.
  const exported = await w.app.inject({ url: `/v1/pages/${w.pageId}/subscribers/${two}/export`, headers: auth })
  t.equal(exported.statusCode, 200, exported.body)
  t.same(exported.json().tokens.map((x: { token: string }) => x.token), [maskToken(second.token)])
  t.notMatch(exported.body, /enc:v1/)
  await sendsWith(t, w, w.app, two, second.token)
  await sendsWith(t, w, w.app, rec, recurring)
})

t.test('legacy plaintext tokens (as the migration leaves them) are claimed, sent and recognised on re-delivery; rotation seals them', async (t) => {
  const w = await world(t)
  const [one, rec] = [newPsid(), newPsid()]
  const legacy = w.emulator.issueToken(w.pageId, one, w.topic.payload)
  const legacyRec = w.emulator.issueToken(w.pageId, rec, w.topic.payload, { kind: 'notification_messages', optedInAt: Date.now() - 60_000, expiresAt: null })
  for (const [psid, token, kind] of [[one, legacy, 'one_time_notif'], [rec, legacyRec, 'notification_messages']] as const) {
    await sql`insert into optin_tokens (kind, page_id, psid, payload, token, token_digest, opted_in_at, expires_at, status_at)
      values (${kind}, ${w.pageId}, ${psid}, ${w.topic.payload}, ${token}, sha256(convert_to(${token}, 'UTF8')), now() - interval '1 minute',
              ${kind === 'one_time_notif' ? sql`now() + interval '300 days'` : sql`'9999-12-31'::timestamptz`}, now() - interval '1 minute')`.execute(w.db)
  }
  t.match(await optInAgain(w, one, legacy, Date.now() - 1000), { tokens_recorded: 0, tokens_already_held: 1 }, 'a re-delivery of a legacy token is a duplicate')
  await recurringEvent(w, rec, { token: legacyRec, at: Date.now(), status: 'STOP_NOTIFICATIONS' })
  const recRows = await storedTokens(w, rec)
  t.equal(recRows.length, 1, 'a recurring event on a legacy token writes that row, not a second one')
  t.ok(recRows[0].stopped_at !== null, 'the stop applied to the legacy row')
  t.equal(recRows[0].token, legacyRec, 'still legacy until rotation')
  await recurringEvent(w, rec, { token: legacyRec, at: Date.now() + 1, status: 'RESUME_NOTIFICATIONS' })

  await forgetOtherKeys(w)
  const counts = await rotateKeys(w.db, { batch: 1 })
  t.ok(counts.optin_tokens >= 2, `the legacy tokens sealed (${counts.optin_tokens})`)
  t.same(await rotateKeys(w.db), { pages: 0, event_subscriptions: 0, optin_tokens: 0, webhook_events: 0 }, 'a second run has nothing left to do')
  for (const [psid, token] of [[one, legacy], [rec, legacyRec]]) {
    const [row] = await storedTokens(w, psid)
    t.match(row.token, /^enc:v1:test-key:/)
    t.ok(Buffer.from(row.token_digest).equals(keyedDigest('optin_token', token)), 'and digested under the key')
  }
  const text = await dumpTokens()
  t.notOk(holds(text, legacy) || holds(text, legacyRec), 'no legacy token in the dump of optin_tokens after rotation')
  t.match(await optInAgain(w, one, legacy, Date.now() - 500), { tokens_recorded: 0 }, 'still a duplicate after rotation')
  await sendsWith(t, w, w.app, one, legacy)
  await recurringEvent(w, rec, { token: legacyRec, at: Date.now() + 2, frequency: 'DAILY' })
  t.equal((await storedTokens(w, rec)).length, 1)
  await sendsWith(t, w, w.app, rec, legacyRec)
})

t.test('rotating opt-in tokens to a new first key keeps each one usable and known; then the old key is removed and they still send', async (t) => {
  const w = await world(t)
  const [a, b, rec, late] = [newPsid(), newPsid(), newPsid(), newPsid()]
  const ta = (await optIn(w, a)).token
  const tb = (await optIn(w, b)).token
  const tr = await recurringEvent(w, rec, { frequency: 'DAILY' })
  await forgetOtherKeys(w)
  const newKeys = newEncryptionKey('tok-next')
  const both = await build(t, graphEnv(w.base, { ENCRYPTION_KEYS: `${newKeys},${TEST_ENCRYPTION_KEYS}` }))
  await both.ready()
  // Its start-up maintenance rotates; it ends before the test writes (a recurring re-delivery racing
  // the rotation of its own row is a known gap, noted on issue 31).
  await both.maintenance()
  const wb: World = { ...w, app: both }
  // Tokens written under the old key are found by the new key's digest, and sent.
  t.match(await optInAgain(wb, b, tb, Date.now() - 1000), { tokens_recorded: 0, tokens_already_held: 1 }, 'a re-delivery under the new key finds the old-key row')
  await recurringEvent(wb, rec, { token: tr, at: Date.now() + 1, frequency: 'DAILY' })
  t.equal((await storedTokens(w, rec)).length, 1)
  await sendsWith(t, w, both, a, ta)
  const tl = (await optIn(wb, late)).token
  t.match((await storedTokens(w, late))[0].token, /^enc:v1:tok-next:/, 'new tokens are sealed under the new first key')

  await both.maintenance()
  const { rows } = await sql<{ n: number }>`select count(*)::int as n from optin_tokens where token not like 'enc:v1:tok-next:%'`.execute(w.db)
  t.equal(rows[0].n, 0, 'no opt-in token left under the old key, in any Page')
  t.match(await optInAgain(wb, b, tb, Date.now() - 500), { tokens_recorded: 0 }, 'after rotation a re-delivery is still a duplicate')

  const only = await build(t, graphEnv(w.base, { ENCRYPTION_KEYS: newKeys }))
  const wo: World = { ...w, app: only }
  t.match(await optInAgain(wo, late, tl, Date.now() - 200), { tokens_recorded: 0 }, 'with the old key removed too')
  for (const [psid, token] of [[b, tb], [rec, tr], [late, tl]]) {
    t.equal((await storedTokens(w, psid)).length, 1)
    await sendsWith(t, w, only, psid, token)
  }
})

t.test('a tampered opt-in token fails closed for its own send (token_unreadable, the token kept); other sends of the moment go out', async (t) => {
  const log = new LogCapture()
  const w = await world(t, { env: { LOG_LEVEL: 'info' }, deps: { logStream: log } })
  const [bad, good] = [newPsid(), newPsid()]
  const badToken = (await optIn(w, bad)).token
  const goodToken = (await optIn(w, good)).token
  const [row] = await storedTokens(w, bad)
  const body = row.token.slice(row.token.lastIndexOf(':') + 1)
  const bytes = Buffer.from(body, 'base64url')
  bytes[bytes.length - 1] ^= 1
  await w.db.updateTable('optin_tokens').set({ token: row.token.slice(0, row.token.lastIndexOf(':') + 1) + bytes.toString('base64url') })
    .where('page_id', '=', w.pageId).where('id', '=', row.id).execute()
  const sentBefore = w.emulator.requests.length
  // Sent at the same moment: the starts are batched into one statement.
  const [res, fine] = await Promise.all([
    notify(w.app, { topic_id: w.topic.id, psid: bad, message: { text: 'back in stock' } }),
    notify(w.app, { topic_id: w.topic.id, psid: good, message: { text: 'back in stock' } }),
  ])
  t.equal(res.statusCode, 500, res.body)
  t.match(res.json(), { code: 'token_unreadable', notification: { status: 'failed', token_state: 'released' } })
  t.equal(res.json().notification.attempts, 0, 'no request was made to Meta')
  t.match(res.json().detail, /optin_tokens\.token under key id "test-key" fails authentication/)
  t.equal(fine.statusCode, 201, fine.body)
  t.equal(fine.json().status, 'sent', 'the other person\'s send is not affected')
  t.same(w.emulator.requests.slice(sentBefore).map((r) => (r.recipient as { one_time_notif_token?: string }).one_time_notif_token), [goodToken],
    'Meta received the other send only')
  t.match(await storedTokens(w, bad), [{ state: 'available' }], 'the token is kept, not spent or set aside')
  const inbox = await w.app.inject({ url: `/v1/pages/${w.pageId}/subscribers/${bad}/export`, headers: auth })
  t.equal(inbox.statusCode, 200, 'a view of the person still answers')
  t.match(log.text, /optin_tokens\.token under key id \\?"test-key\\?" fails authentication/)
  t.notOk(holds(log.text, badToken) || holds(log.text, goodToken), 'no token in any log line')
  t.notOk(res.body.includes(badToken) || res.body.includes('enc:v1'), 'nor in the answer')
  // Put back as it was: the kept token sends.
  await w.db.updateTable('optin_tokens').set({ token: row.token }).where('page_id', '=', w.pageId).where('id', '=', row.id).execute()
  await sendsWith(t, w, w.app, bad, badToken)
})
