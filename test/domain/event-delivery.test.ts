import t from 'tap'
import { sql } from 'kysely'
import { Webhook } from 'standardwebhooks'
import { claimDue, deliverDue, deliverOne, deliveryAgent, retryDelaySeconds, signatures } from '../../src/domain/event-delivery.js'
import { createSubscription, newSecret, sendPing } from '../../src/domain/events.js'
import { testDatabase } from '../helper.js'
import { startReceiver, until } from '../fixtures/event-receiver.js'

const opts = { attemptTimeoutMs: 1000, retryBaseSeconds: 0.05, maxAttempts: 3, disableAfterHours: 0, allowPrivateNetworks: true, concurrency: 4 }
const policy = { allowHttp: true, allowPrivateNetworks: true }

t.beforeEach(async () => {
  const { db } = await testDatabase()
  await sql`delete from event_subscriptions`.execute(db)
})

t.test('signatures verify with the standardwebhooks library, one secret or two', async (t) => {
  const [a, b] = [newSecret(), newSecret()]
  t.match(a, /^whsec_[A-Za-z0-9+/]{43}=$/, '32 random bytes')
  const body = JSON.stringify({ type: 'ping', timestamp: new Date().toISOString(), data: {} })
  const ts = Math.floor(Date.now() / 1000)
  const id = 'b4a1d2c3-0000-4000-8000-000000000001'
  const headers = (sig: string) => ({ 'webhook-id': id, 'webhook-timestamp': String(ts), 'webhook-signature': sig })
  t.same(new Webhook(a).verify(body, headers(signatures([a], id, ts, body))), JSON.parse(body))
  const both = signatures([a, b], id, ts, body)
  t.equal(both.split(' ').length, 2)
  t.ok(new Webhook(a).verify(body, headers(both)))
  t.ok(new Webhook(b).verify(body, headers(both)))
  t.throws(() => new Webhook(newSecret()).verify(body, headers(both)), 'a third secret does not')
  t.throws(() => new Webhook(a).verify(`${body} `, headers(both)), 'a changed body does not')
  t.equal(signatures([a], id, ts, body), new Webhook(a).sign(id, new Date(ts * 1000), body), 'the same bytes as the library signs')
})

t.test('the pauses triple up to 12 hours, ±20%: fifteen attempts span about three days', async (t) => {
  const pauses = (random: () => number) => Array.from({ length: 14 }, (_, i) => retryDelaySeconds(i + 1, 5, random))
  const days = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / 86400
  t.same(pauses(() => 0.5).slice(0, 4), [5, 15, 45, 135])
  t.equal(Math.max(...pauses(() => 0.5)), 43200, 'capped at 12 hours')
  t.ok(days(pauses(() => 0.5)) > 2.9 && days(pauses(() => 0.5)) < 3.2, `nominal ${days(pauses(() => 0.5)).toFixed(2)} days`)
  t.ok(days(pauses(() => 0)) > 2.3 && days(pauses(() => 0.999)) < 3.8, 'jitter keeps it near three days')
  const spread = new Set(Array.from({ length: 20 }, () => retryDelaySeconds(3, 5)))
  t.ok(spread.size > 10, 'jittered')
  for (const x of spread) t.ok(x >= 36 && x <= 54)
})

t.test('a delivery claimed by an instance that died is claimed again once its lease ends; the late record is ignored', async (t) => {
  const { db } = await testDatabase()
  const receiver = await startReceiver(t)
  const { subscription } = await createSubscription(db, policy, { url: receiver.url, events: ['*'] })
  const { delivery_id: id } = await sendPing(db, subscription.id)
  const [first] = await claimDue(db, 10, 100)
  t.match(first, { id, attempts: 1 })
  t.same(await claimDue(db, 10, 100), [], 'leased: no one else takes it')
  await new Promise((resolve) => setTimeout(resolve, 150))
  const agent = deliveryAgent(opts)
  t.teardown(() => agent.close())
  const outcomes: string[] = []
  t.equal(await deliverDue(db, agent, opts, (o) => outcomes.push(o)), 1, 'taken over after the lease')
  t.same(outcomes, ['delivered'])
  const { rows: [d] } = await sql<{ state: string, attempts: number }>`select state, attempts from event_deliveries where id = ${id}`.execute(db)
  t.same(d, { state: 'delivered', attempts: 2 })
  t.equal(receiver.received.length, 1)
  receiver.fallback = 500
  t.equal(await deliverOne(db, agent, first, opts), 'cancelled', 'the first claim, finishing late, records nothing')
  const { rows: [after] } = await sql<{ state: string, attempts: number }>`select state, attempts from event_deliveries where id = ${id}`.execute(db)
  t.same(after, { state: 'delivered', attempts: 2 })
  const { rows: [n] } = await sql<{ n: number }>`select count(*)::int as n from event_delivery_attempts where delivery_id = ${id}`.execute(db)
  t.equal(n.n, 1, 'one attempt recorded')
})

t.test('a redirect is not followed: the attempt failed with its status and is retried', async (t) => {
  const { db } = await testDatabase()
  const receiver = await startReceiver(t)
  receiver.answers.push(302)
  const { subscription } = await createSubscription(db, policy, { url: receiver.url, events: ['*'] })
  const { delivery_id: id } = await sendPing(db, subscription.id)
  const agent = deliveryAgent(opts)
  t.teardown(() => agent.close())
  const outcomes: string[] = []
  await deliverDue(db, agent, opts, (o) => outcomes.push(o))
  t.same(outcomes, ['retried'])
  t.equal(receiver.received.length, 1, 'one request, no second to the Location')
  const { rows: [d] } = await sql<{ state: string, last_status: number }>`select state, last_status from event_deliveries where id = ${id}`.execute(db)
  t.same(d, { state: 'pending', last_status: 302 })
})

t.test('attempts exhausted: failed; an unreachable endpoint and a refused address are recorded as errors', async (t) => {
  const { db } = await testDatabase()
  const { subscription } = await createSubscription(db, policy, { url: 'http://127.0.0.1:9/nothing', events: ['*'] })
  const { delivery_id: id } = await sendPing(db, subscription.id)
  const agent = deliveryAgent({ ...opts, allowPrivateNetworks: false })
  t.teardown(() => agent.close())
  const outcomes: string[] = []
  for (let i = 0; i < 3; i++) {
    await sql`update event_deliveries set next_attempt_at = now() where id = ${id}`.execute(db)
    await deliverDue(db, agent, opts, (o) => outcomes.push(o))
  }
  t.same(outcomes, ['retried', 'retried', 'failed'])
  const { rows: attempts } = await sql<{ error: string }>`select error from event_delivery_attempts where delivery_id = ${id} order by id`.execute(db)
  t.equal(attempts.length, 3)
  t.match(attempts[0].error, /ECONNREFUSED/)
  await sql`update event_subscriptions set url = 'http://localhost:9/x' where id = ${subscription.id}`.execute(db)
  const again = await sendPing(db, subscription.id)
  await deliverDue(db, agent, { ...opts, allowPrivateNetworks: false })
  const { rows: [d] } = await sql<{ last_error: string }>`select last_error from event_deliveries where id = ${again.delivery_id}`.execute(db)
  t.match(d.last_error, /refused: localhost is a loopback name/, 'the address is checked again at delivery')
})

t.test('stopping ends the attempts in flight at once: recorded, and retried later', async (t) => {
  const { db } = await testDatabase()
  const receiver = await startReceiver(t)
  receiver.answers.push('hang')
  const { subscription } = await createSubscription(db, policy, { url: receiver.url, events: ['*'] })
  const { delivery_id: id } = await sendPing(db, subscription.id)
  const slow = { ...opts, attemptTimeoutMs: 20_000 }
  const agent = deliveryAgent(slow)
  t.teardown(() => agent.close())
  const stop = new AbortController()
  const outcomes: string[] = []
  const round = deliverDue(db, agent, slow, (o) => outcomes.push(o), stop.signal)
  await until('the request', () => receiver.received[0])
  const started = Date.now()
  stop.abort()
  await round
  t.ok(Date.now() - started < 2000, 'not the 20 s timeout')
  t.same(outcomes, ['retried'])
  const { rows: [d] } = await sql<{ state: string, last_error: string }>`select state, last_error from event_deliveries where id = ${id}`.execute(db)
  t.same(d, { state: 'pending', last_error: 'the instance stopped during the attempt' })
})

t.test('one slow receiver holds one slot: the others are delivered meanwhile', async (t) => {
  const { db } = await testDatabase()
  const slowReceiver = await startReceiver(t)
  slowReceiver.answers.push('hang')
  const fast = await startReceiver(t)
  const slowSub = (await createSubscription(db, policy, { url: slowReceiver.url, events: ['*'] })).subscription
  const fastSub = (await createSubscription(db, policy, { url: fast.url, events: ['*'] })).subscription
  await sendPing(db, slowSub.id)
  for (let i = 0; i < 4; i++) await sendPing(db, fastSub.id)
  const window = { ...opts, attemptTimeoutMs: 3000, concurrency: 2 }
  const agent = deliveryAgent(window)
  t.teardown(() => agent.close())
  const started = Date.now()
  const round = deliverDue(db, agent, window)
  await until('the fast ones', () => fast.received.length === 4 ? true : undefined)
  t.ok(Date.now() - started < 2500, 'before the slow attempt timed out')
  t.equal(await round, 5, 'five attempts in the round')
})
