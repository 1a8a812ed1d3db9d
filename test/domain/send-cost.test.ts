import { DEFAULT_GRAPH_VERSION } from '../../src/graph/versions.js'
import t, { type Test } from 'tap'
import { sql } from 'kysely'
import { recoverLeases } from '../../src/domain/leases.js'
import { sendNotification, type SendDeps } from '../../src/domain/notifications.js'
import { createGraphClient, type GraphClient } from '../../src/graph/client.js'
import { APP_SECRET, giveTokens, newPsid, openWindow, tokenStates, world, type World } from '../fixtures/otn.js'
import { API_KEY, countStatements } from '../helper.js'

// What a send costs the database: the hot paths are two statements, each one round trip and one
// commit (read + claim + insert; outcome + token). A change that adds a round trip to every send
// shows up here, not only in the benchmark.


function depsFor (t: Test, w: World, db: SendDeps['db'], graph?: GraphClient): SendDeps {
  const client = graph ?? createGraphClient({ baseUrl: w.base, version: DEFAULT_GRAPH_VERSION, appSecret: APP_SECRET, timeoutMs: 2000, connectTimeoutMs: 1000 })
  t.teardown(() => client.close())
  return { db, graph: client, config: { TOKEN_LEASE_SECONDS: 60, GRAPH_API_MAX_RETRIES: 2, GRAPH_API_TIMEOUT_MS: 2000 } }
}

t.test('a token send is two statements; a window send two; no token one', async (t) => {
  const w = await world(t)
  const { counted: db, statements } = countStatements(w.db)
  const deps = depsFor(t, w, db)
  const message = { text: 'back in stock' }

  const tokenPsid = newPsid()
  const tokens = await giveTokens(w, tokenPsid, 1)
  statements.length = 0
  const sent = await sendNotification(deps, { topic_id: w.topic.id, psid: tokenPsid, message, idempotency_key: `cost-${tokenPsid}` })
  t.match(sent, { httpStatus: 201, notification: { status: 'sent', route: 'token', attempts: 1, token_state: 'used' } })
  t.equal(statements.length, 2, `token route: ${statements.join(', ')}`)
  t.same(await tokenStates(w.db, [tokens[0].id]), ['used'])

  const windowPsid = newPsid()
  await openWindow(w, windowPsid)
  statements.length = 0
  const windowed = await sendNotification(deps, { topic_id: w.topic.id, psid: windowPsid, message })
  t.match(windowed, { httpStatus: 201, notification: { status: 'sent', route: 'window', attempts: 1 } })
  t.equal(statements.length, 2, `window route: ${statements.join(', ')}`)

  statements.length = 0
  const none = await sendNotification(deps, { topic_id: w.topic.id, psid: newPsid(), message })
  t.match(none, { httpStatus: 409, notification: { status: 'no_token', route: 'token', attempts: 0, http_status: 409 } })
  t.equal(statements.length, 1, 'no token: recorded final by the first statement')

  statements.length = 0
  const again = await sendNotification(deps, { topic_id: w.topic.id, psid: tokenPsid, message, idempotency_key: `cost-${tokenPsid}` })
  t.match(again, { replayed: true, httpStatus: 201, notification: { id: sent.notification.id } })
  t.equal(statements.length, 2, 'a replay: the first statement finds the key and inserts nothing, then the stored notification is read')
  t.equal(w.emulator.requests.length, 2, 'two messages went to Meta in all')
})

t.test('a process that dies after the claiming insert, before Meta is asked: recovery sends that token once', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 2)
  // The process "dies" as it is about to send: the Graph call never returns.
  const dead: GraphClient = { sendMessage: () => new Promise(() => {}), close: async () => {} }
  void sendNotification(depsFor(t, w, w.db, dead), { topic_id: w.topic.id, psid, message: { text: 'lost' } })
  let n
  for (let i = 0; i < 100 && !n; i++) {
    n = await w.db.selectFrom('notifications').selectAll().where('psid', '=', psid).executeTakeFirst()
    if (!n) await new Promise((resolve) => setTimeout(resolve, 20))
  }
  t.match(n, { status: 'pending', route: 'token', attempts: 1, token_id: tokens[0].id }, 'claim and insert were one statement: the row names its token')
  t.same(await tokenStates(w.db, tokens.map((x) => x.id)), ['held', 'available'])

  await w.db.updateTable('optin_tokens').set({ lease_expires_at: sql`now() - interval '1 second'` }).where('id', '=', tokens[0].id).execute()
  const resolved = await recoverLeases(depsFor(t, w, w.db))
  t.equal(resolved, 1)
  const final = await w.db.selectFrom('notifications').selectAll().where('id', '=', n!.id).executeTakeFirstOrThrow()
  t.match(final, { status: 'sent', route: 'token', token_state: 'used', attempts: 2 })
  t.same(await tokenStates(w.db, tokens.map((x) => x.id)), ['used', 'available'], 'the second token is untouched')
  t.equal(w.emulator.inbox(w.pageId, psid).length, 1, 'delivered once')
  t.same(w.emulator.doubleSpends(), [])
})

t.test('a message the database refuses (a NUL character) is a 400, and the token stays usable', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 1)
  const res = await w.app.inject({
    method: 'POST', url: '/v1/notifications', headers: { authorization: `Bearer ${API_KEY}` },
    payload: { topic_id: w.topic.id, psid, message: { text: 'a\u0000b' } },
  })
  t.equal(res.statusCode, 400, res.body)
  t.match(res.json(), { status: 400, code: 'invalid_characters' })
  t.same(await tokenStates(w.db, [tokens[0].id]), ['available'], 'the claim was undone with the statement')
  t.equal(w.emulator.requests.length, 0, 'nothing went to Meta')
  const rows = await w.db.selectFrom('notifications').select('id').where('psid', '=', psid).execute()
  t.same(rows, [], 'nothing recorded')
})
