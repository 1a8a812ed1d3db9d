import t, { type Test } from 'tap'
import { sql } from 'kysely'
import { Keyring, newEncryptionKey, parseEncryptionKeys, useKeyring } from '../../src/crypto/secret-box.js'
import { recoverLeases } from '../../src/domain/recovery.js'
import { sendNotification } from '../../src/domain/send.js'
import { rotateTokenBatch } from '../../src/domain/token-store.js'
import type { GraphClient } from '../../src/graph/client.js'
import { heldOpen } from '../fixtures/locks.js'
import { giveTokens, newPsid, notify, recurringEvent, sendDeps, tokenStates, world } from '../fixtures/otn.js'
import { API_KEY, databaseKind, TEST_ENCRYPTION_KEYS } from '../helper.js'

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

/**
 * A rotation batch of `keyring` rewriting the one token `tokenId` on a connection of its own, left
 * uncommitted until `release()`: its row stays locked, as a running batch's rows are.
 */
async function rotationHolding (t: Test, tokenId: string, keyring: Keyring) {
  return heldOpen(t, (trx) => rotateTokenBatch(trx, keyring, 1, { id: String(BigInt(tokenId) - 1n) }))
}

/** Step 1 of a rotation done: the app knows the new key first (docs/SECURITY.md), so a batch rewrites every token. */
function nextKeyring (t: Test): Keyring {
  const keyring = new Keyring([...parseEncryptionKeys(newEncryptionKey('busy-next')).keys, ...parseEncryptionKeys(TEST_ENCRYPTION_KEYS).keys])
  useKeyring(keyring)
  t.teardown(() => useKeyring(new Keyring(parseEncryptionKeys(TEST_ENCRYPTION_KEYS).keys)))
  return keyring
}

const onePostgres = { skip: databaseKind !== 'postgres' && 'PGlite has one connection' }

t.test('a send whose token a rotation batch holds for a moment claims it again and sends with it (Postgres)', onePostgres, async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const [token] = await giveTokens(w, psid, 1)
  const keyring = nextKeyring(t)
  const rotation = await rotationHolding(t, token.id, keyring)
  const sending = notify(w.app, { topic_id: w.topic.id, psid, message: { text: 'while rotating' } })
  await new Promise((resolve) => setTimeout(resolve, 60))
  const meanwhile = await w.db.selectFrom('notifications').select(['status']).where('page_id', '=', w.pageId).where('psid', '=', psid).execute()
  t.same(meanwhile, [], 'while the row is locked the send has recorded nothing: not no_token, it waits to claim again')
  rotation.release()
  t.equal((await rotation.done).changed, 1, 'the batch rewrote the token')
  const res = await sending
  t.equal(res.statusCode, 201, res.body)
  t.match(res.json(), { status: 'sent', route: 'token', token_state: 'used', attempts: 1 })
  t.same(await tokenStates(w.db, [token.id]), ['used'])
  t.equal(w.emulator.inbox(w.pageId, psid).length, 1, 'delivered once, with the token the rotation re-sealed')
  t.equal((await w.db.selectFrom('notifications').select('id').where('page_id', '=', w.pageId).where('psid', '=', psid).execute()).length, 1, 'one notification')
})

for (const kind of ['one_time_notif', 'notification_messages'] as const) {
  t.test(`a ${kind} token locked through every claim of a send: 503 token_busy, nothing spent, not ${kind === 'one_time_notif' ? 'no_token' : 'recurring_cooldown'} (Postgres)`, onePostgres, async (t) => {
    const w = await world(t, { env: { MAINTENANCE_INTERVAL_SECONDS: '86400' } })
    const psid = newPsid()
    if (kind === 'one_time_notif') await giveTokens(w, psid, 1)
    else await recurringEvent(w, psid, { at: Date.now() - 60_000 })
    const keyring = nextKeyring(t)
    const [row] = await w.db.selectFrom('optin_tokens').select(['id']).where('page_id', '=', w.pageId).where('psid', '=', psid).execute()
    const rotation = await rotationHolding(t, row.id, keyring)
    const res = await notify(w.app, { topic_id: w.topic.id, psid, message: { text: 'while rotating' } })
    rotation.release()
    t.equal((await rotation.done).changed, 1, 'the batch rewrote the token')
    t.equal(res.statusCode, 503, res.body)
    t.equal(res.headers['retry-after'], '1')
    t.match(res.json(), { code: 'token_busy', notification: { status: 'failed', attempts: 0, token_id: null } })
    t.equal(w.emulator.inbox(w.pageId, psid).length, 0, 'nothing went to Meta')
    t.same(await tokenStates(w.db, [row.id]), ['available'], 'the token is kept')
    const again = await notify(w.app, { topic_id: w.topic.id, psid, message: { text: 'after the batch' } })
    t.equal(again.statusCode, 201, again.body)
    t.match(again.json(), { status: 'sent', route: kind === 'one_time_notif' ? 'token' : 'recurring' })
    t.equal((await w.db.selectFrom('notifications').select('token_id').where('id', '=', again.json().id).executeTakeFirstOrThrow()).token_id, row.id, 'with the token kept')
  })
}

t.test('after Meta refuses a token, the next one a rotation batch holds for a moment is claimed again and sent (Postgres)', onePostgres, async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const [bogus, good] = await giveTokens(w, psid, 2, { token: (i) => (i === 0 ? `bogus-${psid}` : w.emulator.issueToken(w.pageId, psid, w.topic.payload)) })
  const keyring = nextKeyring(t)
  const rotation = await rotationHolding(t, good.id, keyring)
  const sending = notify(w.app, { topic_id: w.topic.id, psid, message: { text: 'next token' } })
  for (let i = 0; i < 100 && (await tokenStates(w.db, [bogus.id]))[0] !== 'invalid'; i++) await new Promise((resolve) => setTimeout(resolve, 10))
  t.same(await tokenStates(w.db, [bogus.id, good.id]), ['invalid', 'available'], 'Meta refused the first; the second is locked, not held')
  await new Promise((resolve) => setTimeout(resolve, 30))
  const meanwhile = await w.db.selectFrom('notifications').select(['status']).where('page_id', '=', w.pageId).where('psid', '=', psid).executeTakeFirstOrThrow()
  t.equal(meanwhile.status, 'pending', 'not ended no_token while the person holds a token')
  rotation.release()
  await rotation.done
  const res = await sending
  t.equal(res.statusCode, 201, res.body)
  t.match(res.json(), { status: 'sent', tokens_refused: 1, token_state: 'used' })
  t.same(await tokenStates(w.db, [bogus.id, good.id]), ['invalid', 'used'])
})
