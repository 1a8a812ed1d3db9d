import t from 'tap'
import { DeliveryWriter, type DeliveryInput } from '../../src/domain/ingest.js'
import { parseDelivery } from '../../src/domain/webhook-body.js'
import { countStatements, testDatabase, uniquePageId } from '../helper.js'
import { entry, envelope, messageEvent, optinEvent, sign, uniquePsid, uniqueToken } from '../fixtures/webhooks.js'
import { openBytes } from '../../src/crypto/secret-box.js'
import { inClear } from '../fixtures/tokens.js'

// The webhook's group commit: deliveries that arrive while a statement runs are written together,
// each answered with its own receipt, and one the database refuses does not take the others down.

async function counting () {
  const { db } = await testDatabase()
  return { db, ...countStatements(db) }
}

function input (body: unknown): DeliveryInput {
  const raw = Buffer.from(JSON.stringify(body))
  return { raw, signature: sign(raw), delivery: parseDelivery(raw) }
}

t.test('deliveries recorded in the same turn go in one statement, each with its own receipt', async (t) => {
  const { db, counted, statements } = await counting()
  const writer = new DeliveryWriter(counted)
  const pageId = uniquePageId()
  const psid = uniquePsid()
  const shared = uniqueToken()
  const inputs = [
    input(envelope([entry(pageId, [optinEvent({ pageId, psid, payload: 'a', token: uniqueToken() }), optinEvent({ pageId, psid, payload: 'b', token: uniqueToken() })])])),
    input(envelope([entry(pageId, [optinEvent({ pageId, psid, payload: 'a', token: shared, timestamp: Date.now() - 60_000 })])])),
    // The same token again (a re-delivery arriving alongside): recorded once, for the earlier opt-in.
    input(envelope([entry(pageId, [optinEvent({ pageId, psid, payload: 'a', token: shared })])])),
    input(envelope([entry(pageId, [messageEvent({ pageId, psid, timestamp: Date.now() - 1000 })])])),
  ]
  const receipts = await Promise.all(inputs.map((i) => writer.submit(i)))
  t.equal(statements.length, 1, 'one statement for four deliveries')
  t.same(receipts.map((r) => r.tokens_recorded), [2, 1, 0, 0])
  t.equal(new Set(receipts.map((r) => r.event_id)).size, 4, 'each delivery has its own event')

  const events = await db.selectFrom('webhook_events').select(['id', 'body']).where('id', 'in', receipts.map((r) => r.event_id)).orderBy('id').execute()
  t.same(events.map((e) => e.id), receipts.map((r) => r.event_id), 'ids follow the order of arrival')
  t.same(events.map((e) => openBytes('webhook_events.body', e.body).toString()), inputs.map((i) => i.raw.toString()), 'each raw body is stored exactly')
  const tokens = inClear(await db.selectFrom('optin_tokens').select(['token', 'webhook_event_id', 'opted_in_at']).where('page_id', '=', pageId).execute())
  t.equal(tokens.length, 3)
  t.equal(tokens.find((x) => x.token === shared)!.webhook_event_id, receipts[1].event_id, 'a token names the delivery it was recorded from')
  const person = await db.selectFrom('subscribers').selectAll().where('page_id', '=', pageId).where('psid', '=', psid).executeTakeFirstOrThrow()
  t.ok(person.last_interaction_at !== null, 'the interaction of the fourth delivery counts')
  t.ok(person.first_seen_at.getTime() <= Date.now() - 60_000 + 1000, 'first seen: the earliest event of the batch')
})

t.test('one delivery the database refuses fails alone; the others are written', async (t) => {
  const { db, counted, statements } = await counting()
  const writer = new DeliveryWriter(counted)
  const pageId = uniquePageId()
  const good = [uniqueToken(), uniqueToken(), uniqueToken()]
  const inputs = [
    ...good.map((token) => input(envelope([entry(pageId, [optinEvent({ pageId, psid: uniquePsid(), payload: 'a', token })])]))),
    // A NUL character: valid JSON, but Postgres text cannot hold it.
    input(envelope([entry(pageId, [optinEvent({ pageId, psid: uniquePsid(), payload: 'bad\u0000payload', token: uniqueToken() })])])),
  ]
  const outcomes = await Promise.allSettled(inputs.map((i) => writer.submit(i)))
  t.same(outcomes.map((o) => o.status), ['fulfilled', 'fulfilled', 'fulfilled', 'rejected'])
  t.match((outcomes[3] as PromiseRejectedResult).reason, { code: '22P05' }, 'the database refused the bad one (jsonb cannot hold a NUL)')
  t.equal(statements.length, 5, 'the batch failed, then each delivery was written on its own')
  const stored = inClear(await db.selectFrom('optin_tokens').select('token').where('page_id', '=', pageId).execute())
  t.same(stored.map((x) => x.token).sort(), [...good].sort())
})

t.test('while statements are in flight, the next deliveries wait and go together', async (t) => {
  const { counted, statements } = await counting()
  const writer = new DeliveryWriter(counted, 100, 1)
  const pageId = uniquePageId()
  const first = writer.submit(input(envelope([entry(pageId, [optinEvent({ pageId, psid: uniquePsid(), payload: 'a', token: uniqueToken() })])])))
  await new Promise((resolve) => setImmediate(resolve)) // the first statement is under way
  const later = Array.from({ length: 10 }, () =>
    writer.submit(input(envelope([entry(pageId, [optinEvent({ pageId, psid: uniquePsid(), payload: 'a', token: uniqueToken() })])]))))
  const receipts = await Promise.all([first, ...later])
  t.ok(receipts.every((r) => r.tokens_recorded === 1))
  t.equal(statements.length, 2, 'one statement for the first, one for the ten that waited')
})

t.test('the same bytes twice, in one statement or in two writers at once, are stored once (#24.6)', async (t) => {
  const { db, counted, statements } = await counting()
  const writer = new DeliveryWriter(counted)
  const pageId = uniquePageId()
  const token = uniqueToken()
  const body = envelope([entry(pageId, [optinEvent({ pageId, psid: uniquePsid(), payload: 'a', token })])])
  const other = envelope([entry(pageId, [optinEvent({ pageId, psid: uniquePsid(), payload: 'a', token: uniqueToken() })])])
  const receipts = await Promise.all([input(body), input(other), input(body)].map((i) => writer.submit(i)))
  t.equal(statements.length, 1, 'one statement')
  t.same(receipts.map((r) => [r.duplicate, r.tokens_recorded]), [[false, 1], [false, 1], [true, 0]])
  t.equal(receipts[2].event_id, receipts[0].event_id, 'the duplicate names the stored delivery')
  const stored = await db.selectFrom('webhook_events').select('id').where('id', 'in', receipts.map((r) => r.event_id)).execute()
  t.equal(stored.length, 2)

  // Two instances' writers, each with statements in flight: the unique digest decides, whichever commits first.
  const bodies = Array.from({ length: 6 }, () => envelope([entry(pageId, [optinEvent({ pageId, psid: uniquePsid(), payload: 'a', token: uniqueToken() })])]))
  const [a, b] = [new DeliveryWriter(db, 2, 2), new DeliveryWriter(db, 2, 2)]
  const both = await Promise.all([...bodies.map((x) => a.submit(input(x))), ...[...bodies].reverse().map((x) => b.submit(input(x)))])
  const byBody = bodies.map((_, i) => [both[i], both[bodies.length * 2 - 1 - i]])
  for (const [fromA, fromB] of byBody) {
    t.equal(fromA.event_id, fromB.event_id, 'one event for the two deliveries of one body')
    t.same([fromA.duplicate, fromB.duplicate].sort(), [false, true])
    t.equal(fromA.tokens_recorded + fromB.tokens_recorded, 1, 'its token recorded once')
  }
  const rows = await db.selectFrom('webhook_events').select('id').where('id', 'in', both.map((r) => r.event_id)).execute()
  t.equal(rows.length, bodies.length)
})
