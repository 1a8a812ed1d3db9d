import t from 'tap'
import { sql } from 'kysely'
import { keyedDigest } from '../../src/crypto/secret-box.js'
import { erasePerson, erasureKey, subjectOf } from '../../src/domain/erasure.js'
import { recordDeliveries } from '../../src/domain/ingest.js'
import { parseDelivery } from '../../src/domain/webhook-body.js'
import { auth, databaseKind, testDatabase } from '../helper.js'
import { dump } from '../fixtures/dump.js'
import { APP_SECRET, newPsid, world, type World } from '../fixtures/otn.js'
import { optIn, story } from '../fixtures/consent.js'
import { envelope, optinEvent, signedPost } from '../fixtures/webhooks.js'

/** Whether the dump holds `value`, as text or as the hex of its bytes (bytea columns: raw webhook bodies). */
const holds = (text: string, value: string): boolean => text.includes(value) || text.includes(Buffer.from(value).toString('hex'))
/** Whether the dump holds a token: in clear, or its row (sealed; found by its keyed digest, as bytea hex). */
const holdsToken = (text: string, token: string): boolean => holds(text, token) || text.includes(keyedDigest('optin_token', token).toString('hex'))

const erase = (w: World, psid: string) => w.app.inject({ method: 'DELETE', url: `/v1/pages/${w.pageId}/subscribers/${psid}`, headers: auth })

t.test('after an erasure a dump of the database holds neither the person\'s id nor any of their tokens; others are untouched', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const other = newPsid()
  const mine = await story(w, psid)
  const theirs = await story(w, other)
  const before = await dump()
  t.ok(holds(before, psid) && mine.tokens.every((token) => holdsToken(before, token)), 'the dump holds the person before')

  const res = await erase(w, psid)
  t.equal(res.statusCode, 200)
  t.match(res.json(), {
    page_id: w.pageId,
    erased: { optin_tokens: 3, subscribers: 1, notifications: 2, optin_requests: 1, broadcast_recipients: 0, consent_history: 9 },
  })
  t.ok(res.json().erased.webhook_events >= 5, 'every raw body that mentions them')

  const after = await dump()
  t.notOk(holds(after, psid), 'not their id')
  for (const token of mine.tokens) t.notOk(holdsToken(after, token), 'not one of their tokens, in clear or as a row')
  t.ok(holds(after, other), 'the other person is still there')
  for (const token of theirs.tokens) t.ok(holdsToken(after, token), 'with their tokens')

  const history = (await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}/subscribers/${psid}/history`, headers: auth })).json()
  t.match(history.items, [{ type: 'erased', at: res.json().erased_at, detail: { erased: res.json().erased } }], 'only the erased entry')
  t.equal(history.items.length, 1)
  const subscriber = await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}/subscribers/${psid}`, headers: auth })
  t.equal(subscriber.json().code, 'subscriber_not_found')
  const kept = await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}/subscribers/${other}/history`, headers: auth })
  t.equal(kept.json().items.length, 9, 'the other person\'s history is whole')
})

t.test('a re-delivered opt-in older than the erasure is not recorded; a new opt-in after it is new consent', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const old = await optIn(w, psid, Date.now() - 60_000)
  t.equal(old.res.json().tokens_recorded, 1)
  t.equal((await erase(w, psid)).json().erased.optin_tokens, 1)

  const again = await signedPost(w.app, old.body, APP_SECRET)
  t.equal(again.statusCode, 200, 'Meta is answered 200 (or it retries for 36 hours)')
  t.match(again.json(), { duplicate: false, tokens_received: 1, tokens_recorded: 0 }, 'the body was erased with the person, so it is not a duplicate')
  const { db } = await testDatabase()
  const tokens = await db.selectFrom('optin_tokens').select('token').where('page_id', '=', w.pageId).execute()
  t.same(tokens, [], 'no token came back')
  const people = await db.selectFrom('subscribers').select('psid').where('page_id', '=', w.pageId).execute()
  t.same(people, [], 'nor the person')
  const history = (await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}/subscribers/${psid}/history`, headers: auth })).json()
  t.same(history.items.map((e: { type: string }) => e.type), ['erased'])
  t.notOk(holds(await dump(), psid), 'the re-delivered body is not stored again: the dump does not hold their id')
  const third = await signedPost(w.app, old.body, APP_SECRET)
  t.match(third.json(), { duplicate: true, event_id: again.json().event_id, tokens_recorded: 0 }, 'a further re-delivery is known by its digest')

  const fresh = await optIn(w, psid, Date.now() + 1000)
  t.equal(fresh.res.json().tokens_recorded, 1, 'a new opt-in after the erasure is recorded')
  const types = (await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}/subscribers/${psid}/history`, headers: auth })).json()
    .items.map((e: { type: string }) => e.type)
  t.same(types, ['erased', 'opted_in'])
})

// The embedded database has one connection: statements never interleave, so this race cannot happen there.
t.test('a webhook statement that began before the erasure committed and commits after it leaves nothing older than the erasure', { skip: databaseKind !== 'postgres' && 'one connection on the embedded database: no race to close' }, async (t) => {
  const { db } = await testDatabase()
  const w = await world(t)
  const psid = newPsid()
  const key = erasureKey({ ERASURE_KEY: undefined, META_APP_SECRET: APP_SECRET })
  const token = w.emulator.issueToken(w.pageId, psid, w.topic.payload)
  const raw = Buffer.from(JSON.stringify(envelope([optinEvent({ pageId: w.pageId, psid, payload: w.topic.payload, token, timestamp: Date.now() - 60_000 })])))

  // The webhook statement runs in a transaction left open (as if it were still writing) while the erasure commits.
  let release!: () => void
  const held = new Promise<void>((resolve) => { release = resolve })
  let recorded!: () => void
  const written = new Promise<void>((resolve) => { recorded = resolve })
  const ingest = db.transaction().execute(async (trx) => {
    await recordDeliveries(trx, [{ raw, signature: 'sha256=test', delivery: parseDelivery(raw) }], key)
    recorded()
    await held
  })
  await written
  let erasedAt: number | undefined
  const erasure = erasePerson(db, key, w.pageId, psid).then((e) => { erasedAt = Date.now(); return e })
  await new Promise((resolve) => setTimeout(resolve, 300))
  t.equal(erasedAt, undefined, 'the erasure waits for the transaction that began before it')
  const committed = Date.now()
  release()
  await ingest
  const result = await erasure
  t.ok(erasedAt! >= committed, 'and answers once it has ended')
  t.equal(result.complete, true)
  t.match(result.erased, { optin_tokens: 1, subscribers: 1, consent_history: 1 }, 'what it committed is erased by the second pass, and counted')
  t.ok(result.erased.webhook_events >= 1, 'with its raw body')
  t.same(await db.selectFrom('optin_tokens').select('id').where('page_id', '=', w.pageId).execute(), [], 'no token survives')
  t.notOk(holds(await dump(), psid), 'a dump does not hold their id')
  const entry = (await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}/subscribers/${psid}/history`, headers: auth })).json().items
  t.match(entry, [{ type: 'erased', detail: { erased: result.erased } }], 'the erased entry counts both passes')

  const fresh = await optIn(w, psid, Date.now() + 1000)
  t.equal(fresh.res.json().tokens_recorded, 1, 'a new opt-in after the erasure is still new consent')
})

t.test('the erasure marker names the person by a keyed digest, never by their id', async (t) => {
  const key = erasureKey({ ERASURE_KEY: 'k'.repeat(32), META_APP_SECRET: undefined })
  t.not(subjectOf(key, '1', '2').toString('hex'), subjectOf(erasureKey({ ERASURE_KEY: 'j'.repeat(32), META_APP_SECRET: undefined }), '1', '2').toString('hex'), 'another key, another digest')
  t.not(subjectOf(key, '1', '23').toString('hex'), subjectOf(key, '12', '3').toString('hex'), 'Page and PSID are kept apart')
  t.not(erasureKey({ META_APP_SECRET: 'a' }).toString('hex'), erasureKey({ META_APP_SECRET: 'b' }).toString('hex'), 'derived from the App Secret when unset')
})

t.test('bad input: unknown Page, malformed PSID; a person never seen is erased all the same (zeros)', async (t) => {
  const w = await world(t)
  t.match((await w.app.inject({ method: 'DELETE', url: `/v1/pages/9${w.pageId}/subscribers/${newPsid()}`, headers: auth })).json(), { status: 404, code: 'page_not_found' })
  t.match((await w.app.inject({ method: 'DELETE', url: `/v1/pages/${w.pageId}/subscribers/no%20spaces`, headers: auth })).json(), { status: 400, code: 'validation_failed' })
  const none = await erase(w, newPsid())
  t.match(none.json(), { erased: { optin_tokens: 0, subscribers: 0, notifications: 0, optin_requests: 0, broadcast_recipients: 0, webhook_events: 0, consent_history: 0 } })
})

t.test('a broadcast in progress skips an erased person: their pending recipient row is settled no_token, its PSID replaced', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const other = newPsid()
  await optIn(w, psid)
  await optIn(w, other)
  const { db } = await testDatabase()
  const broadcast = await db.insertInto('broadcasts').values({
    page_id: w.pageId, topic_id: w.topic.id, message: JSON.stringify({ text: 'Sale' }), audience: 'topic', audience_estimate: 2,
    state: 'running', send_at: new Date(),
  }).returning('id').executeTakeFirstOrThrow()
  await db.insertInto('broadcast_recipients').values([psid, other].map((p) => ({ page_id: w.pageId, broadcast_id: broadcast.id, psid: p, batch: 0 }))).execute()

  const res = await erase(w, psid)
  t.equal(res.json().erased.broadcast_recipients, 1)
  const rows = await db.selectFrom('broadcast_recipients').select(['psid', 'state', 'outcome', 'error_code'])
    .where('broadcast_id', '=', broadcast.id).orderBy('state').execute()
  t.match(rows, [
    { psid: /^erased-/, state: 'done', outcome: 'no_token', error_code: 'no_token' },
    { psid: other, state: 'pending', outcome: null },
  ], 'the erased person is done (no token: nothing is sent), the other still pending')
  t.notOk(holds(await dump(), psid), 'the dump does not hold their id')
})

t.test('the erasure deletes the person\'s outbound events and their deliveries: a dump holds no psid', async (t) => {
  const { eventsEnv } = await import('../fixtures/event-receiver.js')
  const w = await world(t, { env: { ...eventsEnv, EVENTS_POLL_INTERVAL_MS: '60000' } })
  await sql`delete from event_subscriptions`.execute(w.db)
  // Nothing listens there: the deliveries stay pending, the events with them.
  const sub = await w.app.inject({ method: 'POST', url: '/v1/event-subscriptions', headers: auth, payload: { url: 'http://127.0.0.1:9/x', events: ['*'] } })
  t.equal(sub.statusCode, 201)
  const psid = newPsid()
  const other = newPsid()
  await story(w, psid)
  await story(w, other)
  const count = async (who: string) => (await sql<{ n: string }>`select count(*)::text as n from events e join event_deliveries d on d.page_id = e.page_id and d.event_id = e.id
                                                   where e.page_id = ${w.pageId} and e.psid = ${who}`.execute(w.db)).rows[0].n
  t.ok(Number(await count(psid)) >= 5, 'the story gave events with deliveries')
  t.ok(holds(await dump(), psid), 'the dump holds the person before')
  const res = await erase(w, psid)
  t.equal(res.json().erased.events, Number(await count(other)), 'as many as the same story gave another person')
  t.equal(await count(psid), '0')
  t.notOk(holds(await dump(), psid), 'no psid in the dump')
  t.ok(Number(await count(other)) >= 5, 'the other person\'s events stay')
  await sql`delete from event_subscriptions`.execute(w.db)
})
