import t from 'tap'
import { sql } from 'kysely'
import { markPlanned, planNextBatch, startBroadcast } from '../../src/domain/broadcast-run.js'
import { createBroadcast, getBroadcastRow } from '../../src/domain/broadcasts.js'
import { SWEEP_QUEUE } from '../../src/jobs/broadcast-worker.js'
import { auth } from '../helper.js'
import { world } from '../fixtures/otn.js'
import { accountedForOnce, broadcastEnv, NOWHERE, people, readBroadcast, recurringFor, settled, tokensFor } from '../fixtures/broadcasts.js'

// The audience is frozen when planning runs: created with an estimate, planned by hand here (its job
// is not enqueued, and send_at is an hour away so that the sweep leaves it alone), then sent by the
// real workers once the test hands it to the sweep.

const later = () => new Date(Date.now() + 3_600_000).toISOString()

async function planAll (db: Parameters<typeof planNextBatch>[0], id: string) {
  const b = (await getBroadcastRow(db, id))!
  while (await planNextBatch(db, b, 3)) { /* page after page */ }
  await markPlanned(db, b)
  return (await getBroadcastRow(db, id))!
}

t.test('the broadcast records the estimate at creation and the audience planning listed, and says how they differ', async (t) => {
  const w = await world(t, { env: broadcastEnv(), emulator: { webhookUrl: NOWHERE } })
  const first = people(6, 'fz')
  await tokensFor(w, first)
  const { broadcast } = await createBroadcast(w.db, { topic_id: w.topic.id, message: { text: 'Frozen' }, send_at: later(), audience: { exclude_psids: [first[5]] } },
    { batchSize: 3, enqueue: async () => {} })
  t.match(broadcast, { audience_estimate: 5, audience_final: null })

  // Between creation and planning: two people opt in, one token is spent, one person (excluded) leaves.
  const newcomers = people(2, 'nw')
  await tokensFor(w, newcomers)
  await w.db.updateTable('optin_tokens').set({ state: 'used' }).where('page_id', '=', w.pageId).where('psid', '=', first[0]).execute()
  await w.db.deleteFrom('optin_tokens').where('page_id', '=', w.pageId).where('psid', '=', first[5]).execute()

  const planned = await planAll(w.db, broadcast.id)
  t.equal(planned.audience_final, 6, 'five estimated, one spent, two new')
  const view = await readBroadcast(w.app, broadcast.id)
  t.match(view, { audience_estimate: 5, audience_final: 6, audience_change: 1, progress: { total: 6 } })
  const listed = await w.db.selectFrom('broadcast_recipients').select('psid').where('broadcast_id', '=', broadcast.id).orderBy('psid').execute()
  t.same(listed.map((r) => r.psid), [...first.slice(1, 5), ...newcomers].sort())

  // After planning nobody joins: a new opt-in is not listed, the audience stays as planned.
  await tokensFor(w, people(1, 'lt'))
  t.equal(await planNextBatch(w.db, planned, 3), undefined, 'planning is over')
  t.equal((await readBroadcast(w.app, broadcast.id)).audience_final, 6)
  await w.app.inject({ method: 'POST', url: `/v1/broadcasts/${broadcast.id}/cancel`, headers: auth })
})

t.test('people whose token went between planning and their turn are skipped as no_token, counted by reason', async (t) => {
  const w = await world(t, { env: broadcastEnv(), emulator: { webhookUrl: NOWHERE } })
  const [spent, expired, erased, ...kept] = people(6, 'sk')
  const [stopper, recurring] = people(2, 'rs')
  await tokensFor(w, [spent, expired, erased, ...kept])
  await recurringFor(w, [stopper, recurring])
  const { broadcast } = await createBroadcast(w.db, { topic_id: w.topic.id, message: { text: 'Skipped by reason' }, send_at: later() },
    { batchSize: 3, enqueue: async () => {} })
  const planned = await planAll(w.db, broadcast.id)
  t.equal(planned.audience_final, 8)

  const mine = (psid: string) => w.db.updateTable('optin_tokens').where('page_id', '=', w.pageId).where('psid', '=', psid)
  await mine(spent).set({ state: 'used' }).execute()
  await mine(expired).set({ expires_at: sql`now() - interval '1 second'`, opted_in_at: sql`now() - interval '2 days'` }).execute()
  await w.db.deleteFrom('optin_tokens').where('page_id', '=', w.pageId).where('psid', '=', erased).execute()
  await mine(stopper).set({ stopped_at: sql`now()` }).execute()

  await startBroadcast(w.db, planned)
  await w.app.jobs.send(SWEEP_QUEUE, {})
  const b = await settled(w.app, broadcast.id)
  t.match(b.progress, {
    total: 8, sent_token: 3, sent_recurring: 1, no_token: 4,
    no_token_by_reason: { token_spent: 1, token_expired: 1, no_record: 1, opted_out: 1 },
  })
  t.same(b.audience_change, 0)
  await accountedForOnce(t, w, b)
})
