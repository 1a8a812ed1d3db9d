import t from 'tap'
import { sql } from 'kysely'
import { recoverLeases } from '../../src/domain/recovery.js'
import { sendNotification } from '../../src/domain/send.js'
import type { GraphClient } from '../../src/graph/client.js'
import { giveTokens, newPsid, sendDeps, tokenStates, world } from '../fixtures/otn.js'
import { API_KEY } from '../helper.js'

// The send path (src/domain/send.ts) through its public entry points: what survives a crash between
// its two statements, and input the database refuses.

t.test('a process that dies after the claiming insert, before Meta is asked: recovery sends that token once', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 2)
  // The process "dies" as it is about to send: the Graph call never returns.
  const dead: GraphClient = { sendMessage: () => new Promise(() => {}), close: async () => {} }
  void sendNotification(sendDeps(t, w, w.db, dead), { topic_id: w.topic.id, psid, message: { text: 'lost' } })
  let n
  for (let i = 0; i < 100 && !n; i++) {
    n = await w.db.selectFrom('notifications').selectAll().where('psid', '=', psid).executeTakeFirst()
    if (!n) await new Promise((resolve) => setTimeout(resolve, 20))
  }
  t.match(n, { status: 'pending', route: 'token', attempts: 1, token_id: tokens[0].id }, 'claim and insert were one statement: the row names its token')
  t.same(await tokenStates(w.db, tokens.map((x) => x.id)), ['held', 'available'])

  await w.db.updateTable('optin_tokens').set({ lease_expires_at: sql`now() - interval '1 second'` }).where('id', '=', tokens[0].id).execute()
  const resolved = await recoverLeases(sendDeps(t, w, w.db))
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
