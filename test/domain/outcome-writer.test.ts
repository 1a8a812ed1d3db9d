import t from 'tap'
import { randomUUID } from 'node:crypto'
import { claimToken, type SettledState } from '../../src/domain/claims.js'
import { SendWriter, type Finishing } from '../../src/domain/notifications.js'
import type { Database } from '../../src/db/database.js'
import { countStatements } from '../helper.js'
import { giveTokens, newPsid, starting, tokenStates, world, type World } from '../fixtures/otn.js'

// The group commit's second step of a send: outcomes submitted while a statement runs are recorded together,
// each with its token's move, each only where its sender still holds the notification and token,
// and one the database refuses does not take the others down.


/** A pending notification on the token route holding one claimed token, as startSend leaves it. */
async function pendingWithToken (w: World): Promise<{ id: string, tokenId: string }> {
  const psid = newPsid()
  await giveTokens(w, psid, 1)
  const id = randomUUID()
  await w.db.insertInto('notifications').values({
    id, page_id: w.pageId, topic_id: w.topic.id, psid, message: JSON.stringify({ text: 'hi' }), route: 'token', attempts: 1, tokens_refused: 2,
  }).execute()
  const claimed = await claimToken(w.db, { page_id: w.pageId, payload: w.topic.payload, psid, notification_id: id, leaseSeconds: 60 })
  await w.db.updateTable('notifications').set({ token_id: claimed!.id }).where('id', '=', id).execute()
  return { id, tokenId: claimed!.id }
}

function spent (n: { id: string, tokenId: string }, to: SettledState, status: Finishing['outcome']['status'], extra: Partial<Finishing['outcome']> = {}): Finishing {
  return {
    id: n.id,
    outcome: { status, route: 'token', httpStatus: status === 'sent' ? 201 : 502, tokenId: n.tokenId, ...extra },
    transition: { reservation: { token_id: n.tokenId, notification_id: n.id }, to },
  }
}

async function notifications (db: Database, ids: string[]) {
  const rows = await db.selectFrom('notifications').selectAll().where('id', 'in', ids).execute()
  const byId = new Map(rows.map((r) => [r.id, r]))
  return ids.map((id) => byId.get(id)!)
}

t.test('outcomes submitted in the same turn are one statement, each with its token move', async (t) => {
  const w = await world(t)
  const { counted, statements } = countStatements(w.db)
  const writer = new SendWriter(counted, 60)
  const [a, b, c] = [await pendingWithToken(w), await pendingWithToken(w), await pendingWithToken(w)]
  const windowId = randomUUID()
  await w.db.insertInto('notifications').values({
    id: windowId, page_id: w.pageId, topic_id: w.topic.id, psid: newPsid(), message: JSON.stringify({ text: 'hi' }), route: 'window', attempts: 1,
  }).execute()

  statements.length = 0
  const rows = await Promise.all([
    writer.finish(spent(a, 'used', 'sent', { graphMessageId: 'm.a', tokenState: 'used' })),
    writer.finish(spent(b, 'available', 'failed', { tokenState: 'released', problem: { code: 'graph_person_unavailable', detail: 'x' } })),
    writer.finish(spent(c, 'unconfirmed', 'unconfirmed', { tokenState: 'unconfirmed', tokensRefused: 3 })),
    writer.finish({ id: windowId, outcome: { status: 'sent', route: 'window', httpStatus: 201, graphMessageId: 'm.w' } }),
  ])
  t.equal(statements.length, 1, 'four outcomes, one statement')
  t.same(rows.map((r) => r?.status), ['sent', 'failed', 'unconfirmed', 'sent'], 'each caller gets its own row, in its order')
  t.same(await tokenStates(w.db, [a.tokenId, b.tokenId, c.tokenId]), ['used', 'available', 'unconfirmed'])

  const [na, nb, nc, nw] = await notifications(w.db, [a.id, b.id, c.id, windowId])
  t.match(na, { status: 'sent', graph_message_id: 'm.a', token_state: 'used', token_id: a.tokenId, tokens_refused: 2, http_status: 201 })
  t.ok(na.completed_at, 'completed')
  t.match(nb, { status: 'failed', token_state: 'released', error: { code: 'graph_person_unavailable' }, tokens_refused: 2 })
  t.match(nc, { status: 'unconfirmed', tokens_refused: 3 }, 'a count given is written; one not given is kept')
  t.match(nw, { status: 'sent', route: 'window', graph_message_id: 'm.w', token_id: null })
  const released = await w.db.selectFrom('optin_tokens').select(['notification_id', 'lease_expires_at']).where('id', '=', b.tokenId).executeTakeFirstOrThrow()
  t.same(released, { notification_id: null, lease_expires_at: null }, 'a released token is nobody\'s')
  const used = await w.db.selectFrom('optin_tokens').select(['notification_id']).where('id', '=', a.tokenId).executeTakeFirstOrThrow()
  t.equal(used.notification_id, a.id, 'a used token stays linked to its notification')
})

t.test('an outcome whose token was taken over is not written; the others in its statement are', async (t) => {
  const w = await world(t)
  const { counted, statements } = countStatements(w.db)
  const writer = new SendWriter(counted, 60)
  const [mine, stale] = [await pendingWithToken(w), await pendingWithToken(w)]
  // Lease recovery took the second token over for another notification.
  const other = randomUUID()
  await w.db.updateTable('optin_tokens').set({ notification_id: other }).where('id', '=', stale.tokenId).execute()

  statements.length = 0
  const [written, superseded] = await Promise.all([
    writer.finish(spent(mine, 'used', 'sent', { tokenState: 'used' })),
    writer.finish(spent(stale, 'used', 'sent', { tokenState: 'used' })),
  ])
  t.equal(statements.length, 1)
  t.equal(written?.status, 'sent')
  t.equal(superseded, undefined, 'nothing written for the stale holder')
  const [, n] = await notifications(w.db, [mine.id, stale.id])
  t.equal(n.status, 'pending', 'its notification is left to recovery')
  const token = await w.db.selectFrom('optin_tokens').select(['state', 'notification_id']).where('id', '=', stale.tokenId).executeTakeFirstOrThrow()
  t.same(token, { state: 'available', notification_id: other }, 'the new holder keeps the token')
})

t.test('an outcome the database refuses fails alone; the others are written', async (t) => {
  const w = await world(t)
  const writer = new SendWriter(w.db, 60)
  const good = [await pendingWithToken(w), await pendingWithToken(w)]
  const bad = await pendingWithToken(w)
  const outcomes = await Promise.allSettled([
    writer.finish(spent(good[0], 'used', 'sent', { tokenState: 'used' })),
    // jsonb holds no NUL character: Postgres refuses this outcome's problem.
    writer.finish(spent(bad, 'available', 'failed', { tokenState: 'released', problem: { code: 'x', detail: 'nul \u0000 here' } })),
    writer.finish(spent(good[1], 'used', 'sent', { tokenState: 'used' })),
  ])
  t.same(outcomes.map((o) => o.status), ['fulfilled', 'rejected', 'fulfilled'])
  t.match((outcomes[1] as PromiseRejectedResult).reason, { code: '22P05' })
  t.same(await tokenStates(w.db, [good[0].tokenId, bad.tokenId, good[1].tokenId]), ['used', 'held', 'used'],
    'the refused outcome moved nothing: its token stays held for recovery')
  t.same((await notifications(w.db, [good[0].id, bad.id, good[1].id])).map((n) => n.status), ['sent', 'pending', 'sent'])
})

t.test('starts and outcomes submitted in the same turn are one statement; a refused start fails alone', async (t) => {
  const w = await world(t)
  const { counted, statements } = countStatements(w.db)
  const writer = new SendWriter(counted, 60)
  const [done, released] = [await pendingWithToken(w), await pendingWithToken(w)]
  const fresh = newPsid()
  const [freshToken] = await giveTokens(w, fresh, 1)
  const bad = newPsid()
  const [badToken] = await giveTokens(w, bad, 1)

  statements.length = 0
  const [finished, start, other] = await Promise.all([
    writer.finish(spent(done, 'used', 'sent', { graphMessageId: 'm.done', tokenState: 'used' })),
    writer.start(starting({ topic_id: w.topic.id, psid: fresh, message: { text: 'hi' } })),
    writer.finish(spent(released, 'available', 'failed', { tokenState: 'released', problem: { code: 'graph_person_unavailable', detail: 'x' } })),
  ])
  t.equal(statements.length, 1, 'two outcomes and a start, one statement')
  t.match(finished, { id: done.id, status: 'sent', graph_message_id: 'm.done', token_state: 'used' })
  t.notOk('claim_token' in (finished ?? {}) || 'step' in (finished ?? {}), 'an outcome\'s row is the notification alone')
  t.match(start, { n: { status: 'pending', route: 'token', token_id: freshToken.id }, token: { id: freshToken.id, token: freshToken.token } })
  t.match(other, { id: released.id, status: 'failed', token_state: 'released' })
  t.same(await tokenStates(w.db, [done.tokenId, freshToken.id, released.tokenId]), ['used', 'held', 'available'])

  // A start Postgres refuses (jsonb holds no NUL) in a statement with an outcome: each is written
  // again alone, so the outcome is recorded and only the start fails.
  const again = await pendingWithToken(w)
  const settled = await Promise.allSettled([
    writer.start(starting({ topic_id: w.topic.id, psid: bad, message: { text: 'nul \u0000 here' } })),
    writer.finish(spent(again, 'used', 'sent', { tokenState: 'used' })),
  ])
  t.same(settled.map((o) => o.status), ['rejected', 'fulfilled'])
  t.match((settled[0] as PromiseRejectedResult).reason, { code: '22P05' })
  t.match((settled[1] as PromiseFulfilledResult<unknown>).value, { id: again.id, status: 'sent' })
  t.same(await tokenStates(w.db, [badToken.id, again.tokenId]), ['available', 'used'], 'the refused start claimed nothing')
})
