import t from 'tap'
import { sql } from 'kysely'
import { createSubscription, sendPing } from '../../src/domain/events.js'
import { recordPageError, upsertPage } from '../../src/domain/pages.js'
import { expireTokens } from '../../src/domain/token-store.js'
import { build, testDatabase, uniquePageId } from '../helper.js'
import { newPsid, world } from '../fixtures/otn.js'
import { optIn } from '../fixtures/consent.js'
import { eventsEnv, startReceiver, until } from '../fixtures/event-receiver.js'

// The outbox triggers (migration 20261203000000_events): which change writes which event, in the
// transaction of the change, and only for a subscription that asks for it.

const policy = { allowHttp: true, allowPrivateNetworks: true }
/** No poll: these tests read the outbox, nothing delivers it unless asked. */
const quiet = { ...eventsEnv, EVENTS_POLL_INTERVAL_MS: '60000' }

async function eventsOf (pageId: string) {
  const { db } = await testDatabase()
  const { rows } = await sql<{ type: string, psid: string | null, data: Record<string, unknown>, deliveries: number }>`
    select e.type, e.psid, e.data, (select count(*)::int from event_deliveries d where d.page_id = e.page_id and d.event_id = e.id) as deliveries
      from events e where e.page_id = ${pageId} order by e.sequence`.execute(db)
  return rows
}

t.beforeEach(async () => {
  const { db } = await testDatabase()
  await sql`delete from event_subscriptions`.execute(db)
})

t.test('with no subscription nothing is written; a disabled one or another type writes nothing either', async (t) => {
  const w = await world(t, { env: quiet })
  await optIn(w, newPsid())
  t.same(await eventsOf(w.pageId), [], 'no subscription')
  const { subscription } = await createSubscription(w.db, policy, { url: 'http://127.0.0.1:9/', events: ['notification.*'] })
  await sql`insert into event_subscriptions (url, events, secret, enabled) values ('http://127.0.0.1:9/', '{*}', 'whsec_x', false)`.execute(w.db)
  await optIn(w, newPsid())
  t.same(await eventsOf(w.pageId), [], 'another family, and a disabled subscription')
  await sql`update event_subscriptions set events = '{optin.created}' where id = ${subscription.id}`.execute(w.db)
  await optIn(w, newPsid())
  t.match(await eventsOf(w.pageId), [{ type: 'optin.created', deliveries: 1 }])
})

t.test('a rolled-back change emits nothing; a committed one its event with one delivery per subscription', async (t) => {
  const { db } = await testDatabase()
  const pageId = uniquePageId()
  await createSubscription(db, policy, { url: 'http://127.0.0.1:9/a', events: ['optin.*'] })
  await createSubscription(db, policy, { url: 'http://127.0.0.1:9/b', events: ['optin.stopped'], page_ids: [pageId] })
  await createSubscription(db, policy, { url: 'http://127.0.0.1:9/c', events: ['*'], page_ids: ['1'] })
  const entry = (type: string, tokenId: number) => sql`
    insert into consent_history (page_id, psid, type, payload, kind, token_id, at) values (${pageId}, 'p1', ${type}, 'deals', 'notification_messages', ${tokenId}, now())`
  const rollback = new Error('rollback')
  await t.rejects(db.transaction().execute(async (trx) => {
    await entry('stopped', 1).execute(trx)
    const { rows } = await sql<{ n: number }>`select count(*)::int as n from events where page_id = ${pageId}`.execute(trx)
    t.equal(rows[0].n, 1, 'written in the transaction of the change')
    throw rollback
  }), rollback)
  t.same(await eventsOf(pageId), [], 'rolled back: nothing')
  await db.transaction().execute(async (trx) => { await entry('stopped', 1).execute(trx) })
  t.match(await eventsOf(pageId), [{ type: 'optin.stopped', psid: 'p1', deliveries: 2, data: { page_id: pageId, psid: 'p1', kind: 'notification_messages', token_id: '1', topic_payload: 'deals' } }])
  await sql`insert into consent_history (page_id, psid, type, payload, kind, token_id, at)
            select page_id, psid, type, payload, kind, token_id, at from consent_history where page_id = ${pageId}
            on conflict (page_id, token_id, type, at) where token_id is not null do nothing`.execute(db)
  t.equal((await eventsOf(pageId)).length, 1, 'an entry the ledger already holds writes no second event')
  await entry('resumed', 1).execute(db)
  await entry('refreshed', 1).execute(db)
  t.same((await eventsOf(pageId)).map((e) => [e.type, e.deliveries]), [['optin.stopped', 2], ['optin.resumed', 1], ['optin.refreshed', 1]])
})

t.test('expired tokens: one token.expired per Page and topic per sweep, with the count', async (t) => {
  const w = await world(t, { env: quiet })
  await createSubscription(w.db, policy, { url: 'http://127.0.0.1:9/', events: ['token.*'] })
  for (let i = 0; i < 3; i++) await optIn(w, newPsid())
  await sql`update optin_tokens set expires_at = now() - interval '1 second' where page_id = ${w.pageId}`.execute(w.db)
  t.ok(await expireTokens(w.db) >= 3)
  t.match(await eventsOf(w.pageId), [{ type: 'token.expired', psid: null, data: { page_id: w.pageId, topic_id: w.topic.id, topic_payload: w.topic.payload, count: 3, kind: 'one_time_notif' } }])
})

t.test('a Page turning unhealthy and healthy again; a broadcast completed or cancelled, with its counts', async (t) => {
  const { db } = await testDatabase()
  const pageId = uniquePageId()
  await createSubscription(db, policy, { url: 'http://127.0.0.1:9/', events: ['page.*', 'broadcast.*'] })
  await upsertPage(db, pageId, { name: 'Shop', access_token: 'EAA-secret-page-token' })
  await recordPageError(db, pageId, { code: 190, subcode: 460, message: 'Error validating access token', fbtrace_id: 'Ab1' })
  await recordPageError(db, pageId, { code: 190, subcode: 460, message: 'again', fbtrace_id: 'Ab2' })
  await upsertPage(db, pageId, { name: 'Shop', access_token: 'EAA-new-page-token' })
  await upsertPage(db, pageId, { name: 'Shop renamed' })
  const pages = await eventsOf(pageId)
  t.match(pages, [
    { type: 'page.unhealthy', data: { page_id: pageId, healthy: false, error: { code: 190, subcode: 460, message: 'Error validating access token', fbtrace_id: 'Ab1' } } },
    { type: 'page.healthy', data: { page_id: pageId, healthy: true } },
  ], 'one event per flip, none for a change that flips nothing')
  t.equal(pages.length, 2)
  t.notOk(JSON.stringify(pages).includes('EAA-'), 'no access token')

  const topic = (await db.insertInto('topics').values({ page_id: pageId, name: 'Deals', title: 'Deals', payload: 'deals' }).returning('id').executeTakeFirstOrThrow()).id
  const broadcast = async (state: 'completed' | 'cancelled') => {
    const { rows: [b] } = await sql<{ id: string }>`
      insert into broadcasts (page_id, topic_id, message, audience, audience_estimate, state, send_at)
      values (${pageId}, ${topic}, '{"text":"x"}', 'topic', 2, 'running', now()) returning id`.execute(db)
    await sql`insert into broadcast_recipients (page_id, broadcast_id, psid, batch, state, outcome) values
              (${pageId}, ${b.id}, 'a', 0, 'done', 'sent_token'), (${pageId}, ${b.id}, 'b', 0, 'done', 'no_token'), (${pageId}, ${b.id}, 'c', 0, 'pending', null)`.execute(db)
    await sql`update broadcasts set state = ${state} where id = ${b.id}`.execute(db)
    await sql`update broadcasts set state = ${state}, updated_at = now() where id = ${b.id}`.execute(db)
    return b.id
  }
  const done = await broadcast('completed')
  const cancelled = await broadcast('cancelled')
  const events = (await eventsOf(pageId)).filter((e) => e.type.startsWith('broadcast.'))
  t.match(events, [
    { type: 'broadcast.completed', data: { broadcast_id: done, topic_id: topic, counts: { total: 3, sent: 1, no_token: 1, pending: 1 } } },
    { type: 'broadcast.cancelled', data: { broadcast_id: cancelled } },
  ])
  t.equal(events.length, 2, 'an update that changes no state writes nothing')
})

t.test('a committed event survives the app closing before it is delivered: the next app delivers it', async (t) => {
  const receiver = await startReceiver(t)
  const w = await world(t, { env: quiet })
  const { secret } = await createSubscription(w.db, policy, { url: receiver.url, events: ['optin.created'] })
  await optIn(w, newPsid())
  await w.app.close()
  t.equal(receiver.received.length, 0, 'not delivered before the close')
  const next = await build(t, { ...eventsEnv })
  await next.ready()
  const got = await until('the event', () => receiver.received[0])
  t.equal(got.json.type, 'optin.created')
  t.ok(receiver.verify(got, secret))
})

t.test('a ping is an event of no Page for one subscription', async (t) => {
  const { db } = await testDatabase()
  const { subscription } = await createSubscription(db, policy, { url: 'http://127.0.0.1:9/', events: ['page.healthy'] })
  await createSubscription(db, policy, { url: 'http://127.0.0.1:9/other', events: ['*'] })
  const { event_id: eventId } = await sendPing(db, subscription.id)
  const { rows } = await sql<{ type: string, page_id: string, subscription_id: string }>`
    select e.type, e.page_id, d.subscription_id from events e join event_deliveries d on d.page_id = e.page_id and d.event_id = e.id where e.id = ${eventId}`.execute(db)
  t.same(rows, [{ type: 'ping', page_id: '', subscription_id: subscription.id }])
})
