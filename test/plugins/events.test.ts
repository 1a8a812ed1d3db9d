import t from 'tap'
import { databaseKind, TEST_ENCRYPTION_KEYS, testDatabase } from '../helper.js'
import { eventsEnv, startReceiver, until } from '../fixtures/event-receiver.js'
import { startServiceProcess } from '../fixtures/service-process.js'

// The delivery poller (src/plugins/events.ts) across a real process death: an instance killed with
// SIGKILL in the middle of an attempt leaves its claim behind; another instance takes the delivery
// over when the claim's lease (the attempt timeout + 30 s) ends, with the same webhook-id, and the
// receiver verifies it with the standardwebhooks library.

const KEY = 'events-process-test-key'

t.test('an instance killed mid-delivery: another takes the delivery over after the lease, same webhook-id, verified', {
  skip: databaseKind === 'postgres' ? false : 'instances share a database through Postgres; the embedded database has one instance (its folder lock, test/db/data-dir-lock.test.ts)',
  timeout: 120_000,
}, async (t) => {
  const { url } = await testDatabase()
  const receiver = await startReceiver(t)
  receiver.answers.push('hang')
  const env = {
    ...eventsEnv,
    EVENTS_ATTEMPT_TIMEOUT_MS: '2000',
    DATABASE_URL: url!,
    ENCRYPTION_KEYS: TEST_ENCRYPTION_KEYS,
    API_KEYS: KEY,
  }
  const headers = { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' }

  const first = startServiceProcess(env)
  t.teardown(() => { first.child.kill('SIGKILL') })
  const base = await first.listening
  const created = await fetch(`${base}/v1/event-subscriptions`, { method: 'POST', headers, body: JSON.stringify({ url: receiver.url, events: ['*'] }) })
  t.equal(created.status, 201)
  const sub = await created.json() as { id: string, secret: string }
  const ping = await fetch(`${base}/v1/event-subscriptions/${sub.id}/test`, { method: 'POST', headers: { authorization: headers.authorization } })
  t.equal(ping.status, 202)

  await until('the first attempt to reach the receiver', () => receiver.received.length === 1 ? true : undefined)
  first.child.kill('SIGKILL')
  t.equal(await first.exited, null, 'killed, not exited')
  const killedAt = Date.now()

  const second = startServiceProcess(env)
  t.teardown(() => { second.child.kill('SIGTERM') })
  const base2 = await second.listening
  await until('the delivery to be taken over', () => receiver.received.length === 2 ? true : undefined, 60_000)
  const waited = Date.now() - killedAt
  t.ok(waited >= 2000 + 30_000 - 2000, `taken over once the lease ended (${Math.round(waited / 1000)} s after the kill)`)

  const [lost, delivered] = receiver.received
  t.equal(delivered.headers['webhook-id'], lost.headers['webhook-id'], 'the same webhook-id: the receiver can tell it is the same event')
  t.same(receiver.verify(delivered, sub.secret), { type: 'ping', timestamp: delivered.json.timestamp, data: delivered.json.data }, 'signed: verified by standardwebhooks')
  t.equal(delivered.json.type, 'ping')

  const listed = await until('the delivery to be recorded delivered', async () => {
    const res = await fetch(`${base2}/v1/event-subscriptions/${sub.id}/deliveries`, { headers })
    const page = await res.json() as { items: Array<{ state: string, attempts: number, event_id: string, attempt_log: Array<{ response_status: number | null }> }> }
    return page.items[0]?.state === 'delivered' ? page.items[0] : undefined
  })
  t.match(listed, { state: 'delivered', attempts: 2, event_id: lost.headers['webhook-id'] }, 'two claims: the killed one and the one that delivered')
  t.same(listed.attempt_log.map((a) => a.response_status), [200], 'the killed instance recorded nothing; the answer that ended it is listed')
  t.equal(receiver.received.length, 2, 'nothing more arrives')
})
