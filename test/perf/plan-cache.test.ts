import t from 'tap'
import { randomUUID } from 'node:crypto'
import { sql } from 'kysely'
import { openDatabase } from '../../src/db/database.js'
import { recordOutcomes, startSends, type Finishing, type Starting } from '../../src/domain/send-steps.js'
import { testDatabase } from '../helper.js'
import { giveTokens, newPsid, world } from '../fixtures/otn.js'

// A send's two statements are prepared once per connection (parsed once) and planned for each
// execution's own parameters (src/db/database.ts: plan_cache_mode): a generic plan, made once and
// kept, was made while the tables were small and scanned a whole Page once they were not. The counts
// are Postgres's own (pg_prepared_statements), on one connection. Postgres only (test/perf runs in
// the Postgres pass).

t.test('the two statements of a send are prepared once per connection and planned for each execution', async (t) => {
  const w = await world(t)
  const { url } = await testDatabase()
  const one = await openDatabase({ databaseUrl: url, poolSize: 1 })
  t.teardown(() => one.close())
  // Tables of some size, as in a service that has been running: on near-empty ones every plan is
  // cheap and Postgres would take the generic plan anyway.
  await sql`insert into optin_tokens (page_id, psid, payload, token, opted_in_at, expires_at)
    select ${w.pageId}, 'other' || i, ${w.topic.payload}, 'plan-cache-' || i || '-' || md5(random()::text), now(), now() + interval '300 days'
      from generate_series(1, 50000) i`.execute(w.db)
  await sql`analyze optin_tokens`.execute(w.db)
  await sql`analyze notifications`.execute(w.db)
  const runs = 12
  const newStarts = async (): Promise<Starting[]> => {
    const items: Starting[] = []
    for (let i = 0; i < 3; i++) {
      const psid = newPsid()
      await giveTokens(w, psid, 1)
      items.push({ id: randomUUID(), hash: 'h', input: { topic_id: w.topic.id, psid, message: { text: 'hi' }, use_window: false } })
    }
    return items
  }
  const sent = (started: Awaited<ReturnType<typeof startSends>>): Finishing[] => started.map((s) => ({
    id: s.n!.id, page_id: s.n!.page_id, status: 'sent', route: 'token', graphMessageId: `m.${s.n!.id}`, tokenId: s.token!.id, tokenState: 'used',
    move: { hold: { page_id: s.n!.page_id, token_id: s.token!.id, notification_id: s.n!.id }, to: 'used' },
  }))
  for (let run = 0; run < runs; run++) {
    const started = await startSends(one.db, 60, await newStarts())
    t.ok(started.every((s) => s.token), 'each send claimed its token')
    const written = await recordOutcomes(one.db, sent(started))
    t.ok(written.every((n) => n?.status === 'sent'), 'each outcome written')
  }
  const { rows } = await sql<{ statement: string, generic_plans: string, custom_plans: string }>`
    select statement, generic_plans, custom_plans from pg_prepared_statements`.execute(one.db)
  const plans = (name: string, has: (statement: string) => boolean, executions: number) => {
    const found = rows.filter((r) => has(r.statement))
    t.equal(found.length, 1, `one prepared statement is ${name}`)
    t.equal(Number(found[0]?.generic_plans), 0, `${name}: no generic plan`)
    t.equal(Number(found[0]?.custom_plans), executions, `${name}: every execution planned for its parameters`)
  }
  plans('startSends', (s) => s.includes('with ordinality'), runs)
  plans('recordOutcomes', (s) => s.includes('set_tokens_refused'), runs)
})
