import t from 'tap'
import { runClaimScale } from '../../bench/claim-scale.js'
import { runPlanHazard } from '../../bench/plan-hazard.js'
import { runSendStatements } from '../../bench/send-statements.js'

// The benchmark's database sections, small, so that a change to the statements they capture from
// the service (the claim, the token transition) breaks a test rather than the next `npm run bench`.
// They need a Postgres server: they run in the pass on TEST_DATABASE_URL.
const adminUrl = process.env.TEST_DATABASE_URL
const skip = process.env.TEST_DATABASE === 'postgres' && adminUrl ? false : 'needs a Postgres server (runs in the TEST_DATABASE_URL pass)'

t.test('claim latency runs on small tables and times both statements', { skip }, async (t) => {
  const [small, large] = await runClaimScale({ adminUrl: adminUrl!, sizes: [10_000, 20_000], claims: 50 })
  t.same([small.rows, large.rows], [10_000, 20_000])
  for (const r of [small, large]) {
    for (const pass of [r.durable, r.statement]) {
      t.ok(pass.named.p50 > 0 && pass.unnamed.p50 > 0, `${r.rows}: claims were timed`)
      t.ok(pass.named.p99 >= pass.named.p50)
    }
  }
})

t.test('the plan hazard measures the shipped transitions on their primary keys', { skip }, async (t) => {
  const results = await runPlanHazard({ adminUrl: adminUrl!, backlog: 2000, count: 50 })
  t.same(results.map((r) => r.shipped.plan), ['optin_tokens_pkey', 'notifications_pkey'], 'as shipped: the primary key')
  t.same(results.map((r) => r.keyed?.plan), [undefined, 'notifications_pending_idx'], 'the pre-fix index: the hazard')
  for (const r of results) t.ok(r.shipped.p50 > 0 && (r.keyed?.p50 ?? 1) > 0)
})

t.test('a send\'s statements, batched, on a table of 20,000 tokens and notifications: every lookup an index scan', { skip }, async (t) => {
  const { costs, plans } = await runSendStatements({ adminUrl: adminUrl!, history: 20_000, tokens: 20_000, sends: 40, sizes: [4, 1] })
  t.same(costs.map((c) => `${c.shape} ${c.sendsPerStatement} ${c.sends}`), ['separate 4 40', 'separate 1 40', 'combined 4 40', 'combined 1 40'])
  for (const c of costs) t.ok(c.wallUs > 0 && c.postgresUs >= 0 && c.clientUs > 0, `${c.shape} ${c.sendsPerStatement}: timed`)
  // The cached plans of the three shapes (start, outcome, both), for four sends each.
  t.equal(plans.length, 3, 'one plan per shape')
  for (const plan of plans) {
    t.notMatch(plan, /Seq Scan on (notifications|optin_tokens)\b/, 'no table scan of notifications or tokens')
    t.match(plan, /rows=4 loops=1/, 'the plan ran for the whole batch')
  }
  // Either index bounded by the person will do; which one the planner takes depends on the statistics.
  t.match(plans[0], /Index Scan using optin_tokens_(usable|subscriber)_idx/, 'the claim looks up the person\'s tokens by index')
  t.match(plans[0], /Index Scan using notifications_idempotency_key_key/, 'the Idempotency-Key check takes its unique index')
  t.match(plans[1], /Index Scan using notifications_pkey/, 'the outcome finds its notification by key')
  t.match(plans[1], /Index Scan using optin_tokens_pkey/, 'and its token by key')
})
