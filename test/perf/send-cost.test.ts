import t from 'tap'
import { sendNotification } from '../../src/domain/send.js'
import { giveTokens, newPsid, openWindow, sendDeps, tokenStates, world } from '../fixtures/otn.js'
import { countStatements } from '../helper.js'

// What a send costs the database: the hot paths are two statements, each one round trip and one
// commit (read + claim + insert; outcome + token). A change that adds a round trip to every send
// shows up here, not only in the benchmark.


t.test('a token send is two statements; a window send two; no token one', async (t) => {
  const w = await world(t)
  const { counted: db, statements } = countStatements(w.db)
  const deps = sendDeps(t, w, db)
  const message = { text: 'back in stock' }

  const tokenPsid = newPsid()
  const tokens = await giveTokens(w, tokenPsid, 1)
  statements.length = 0
  const sent = await sendNotification(deps, { topic_id: w.topic.id, psid: tokenPsid, message, idempotency_key: `cost-${tokenPsid}` })
  t.match(sent, { code: 'sent', notification: { status: 'sent', route: 'token', attempts: 1, token_state: 'used' } })
  t.equal(statements.length, 2, `token route: ${statements.join(', ')}`)
  t.same(await tokenStates(w.db, [tokens[0].id]), ['used'])

  const windowPsid = newPsid()
  await openWindow(w, windowPsid)
  statements.length = 0
  const windowed = await sendNotification(deps, { topic_id: w.topic.id, psid: windowPsid, message })
  t.match(windowed, { code: 'sent', notification: { status: 'sent', route: 'window', attempts: 1 } })
  t.equal(statements.length, 2, `window route: ${statements.join(', ')}`)

  statements.length = 0
  const none = await sendNotification(deps, { topic_id: w.topic.id, psid: newPsid(), message })
  t.match(none, { code: 'no_token', notification: { status: 'no_token', route: 'token', attempts: 0 } })
  t.equal(statements.length, 1, 'no token: recorded final by the first statement')

  statements.length = 0
  const again = await sendNotification(deps, { topic_id: w.topic.id, psid: tokenPsid, message, idempotency_key: `cost-${tokenPsid}` })
  t.match(again, { replayed: true, code: 'sent', notification: { id: sent.notification.id } })
  t.equal(statements.length, 2, 'a replay: the first statement finds the key and inserts nothing, then the stored notification is read')
  t.equal(w.emulator.requests.length, 2, 'two messages went to Meta in all')
})

t.test('a send by a key limited to some Pages is still two statements, its created_by in the insert; another Page\'s topic is not found by the first', async (t) => {
  const w = await world(t)
  const { counted: db, statements } = countStatements(w.db)
  const deps = sendDeps(t, w, db)
  const psid = newPsid()
  await giveTokens(w, psid, 1)
  statements.length = 0
  const sent = await sendNotification(deps, { topic_id: w.topic.id, psid, message: { text: 'scoped' }, created_by: 'shop-a', pages: ['1', w.pageId] })
  t.match(sent, { code: 'sent', notification: { status: 'sent', route: 'token', created_by: 'shop-a' } })
  t.equal(statements.length, 2, `scoped token route: ${statements.join(', ')}`)

  statements.length = 0
  await t.rejects(sendNotification(deps, { topic_id: w.topic.id, psid, message: { text: 'foreign' }, pages: ['1'] }), { code: 'topic_not_found' })
  t.equal(statements.length, 1, 'a topic of another Page: one statement, nothing written')
  t.equal(w.emulator.requests.length, 1, 'nothing more went to Meta')
})
