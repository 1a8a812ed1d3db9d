import { DEFAULT_GRAPH_VERSION } from '../../src/graph/versions.js'
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { createGraphClient } from '../../src/graph/client.js'
import { batchedSteps, type Finishing } from '../../src/domain/send-steps.js'
import { sendNotification, type SendDeps } from '../../src/domain/send.js'
import { claimFree } from '../fixtures/tokens.js'
import type { TokenOutcome } from '../../src/domain/lifecycle.js'
import type { Database } from '../../src/db/database.js'
import { countStatements } from '../helper.js'
import { APP_SECRET, giveTokens, newPsid, openWindow, starting, tokenStates, world, type World } from '../fixtures/otn.js'

// The two statements of a send through the group commit (batchedSteps). Starts in the same turn
// share one statement, each with its own claim, except two for the same person's topic or with
// the same Idempotency-Key; outcomes submitted while a statement runs are recorded together, each
// with its token's move, each only where its sender still holds the notification and token, and
// one the database refuses does not take the others down.

const message = { text: 'back in stock' }
async function claimedBy (w: World, tokenId: string): Promise<string | null> {
  const row = await w.db.selectFrom('optin_tokens').select('notification_id').where('id', '=', tokenId).executeTakeFirstOrThrow()
  return row.notification_id
}

t.test('sends started in the same turn are one statement, each with its own outcome', async (t) => {
  const w = await world(t)
  const { counted, statements } = countStatements(w.db)
  const writer = batchedSteps(counted, 60)
  const [p1, p2, windowed, none] = [newPsid(), newPsid(), newPsid(), newPsid()]
  const [t1] = await giveTokens(w, p1, 1)
  const [t2a, t2b] = await giveTokens(w, p2, 2)
  await openWindow(w, windowed)
  await giveTokens(w, windowed, 1)

  statements.length = 0
  const items = [
    starting({ topic_id: w.topic.id, psid: p1, message }),
    starting({ topic_id: w.topic.id, psid: p2, message, idempotency_key: `k-${p2}` }),
    starting({ topic_id: w.topic.id, psid: windowed, message }),
    starting({ topic_id: w.topic.id, psid: none, message }),
    starting({ topic_id: randomUUID(), psid: p1, message }),
  ]
  const started = await Promise.all(items.map((i) => writer.start(i)))
  t.equal(statements.length, 1, 'five sends, one statement')

  t.match(started[0], { n: { id: items[0].id, status: 'pending', route: 'token', attempts: 1, token_id: t1.id }, token: { id: t1.id, token: t1.token } })
  t.equal(await claimedBy(w, t1.id), items[0].id)
  t.match(started[1], { n: { id: items[1].id, idempotency_key: `k-${p2}`, token_id: t2a.id }, token: { id: t2a.id } }, 'the soonest-expiring token')
  t.same(await tokenStates(w.db, [t2a.id, t2b.id]), ['held', 'available'])
  t.match(started[2], { n: { status: 'pending', route: 'window', attempts: 1, token_id: null } })
  t.notOk(started[2].token, 'inside the window no token is claimed')
  t.match(started[3], { n: { status: 'no_token', route: 'token', attempts: 0, error: { code: 'no_token' } } })
  t.same(started[4], {}, 'an unknown topic: nothing')
  t.same(started.slice(0, 4).map((s) => s.context?.page_id), [w.pageId, w.pageId, w.pageId, w.pageId])
})

t.test('two sends for one person\'s topic, or with one key, never share a statement', async (t) => {
  const w = await world(t)
  const { counted, statements } = countStatements(w.db)
  const writer = batchedSteps(counted, 60, 100, 1)
  const person = newPsid()
  const tokens = await giveTokens(w, person, 1)
  const other = newPsid()
  await giveTokens(w, other, 1)

  statements.length = 0
  const same = [starting({ topic_id: w.topic.id, psid: person, message }), starting({ topic_id: w.topic.id, psid: person, message })]
  const keyed = [
    starting({ topic_id: w.topic.id, psid: other, message, idempotency_key: `dup-${other}` }),
    starting({ topic_id: w.topic.id, psid: newPsid(), message, idempotency_key: `dup-${other}` }),
  ]
  const [a, b, k1, k2] = await Promise.all([...same, ...keyed].map((i) => writer.start(i)))
  t.equal(statements.length, 2, 'the second of each pair waits for the next statement')
  t.match(a, { n: { status: 'pending', token_id: tokens[0].id } })
  t.match(b, { n: { status: 'no_token' } }, 'one token: the second send finds none, it is not handed out twice')
  t.match(k1, { n: { id: keyed[0].id, status: 'pending' } })
  t.same(k2, { context: { ...k1.context, existing_id: keyed[0].id } }, 'the same key later: the earlier request is found, nothing inserted')
})

t.test('a send the database refuses fails alone; the others start', async (t) => {
  const w = await world(t)
  const writer = batchedSteps(w.db, 60)
  const people = [newPsid(), newPsid()]
  const tokens = [...await giveTokens(w, people[0], 1), ...await giveTokens(w, people[1], 1)]
  const bad = newPsid()
  const [badToken] = await giveTokens(w, bad, 1)
  const outcomes = await Promise.allSettled([
    writer.start(starting({ topic_id: w.topic.id, psid: people[0], message })),
    // jsonb holds no NUL character: Postgres refuses this message.
    writer.start(starting({ topic_id: w.topic.id, psid: bad, message: { text: 'nul \u0000 here' } })),
    writer.start(starting({ topic_id: w.topic.id, psid: people[1], message })),
  ])
  t.same(outcomes.map((o) => o.status), ['fulfilled', 'rejected', 'fulfilled'])
  t.match((outcomes[1] as PromiseRejectedResult).reason, { code: '22P05' })
  t.same(await tokenStates(w.db, [tokens[0].id, badToken.id, tokens[1].id]), ['held', 'available', 'held'],
    'the refused send claimed nothing')
})

t.test('concurrent sends through the group commit: each person gets exactly one message, each token spent once', async (t) => {
  const w = await world(t)
  const { counted, statements } = countStatements(w.db)
  const graph = createGraphClient({ baseUrl: w.base, version: DEFAULT_GRAPH_VERSION, appSecret: APP_SECRET, timeoutMs: 2000, connectTimeoutMs: 1000 })
  t.teardown(() => graph.close())
  const deps: SendDeps = {
    db: counted, graph, config: { TOKEN_LEASE_SECONDS: 60, GRAPH_API_MAX_RETRIES: 2 },
    steps: batchedSteps(counted, 60),
  }
  const people = Array.from({ length: 12 }, () => newPsid())
  const tokens = []
  for (const p of people) tokens.push(...await giveTokens(w, p, 1))
  statements.length = 0
  // Each person twice: one token each, so exactly one of the two is sent.
  const results = await Promise.all([...people, ...people].map((psid) => sendNotification(deps, { topic_id: w.topic.id, psid, message })))
  t.equal(results.filter((r) => r.code === 'sent').length, 12, 'twelve sent')
  t.equal(results.filter((r) => r.notification.status === 'no_token').length, 12, 'twelve found no token left')
  t.same(await tokenStates(w.db, tokens.map((x) => x.id)), tokens.map(() => 'used'))
  t.equal(w.emulator.requests.length, 12, 'Meta got twelve messages')
  t.equal(new Set(w.emulator.requests.map((r) => r.recipient?.one_time_notif_token)).size, 12, 'twelve different tokens')
  t.ok(statements.length < 36, `fewer statements than one per send and outcome (${statements.length} for 24 sends)`)
})


/** A pending notification on the token route holding one claimed token, as startSend leaves it. */
async function pendingWithToken (w: World): Promise<{ id: string, pageId: string, tokenId: string }> {
  const psid = newPsid()
  await giveTokens(w, psid, 1)
  const id = randomUUID()
  await w.db.insertInto('notifications').values({
    id, page_id: w.pageId, topic_id: w.topic.id, psid, message: JSON.stringify({ text: 'hi' }), route: 'token', attempts: 1, tokens_refused: 2,
  }).execute()
  const claimed = await claimFree(w.db, { page_id: w.pageId, payload: w.topic.payload, psid, notification_id: id, leaseSeconds: 60 })
  await w.db.updateTable('notifications').set({ token_id: claimed!.id }).where('id', '=', id).execute()
  return { id, pageId: w.pageId, tokenId: claimed!.id }
}

function spent (n: { id: string, pageId: string, tokenId: string }, to: TokenOutcome, status: Finishing['status'], extra: Partial<Finishing> = {}): Finishing {
  return {
    id: n.id, page_id: n.pageId, status, route: 'token', tokenId: n.tokenId, ...extra,
    move: { hold: { page_id: n.pageId, token_id: n.tokenId, notification_id: n.id }, to },
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
  const writer = batchedSteps(counted, 60)
  const [a, b, c] = [await pendingWithToken(w), await pendingWithToken(w), await pendingWithToken(w)]
  const windowId = randomUUID()
  await w.db.insertInto('notifications').values({
    id: windowId, page_id: w.pageId, topic_id: w.topic.id, psid: newPsid(), message: JSON.stringify({ text: 'hi' }), route: 'window', attempts: 1,
  }).execute()

  statements.length = 0
  const rows = await Promise.all([
    writer.finish(spent(a, 'used', 'sent', { graphMessageId: 'm.a', tokenState: 'used' })),
    writer.finish(spent(b, 'released', 'failed', { tokenState: 'released', problem: { code: 'graph_person_unavailable', detail: 'x' } })),
    writer.finish(spent(c, 'unconfirmed', 'unconfirmed', { tokenState: 'unconfirmed', tokensRefused: 3 })),
    writer.finish({ id: windowId, page_id: w.pageId, status: 'sent', route: 'window', graphMessageId: 'm.w' }),
  ])
  t.equal(statements.length, 1, 'four outcomes, one statement')
  t.same(rows.map((r) => r?.status), ['sent', 'failed', 'unconfirmed', 'sent'], 'each caller gets its own row, in its order')
  t.same(await tokenStates(w.db, [a.tokenId, b.tokenId, c.tokenId]), ['used', 'available', 'unconfirmed'])

  const [na, nb, nc, nw] = await notifications(w.db, [a.id, b.id, c.id, windowId])
  t.match(na, { status: 'sent', graph_message_id: 'm.a', token_state: 'used', token_id: a.tokenId, tokens_refused: 2 })
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
  const writer = batchedSteps(counted, 60)
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
  const writer = batchedSteps(w.db, 60)
  const good = [await pendingWithToken(w), await pendingWithToken(w)]
  const bad = await pendingWithToken(w)
  const outcomes = await Promise.allSettled([
    writer.finish(spent(good[0], 'used', 'sent', { tokenState: 'used' })),
    // jsonb holds no NUL character: Postgres refuses this outcome's problem.
    writer.finish(spent(bad, 'released', 'failed', { tokenState: 'released', problem: { code: 'x', detail: 'nul \u0000 here' } })),
    writer.finish(spent(good[1], 'used', 'sent', { tokenState: 'used' })),
  ])
  t.same(outcomes.map((o) => o.status), ['fulfilled', 'rejected', 'fulfilled'])
  t.match((outcomes[1] as PromiseRejectedResult).reason, { code: '22P05' })
  t.same(await tokenStates(w.db, [good[0].tokenId, bad.tokenId, good[1].tokenId]), ['used', 'held', 'used'],
    'the refused outcome moved nothing: its token stays held for recovery')
  t.same((await notifications(w.db, [good[0].id, bad.id, good[1].id])).map((n) => n.status), ['sent', 'pending', 'sent'])
})

t.test('starts and outcomes submitted in the same turn: one statement for the starts, one for the outcomes; a refused start fails alone', async (t) => {
  const w = await world(t)
  const { counted, statements } = countStatements(w.db)
  const writer = batchedSteps(counted, 60)
  const [done, released] = [await pendingWithToken(w), await pendingWithToken(w)]
  const fresh = newPsid()
  const [freshToken] = await giveTokens(w, fresh, 1)
  const bad = newPsid()
  const [badToken] = await giveTokens(w, bad, 1)

  statements.length = 0
  const [finished, start, other] = await Promise.all([
    writer.finish(spent(done, 'used', 'sent', { graphMessageId: 'm.done', tokenState: 'used' })),
    writer.start(starting({ topic_id: w.topic.id, psid: fresh, message: { text: 'hi' } })),
    writer.finish(spent(released, 'released', 'failed', { tokenState: 'released', problem: { code: 'graph_person_unavailable', detail: 'x' } })),
  ])
  t.equal(statements.length, 2, 'two outcomes and a start: one statement each kind')
  t.match(finished, { id: done.id, status: 'sent', graph_message_id: 'm.done', token_state: 'used' })
  t.match(start, { n: { status: 'pending', route: 'token', token_id: freshToken.id }, token: { id: freshToken.id, token: freshToken.token } })
  t.match(other, { id: released.id, status: 'failed', token_state: 'released' })
  t.same(await tokenStates(w.db, [done.tokenId, freshToken.id, released.tokenId]), ['used', 'held', 'available'])

  // A start Postgres refuses (jsonb holds no NUL) beside an outcome: only the start fails.
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
