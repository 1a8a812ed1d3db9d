import t, { type Test } from 'tap'
import { randomUUID } from 'node:crypto'
import { sql } from 'kysely'
import { removeOldEvents, removeOldMessageBodies, removeOldWebhookBodies } from '../../src/domain/retention.js'
import { maintenanceTasks } from '../../src/tasks.js'
import { auth, build, testDatabase, uniquePageId } from '../helper.js'
import { envelope, optinEvent, signedPost, uniquePsid, uniqueToken, webhookEnv } from '../fixtures/webhooks.js'

const DAY = 24 * 60 * 60 * 1000

/** A Page with a topic, and one opt-in delivered through the webhook for each age (days ago). */
async function deliveries (t: Test, app: Awaited<ReturnType<typeof build>>, ages: number[]) {
  const pageId = uniquePageId()
  await app.inject({ method: 'PUT', url: `/v1/pages/${pageId}`, headers: auth, payload: { name: 'Shop', access_token: 'page-token' } })
  const topic = (await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Deals', payload: 'deals' } })).json()
  const { db } = await testDatabase()
  const psid = uniquePsid()
  for (const age of ages) {
    const res = await signedPost(app, envelope([optinEvent({ pageId, psid, payload: 'deals', token: uniqueToken(), timestamp: Date.now() - 5 * DAY })]))
    t.equal(res.statusCode, 200)
    await sql`update webhook_events set received_at = now() - make_interval(days => ${age}) where id = ${res.json().event_id}`.execute(db)
  }
  return { db, pageId, psid, topic }
}

async function bodiesOf (pageId: string): Promise<number[]> {
  const { db } = await testDatabase()
  const { rows } = await sql<{ age: number }>`
    select floor(extract(epoch from now() - received_at) / 86400)::int as age from webhook_events where page_id = ${pageId} order by age`.execute(db)
  return rows.map((r) => r.age)
}

t.test('raw webhook bodies older than the limit are removed in batches; the tokens they brought stay usable', async (t) => {
  const app = await build(t, webhookEnv)
  const { db, pageId, topic } = await deliveries(t, app, [45, 31, 40, 29, 1])
  t.same(await bodiesOf(pageId), [1, 29, 31, 40, 45])
  t.equal(await removeOldWebhookBodies(db, 30, 2), 3, 'three bodies, in batches of two')
  t.same(await bodiesOf(pageId), [1, 29], 'nothing older than 30 days remains')
  t.equal(await removeOldWebhookBodies(db, 30, 2), 0, 'nothing left to do')
  t.equal(await removeOldWebhookBodies(db, 0), 0, '0 keeps forever')
  t.same(await bodiesOf(pageId), [1, 29])
  const counts = (await app.inject({ method: 'GET', url: `/v1/topics/${topic.id}`, headers: auth })).json().counts
  t.equal(counts.usable_tokens, 5, 'every token the removed bodies brought is still usable')
})

async function notification (db: Awaited<ReturnType<typeof testDatabase>>['db'], pageId: string, ageDays: number, completed: boolean) {
  const id = randomUUID()
  await db.insertInto('notifications').values({
    id, page_id: pageId, psid: '123', message: JSON.stringify({ text: `hello ${ageDays}` }), status: completed ? 'sent' : 'pending', route: 'window',
    graph_message_id: completed ? `m_${ageDays}` : null, completed_at: completed ? new Date() : null,
    created_at: undefined,
  }).execute()
  await sql`update notifications set created_at = now() - make_interval(days => ${ageDays}) where id = ${id}`.execute(db)
  return id
}

t.test('notification messages older than the limit are emptied; status, ids and pending sends stay', async (t) => {
  const { db } = await testDatabase()
  const pageId = uniquePageId()
  const old = await notification(db, pageId, 100, true)
  const older = await notification(db, pageId, 200, true)
  const recent = await notification(db, pageId, 10, true)
  const pending = await notification(db, pageId, 120, false)
  t.equal(await removeOldMessageBodies(db, 90, 1), 2)
  const rows = await db.selectFrom('notifications').select(['id', 'message', 'status', 'graph_message_id']).where('page_id', '=', pageId).execute()
  const byId = new Map(rows.map((r) => [r.id, r]))
  t.same(byId.get(old), { id: old, message: {}, status: 'sent', graph_message_id: 'm_100' })
  t.same(byId.get(older)?.message, {})
  t.same(byId.get(recent)?.message, { text: 'hello 10' }, 'younger than the limit: kept')
  t.same(byId.get(pending)?.message, { text: 'hello 120' }, 'a pending send keeps its message (recovery may still send it)')
  t.equal(await removeOldMessageBodies(db, 90), 0, 'nothing left to do')
  t.equal(await removeOldMessageBodies(db, 0), 0, '0 keeps forever')
  t.equal(await removeOldMessageBodies(db, 5), 1, 'a shorter limit reaches the recent one')
})

t.test('both are maintenance tasks that run with the configured limits', async (t) => {
  t.ok(maintenanceTasks().some((task) => task.name === 'remove_old_webhook_bodies'))
  t.ok(maintenanceTasks().some((task) => task.name === 'remove_old_message_bodies'))
  const setup = await build(t, webhookEnv)
  const { db, pageId } = await deliveries(t, setup, [12, 3])
  const message = await notification(db, pageId, 8, true)
  await setup.close()
  const app = await build(t, { ...webhookEnv, WEBHOOK_BODY_RETENTION_DAYS: '10', MESSAGE_BODY_RETENTION_DAYS: '7' })
  await app.ready()
  await app.maintenance()
  t.same(await bodiesOf(pageId), [3])
  const row = await db.selectFrom('notifications').select('message').where('id', '=', message).executeTakeFirstOrThrow()
  t.same(row.message, {})
})

t.test('outbound events older than the limit whose deliveries all ended are removed with them; one still waiting stays', async (t) => {
  const { db } = await testDatabase()
  const pageId = uniquePageId()
  const { rows: [sub] } = await sql<{ id: string }>`insert into event_subscriptions (url, events, secret, enabled) values ('https://example.com/x', '{*}', 'whsec_x', false) returning id`.execute(db)
  const event = async (ageDays: number, state: string) => {
    const { rows: [e] } = await sql<{ id: string }>`
      insert into events (page_id, type, data, created_at) values (${pageId}, 'page.healthy', '{}'::jsonb, now() - make_interval(days => ${ageDays})) returning id`.execute(db)
    const { rows: [d] } = await sql<{ id: string }>`
      insert into event_deliveries (page_id, event_id, subscription_id, state) values (${pageId}, ${e.id}, ${sub.id}, ${state}) returning id`.execute(db)
    await sql`insert into event_delivery_attempts (page_id, delivery_id, duration_ms, response_status) values (${pageId}, ${d.id}, 5, 200)`.execute(db)
    return e.id
  }
  const kept = [await event(1, 'delivered'), await event(40, 'pending'), await event(45, 'delivering')]
  await event(31, 'delivered'); await event(40, 'failed'); await event(50, 'cancelled')
  const left = async () => (await sql<{ id: string }>`select id from events where page_id = ${pageId} order by created_at desc`.execute(db)).rows.map((r) => r.id)
  t.equal(await removeOldEvents(db, 30, 2), 3, 'three, in batches of two')
  t.same((await left()).sort(), [...kept].sort(), 'the young one and those still waiting stay')
  const { rows: [n] } = await sql<{ d: string, a: string }>`select (select count(*) from event_deliveries where page_id = ${pageId})::text as d,
                                                                    (select count(*) from event_delivery_attempts where page_id = ${pageId})::text as a`.execute(db)
  t.same(n, { d: '3', a: '3' }, 'their deliveries and attempts went with them')
  t.equal(await removeOldEvents(db, 0), 0, '0 keeps forever')
  t.ok(maintenanceTasks().some((task) => task.name === 'remove_old_events'))
  await sql`delete from event_subscriptions where id = ${sub.id}`.execute(db)
})
