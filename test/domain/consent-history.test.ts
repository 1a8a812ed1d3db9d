import t from 'tap'
import { sql } from 'kysely'
import { personHistory } from '../../src/domain/consent-history.js'
import { recordOutcomes, startSends } from '../../src/domain/send-steps.js'
import { expireTokens } from '../../src/domain/token-store.js'
import { countStatements } from '../helper.js'
import { giveTokens, newPsid, starting, world } from '../fixtures/otn.js'

// Where tokens settle in bulk, the ledger is written by the same statement, one INSERT for the batch.

t.test('the expiry sweep writes one token_expired entry per token, in the statement of its batch, and never twice', async (t) => {
  const w = await world(t)
  const people = [newPsid(), newPsid(), newPsid()]
  for (const psid of people) await giveTokens(w, psid, 2)
  await sql`update optin_tokens set expires_at = now() - interval '1 second' where page_id = ${w.pageId}`.execute(w.db)
  const { counted, statements } = countStatements(w.db)
  t.equal(await expireTokens(counted, 4), 6)
  t.equal(statements.length, 2, 'two batches of at most four: two statements, each moving its tokens and writing their entries')
  for (const psid of people) {
    const { items } = await personHistory(w.db, w.pageId, psid)
    t.same(items.map((e) => [e.type, e.payload]), [['token_expired', w.topic.payload], ['token_expired', w.topic.payload]])
  }
  t.equal(await expireTokens(w.db), 0)
  const { rows: [{ n }] } = await sql<{ n: number }>`select count(*)::int as n from consent_history where page_id = ${w.pageId}`.execute(w.db)
  t.equal(n, 6, 'a second sweep writes nothing')
})

t.test('a batch of send outcomes writes its notifications\' and tokens\' entries in its one statement', async (t) => {
  const w = await world(t)
  const people = [newPsid(), newPsid(), newPsid()]
  for (const psid of people) await giveTokens(w, psid, 1)
  const started = await startSends(w.db, 60, people.map((psid) => starting({ topic_id: w.topic.id, psid, message: { text: 'hi' }, use_window: false })))
  const { counted, statements } = countStatements(w.db)
  const written = await recordOutcomes(counted, started.map((s, i) => ({
    id: s.n!.id, page_id: w.pageId, status: i === 2 ? 'failed' : 'sent', route: 'token', graphMessageId: i === 2 ? null : `m_${i}`,
    tokenId: s.token!.id, tokenState: i === 2 ? 'invalid' : 'used',
    ...(i === 2 ? { problem: { code: 'graph_token_refused', detail: 'refused' } } : {}),
    move: { hold: { page_id: w.pageId, token_id: s.token!.id, notification_id: s.n!.id }, to: i === 2 ? 'invalid' : 'used' },
  })))
  t.equal(written.filter(Boolean).length, 3)
  t.equal(statements.length, 1, 'one statement for three outcomes, their token moves and their entries')
  const types = await Promise.all(people.map(async (psid) => (await personHistory(w.db, w.pageId, psid)).items.map((e) => [e.type, e.status, e.notification_id === started[people.indexOf(psid)].n!.id])))
  t.same(types, [
    [['notification_sent', 'sent', true], ['token_used', null, true]],
    [['notification_sent', 'sent', true], ['token_used', null, true]],
    [['notification_failed', 'failed', true], ['token_invalid', null, true]],
  ], 'each notification and the token it held, named by the notification')
})
