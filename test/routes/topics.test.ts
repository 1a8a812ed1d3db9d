import t from 'tap'
import { sql } from 'kysely'
import type { FastifyInstance } from 'fastify'
import { auth, build, databaseKind, testDatabase, uniquePageId } from '../helper.js'
import { seedRecurring } from '../fixtures/recurring.js'

async function page (app: FastifyInstance): Promise<string> {
  const id = uniquePageId()
  await app.inject({ method: 'PUT', url: `/v1/pages/${id}`, headers: auth, payload: { name: 'Shop', access_token: 'tok' } })
  return id
}

async function addTokens (pageId: string, payload: string, psids: string[], expiresInDays = 300, state = 'available'): Promise<void> {
  const { db } = await testDatabase()
  for (const psid of psids) {
    await db.insertInto('optin_tokens').values({
      page_id: pageId,
      psid,
      payload,
      token: `tok-${Math.random().toString(36).slice(2)}-${Math.random().toString(36).slice(2)}`,
      opted_in_at: new Date(),
      expires_at: sql<Date>`now() + ${`${expiresInDays} days`}::interval`,
      state: state as 'available',
    }).execute()
  }
}

t.test('create a topic: title defaults from the name, payload generated, counts zero', async (t) => {
  const app = await build(t)
  const pageId = await page(app)
  const res = await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Back in stock: red shoes' } })
  t.equal(res.statusCode, 201)
  const topic = res.json()
  t.match(topic, { page_id: pageId, name: 'Back in stock: red shoes', title: 'Back in stock: red shoes', counts: { usable_tokens: 0, subscribers: 0, expiring_soon: 0 } })
  t.match(topic.payload, /^otn_[A-Za-z0-9_-]{12}$/)
  t.match(topic.id, /^[0-9a-f-]{36}$/)

  const long = 'x'.repeat(100)
  const longTopic = (await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: long } })).json()
  t.equal(longTopic.title, 'x'.repeat(65), 'a long name gives a title cut to 65 characters')

  const tooLong = await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'n', title: 'y'.repeat(66) } })
  t.equal(tooLong.statusCode, 400)
  t.match(tooLong.json().errors, [{ field: 'body/title' }])
})

t.test('names are unique per Page ignoring case; payload keys unique per Page', async (t) => {
  const app = await build(t)
  const pageId = await page(app)
  const other = await page(app)
  await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Deals', payload: 'deals' } })
  const clash = await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'DEALS' } })
  t.equal(clash.statusCode, 409)
  t.equal(clash.json().code, 'topic_name_taken')
  const payloadClash = await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Other', payload: 'deals' } })
  t.equal(payloadClash.json().code, 'topic_payload_taken')
  const otherPage = await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: other, name: 'Deals', payload: 'deals' } })
  t.equal(otherPage.statusCode, 201, 'another Page may use the same name and payload')
  const unknownPage = await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: uniquePageId(), name: 'X' } })
  t.equal(unknownPage.statusCode, 404)
  t.equal(unknownPage.json().code, 'page_not_found')
})

t.test('rename keeps id and payload; tokens stay with the topic', async (t) => {
  const app = await build(t)
  const pageId = await page(app)
  const topic = (await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Old' } })).json()
  await addTokens(pageId, topic.payload, ['p1', 'p2'])
  const renamed = await app.inject({ method: 'PATCH', url: `/v1/topics/${topic.id}`, headers: auth, payload: { name: 'New', title: 'Tell me when it is back' } })
  t.equal(renamed.statusCode, 200)
  t.match(renamed.json(), { id: topic.id, payload: topic.payload, name: 'New', title: 'Tell me when it is back', counts: { usable_tokens: 2 } })
  const empty = await app.inject({ method: 'PATCH', url: `/v1/topics/${topic.id}`, headers: auth, payload: {} })
  t.equal(empty.statusCode, 400)
  await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Taken' } })
  const clash = await app.inject({ method: 'PATCH', url: `/v1/topics/${topic.id}`, headers: auth, payload: { name: 'taken' } })
  t.equal(clash.json().code, 'topic_name_taken')
  const missing = await app.inject({ method: 'PATCH', url: '/v1/topics/00000000-0000-4000-8000-000000000000', headers: auth, payload: { name: 'x' } })
  t.equal(missing.json().code, 'topic_not_found')
})

t.test('counts: usable tokens, people holding one, expiring within 7 days; spent and expired excluded', async (t) => {
  const app = await build(t)
  const pageId = await page(app)
  const topic = (await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Counts' } })).json()
  await addTokens(pageId, topic.payload, ['a', 'a', 'b'])
  await addTokens(pageId, topic.payload, ['c'], 3)
  await addTokens(pageId, topic.payload, ['d'], 300, 'used')
  await addTokens(pageId, topic.payload, ['e'], -1)
  await addTokens(pageId, 'other-payload', ['f'])
  const got = (await app.inject({ method: 'GET', url: `/v1/topics/${topic.id}`, headers: auth })).json()
  t.same(got.counts, { usable_tokens: 4, subscribers: 3, expiring_soon: 1, recurring: { active: 0, stopped: 0 } })
})

t.test('counts with recurring tokens: one-time counts stay one-time, subscribers reach either kind, recurring counts active and stopped people', async (t) => {
  const app = await build(t)
  const { db } = await testDatabase()
  const pageId = await page(app)
  const topic = (await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Recurring counts' } })).json()
  const payload = topic.payload
  await addTokens(pageId, payload, ['a'])
  await addTokens(pageId, payload, ['b'], 3)
  await seedRecurring(db, { pageId, psid: 'a', payload, status: 'active' }) // a holds both kinds: one person
  await seedRecurring(db, { pageId, psid: 'c', payload, status: 'active', frequency: 'WEEKLY', expiresAt: new Date(Date.now() + 3 * 86400_000) })
  await seedRecurring(db, { pageId, psid: 'd', payload, status: 'held' })
  await seedRecurring(db, { pageId, psid: 'e', payload, status: 'stopped' })
  await seedRecurring(db, { pageId, psid: 'f', payload, status: 'replaced' })
  await seedRecurring(db, { pageId, psid: 'g', payload, status: 'expired' })
  await seedRecurring(db, { pageId, psid: 'h', payload, status: 'invalid' })
  await seedRecurring(db, { pageId, psid: 'i', payload: 'other-payload', status: 'active' })
  const expected = { usable_tokens: 2, subscribers: 4, expiring_soon: 1, recurring: { active: 3, stopped: 1 } }
  const got = (await app.inject({ method: 'GET', url: `/v1/topics/${topic.id}`, headers: auth })).json()
  t.same(got.counts, expected, 'usable_tokens a, b; expiring_soon b (a recurring expiry is not counted); subscribers a, b, c, d; active a, c, d; stopped e')
  const listed = (await app.inject({ method: 'GET', url: `/v1/topics?page_id=${pageId}`, headers: auth })).json()
  t.same(listed.items.find((x: { id: string }) => x.id === topic.id).counts, expected, 'the list counts alike')

  // A resume makes the stopped person active again; a stop takes the person out of subscribers.
  await db.updateTable('optin_tokens').set({ stopped_at: null }).where('page_id', '=', pageId).where('psid', '=', 'e').execute()
  await db.updateTable('optin_tokens').set({ stopped_at: new Date() }).where('page_id', '=', pageId).where('psid', '=', 'c').execute()
  const after = (await app.inject({ method: 'GET', url: `/v1/topics/${topic.id}`, headers: auth })).json()
  t.same(after.counts, { usable_tokens: 2, subscribers: 4, expiring_soon: 1, recurring: { active: 3, stopped: 1 } }, 'e in, c out')
  await db.updateTable('optin_tokens').set({ state: 'replaced' }).where('page_id', '=', pageId).where('psid', '=', 'c').execute()
  t.same((await app.inject({ method: 'GET', url: `/v1/topics/${topic.id}`, headers: auth })).json().counts.recurring, { active: 3, stopped: 0 }, 'replaced counts nowhere')
})

t.test('list topics: filter by Page and by name, cursor pagination', async (t) => {
  const app = await build(t)
  const pageId = await page(app)
  const other = await page(app)
  for (const name of ['One', 'Two', 'Three']) {
    await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name } })
  }
  await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: other, name: 'One' } })
  const first = (await app.inject({ method: 'GET', url: `/v1/topics?page_id=${pageId}&limit=2`, headers: auth })).json()
  t.equal(first.items.length, 2)
  t.type(first.next_cursor, 'string')
  const second = (await app.inject({ method: 'GET', url: `/v1/topics?page_id=${pageId}&limit=2&cursor=${first.next_cursor}`, headers: auth })).json()
  t.same([...first.items, ...second.items].map((i: { name: string }) => i.name), ['One', 'Two', 'Three'])
  t.equal(second.next_cursor, null)
  const byName = (await app.inject({ method: 'GET', url: '/v1/topics?name=one', headers: auth })).json()
  t.same(byName.items.map((i: { page_id: string }) => i.page_id).sort(), [pageId, other].sort())
  const badLimit = await app.inject({ method: 'GET', url: '/v1/topics?limit=0', headers: auth })
  t.equal(badLimit.statusCode, 400)
})

t.test('delete: 409 with the count while usable tokens remain; force discards and says how many', async (t) => {
  const app = await build(t)
  const pageId = await page(app)
  const topic = (await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Doomed' } })).json()
  await addTokens(pageId, topic.payload, ['a', 'b', 'c'])
  await addTokens(pageId, topic.payload, ['z'], 300, 'used')
  const refused = await app.inject({ method: 'DELETE', url: `/v1/topics/${topic.id}`, headers: auth })
  t.equal(refused.statusCode, 409)
  t.match(refused.json(), { code: 'topic_has_tokens', usable_tokens: 3 })
  t.equal((await app.inject({ method: 'GET', url: `/v1/topics/${topic.id}`, headers: auth })).statusCode, 200, 'still there')

  const forced = await app.inject({ method: 'DELETE', url: `/v1/topics/${topic.id}?force=true`, headers: auth })
  t.equal(forced.statusCode, 200)
  t.same(forced.json(), { id: topic.id, deleted: true, discarded_tokens: 3 })
  const { db } = await testDatabase()
  const states = await db.selectFrom('optin_tokens').select(['state']).where('payload', '=', topic.payload).orderBy('state').execute()
  t.same(states.map((s) => s.state), ['discarded', 'discarded', 'discarded', 'used'], 'rows kept, spent history untouched')
  t.equal((await app.inject({ method: 'GET', url: `/v1/topics/${topic.id}`, headers: auth })).statusCode, 404)

  const emptyTopic = (await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Empty' } })).json()
  const plain = await app.inject({ method: 'DELETE', url: `/v1/topics/${emptyTopic.id}`, headers: auth })
  t.same(plain.json(), { id: emptyTopic.id, deleted: true, discarded_tokens: 0 })
})

t.test('the topic counts use the partial index, not a scan of spent tokens', { skip: databaseKind !== 'postgres' && 'plans are checked on Postgres' }, async (t) => {
  const { db } = await testDatabase()
  const pageId = uniquePageId()
  await sql`insert into optin_tokens (page_id, psid, payload, token, opted_in_at, expires_at, state)
            select ${pageId} || (g % 50), 'p' || g, 'idx', 'idx-' || g || '-' || ${pageId}, now(), now() + interval '300 days',
                   case when g % 3 = 0 then 'available' else 'used' end
            from generate_series(1, 20000) g`.execute(db)
  await sql`analyze optin_tokens`.execute(db)
  const plan = await sql<{ 'QUERY PLAN': string }>`explain select count(*) from optin_tokens t
    where t.page_id = ${pageId + '7'} and t.payload = 'idx' and t.state = 'available' and t.expires_at > now()`.execute(db)
  const text = plan.rows.map((r) => r['QUERY PLAN']).join('\n')
  t.match(text, /optin_tokens_usable_idx/, text)
  t.notMatch(text, /Seq Scan/)
})

t.test('payloads as real bots write them are accepted, so a business adopts its existing opt-ins; only empty or oversized ones are refused', async (t) => {
  const app = await build(t)
  const pageId = await page(app)
  // MESSENGER.md §8: JSON strings, spaces, quotes and any script are what deployments use.
  const real = ['{"ref":"notify_ref"}', '{ "ref": "908088b3-5e9e-4b53-b746-799ac51bc758"}', '{"action":"subscribed"}', 'Back in stock: red shoes',
    'уведомить о скидках', '通知 🔔', 'a'.repeat(1000)]
  for (const [i, payload] of real.entries()) {
    const res = await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: `Topic ${i}`, payload } })
    t.equal(res.statusCode, 201, payload.slice(0, 40))
    t.equal(res.json().payload, payload, 'kept exactly')
    const got = await app.inject({ method: 'GET', url: `/v1/topics/${res.json().id}`, headers: auth })
    t.equal(got.json().payload, payload)
  }
  const refused: Array<[string, number, string]> = [
    ['', 400, 'validation_failed'], ['a'.repeat(1001), 400, 'validation_failed'], ['é'.repeat(1000), 201, ''],
    ['🔔'.repeat(501), 400, 'invalid_payload'], ['€'.repeat(700), 400, 'invalid_payload'],
  ]
  for (const [i, [payload, status, code]] of refused.entries()) {
    const res = await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: `Edge ${i}`, payload } })
    t.equal(res.statusCode, status, `${payload.length} characters, ${Buffer.byteLength(payload)} bytes`)
    if (code) t.equal(res.json().code, code)
  }
})
