import t from 'tap'
import { sql } from 'kysely'
import { audienceQuery, normalizeAudience, WINDOW_SECONDS } from '../../src/domain/audience.js'
import { audienceEstimate, audiencePage } from '../../src/domain/token-store.js'
import { testDatabase, uniquePageId } from '../helper.js'

// The estimate and planning's pages are index-backed: on a Page with tens of thousands of tokens
// over many topics, people who wrote, and past messages (analyzed, as a running service's tables
// are), Postgres's plan reads the topic's range of the usable index and probes each person's
// facts by key, never a whole table. The plans are printed as the test's comments. With a filter on
// another topic Postgres may instead drive from that topic's (smaller) range and probe the audience's
// tokens by person (optin_tokens_subscriber_idx): also by key. A person's route (the estimate's
// EXISTS) is a hashed subplan over the topic's range: one pass, not one per person.

interface PlanNode { 'Node Type': string, 'Relation Name'?: string, Alias?: string, 'Index Name'?: string, Plans?: PlanNode[] }

function nodes (n: PlanNode): PlanNode[] {
  return [n, ...(n.Plans ?? []).flatMap(nodes)]
}

t.test('the estimate and a page of the audience read indexes only by key, with every filter', async (t) => {
  const { db } = await testDatabase()
  const pageId = uniquePageId()
  await db.insertInto('pages').values({ id: pageId, name: 'Big', access_token: 'EAA-x' }).execute()
  const main = await db.insertInto('topics').values({ page_id: pageId, name: 'main', title: 'main', payload: 'main' }).returning(['id', 'page_id', 'payload']).executeTakeFirstOrThrow()
  const other = await db.insertInto('topics').values({ page_id: pageId, name: 'other', title: 'other', payload: 'other' }).returning(['id']).executeTakeFirstOrThrow()
  // 60,000 tokens over 40 topics (1,500 people each), a quarter of them spent; 20,000 people who wrote; 20,000 messages;
  // and as many tokens on other Pages (a shared database).
  await sql`insert into optin_tokens (page_id, psid, payload, token, opted_in_at, expires_at, kind)
    select 'other-' || (i % 9), 'q' || i, 'o' || (i % 50), 'others-' || i, now(), now() + interval '300 days', 'one_time_notif'
      from generate_series(1, 100000) i`.execute(db)
  await sql`insert into optin_tokens (page_id, psid, payload, token, opted_in_at, expires_at, state, kind)
    select ${pageId}, 'p' || (i % 20000), case when i % 40 = 0 then 'main' when i % 40 = 1 then 'other' else 't' || (i % 40) end,
           'big-' || i, now() - make_interval(days => i % 300), now() + make_interval(days => 65 + i % 300),
           case when i % 4 = 0 then 'used' else 'available' end, case when i % 5 = 0 then 'notification_messages' else 'one_time_notif' end
      from generate_series(1, 60000) i`.execute(db)
  await sql`insert into subscribers (page_id, psid, first_seen_at, last_interaction_at)
    select ${pageId}, 'p' || i, now() - interval '100 days', now() - make_interval(hours => i % 1000) from generate_series(0, 19999) i`.execute(db)
  await sql`insert into notifications (page_id, topic_id, psid, message, status, route, created_at, updated_at, completed_at)
    select ${pageId}, ${other.id}::uuid, 'p' || (i % 20000), '{"text":"x"}', case when i % 3 = 0 then 'failed' else 'sent' end, 'token',
           now() - make_interval(hours => i % 2000), now(), now() - make_interval(hours => i % 2000)
      from generate_series(1, 20000) i`.execute(db)
  for (const table of ['optin_tokens', 'subscribers', 'notifications']) await sql`analyze ${sql.table(table)}`.execute(db)

  const day = 86_400_000
  const filter = normalizeAudience({
    opted_in_after: new Date(Date.now() - 200 * day).toISOString(), token_kind: 'one_time_notif', expiring_before: new Date(Date.now() + 330 * day).toISOString(),
    last_interaction_before: new Date(Date.now() - day).toISOString(), window: 'closed', holds_topics: [other.id], excludes_topics: [other.id].slice(1),
    not_notified_since: new Date(Date.now() - 7 * day).toISOString(), exclude_psids: ['p1', 'p2'],
  })
  const q = await audienceQuery(db, main, filter, true)
  for (const [name, statement] of [
    ['estimate, no filter', audienceEstimate({ page_id: pageId, payload: 'main' }, WINDOW_SECONDS, true)],
    ['estimate, every filter', audienceEstimate(q, WINDOW_SECONDS, true)],
    ['a page of the audience, every filter', audiencePage(q, WINDOW_SECONDS, 'p5000', 500)],
  ] as const) {
    const { rows: [row] } = await sql<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>`explain (format json) ${statement}`.execute(db)
    const plan = row['QUERY PLAN'][0].Plan
    const all = nodes(plan)
    const { rows: text } = await sql<{ 'QUERY PLAN': string }>`explain ${statement}`.execute(db)
    t.comment(`${name}:\n${text.map((r) => r['QUERY PLAN']).join('\n')}`)
    t.same(all.filter((n) => n['Node Type'] === 'Seq Scan').map((n) => n['Relation Name']), [], `${name}: no table read whole`)
    const tokenReads = all.filter((n) => n['Relation Name'] === 'optin_tokens' && n['Node Type'] !== 'Bitmap Heap Scan')
    t.same(tokenReads.filter((n) => !n['Index Name']?.startsWith('optin_tokens_')).map((n) => n['Node Type']), [], `${name}: every read of tokens is through an index`)
    if (name === 'estimate, no filter') {
      const indexOf = (n: PlanNode) => n['Index Name'] ?? n.Plans?.[0]?.['Index Name']
      t.same(all.filter((n) => n.Alias === 'o').map(indexOf), ['optin_tokens_usable_idx'], `${name}: the topic's range of the usable index`)
    } else {
      t.ok(all.some((n) => n['Relation Name'] === 'subscribers' && n['Index Name'] === 'subscribers_pkey'), `${name}: a person's window by key`)
      t.ok(all.some((n) => n['Index Name'] === 'notifications_page_psid_sent_idx'), `${name}: a person's messages through their index`)
    }
  }
})
