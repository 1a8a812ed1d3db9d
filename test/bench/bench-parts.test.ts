import t from 'tap'
import { runClaimScale } from '../../bench/claim-scale.js'
import { runPlanHazard } from '../../bench/plan-hazard.js'

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
  t.same(results.map((r) => r.keyed.plan), ['optin_tokens_reserved_idx', 'notifications_pending_idx'], 'the pre-fix indexes: the hazard')
  for (const r of results) t.ok(r.shipped.p50 > 0 && r.keyed.p50 > 0)
})
