import t from 'tap'
import { canStartCluster } from '../../bench/pg-cluster.js'
import { runSoak, soakTable } from '../../bench/soak.js'

// The short form of `npm run soak` (docs/PERFORMANCE.md): the same code, SOAK_SECONDS of load
// (default 20). It brings its own Postgres cluster, so it runs once per `npm test`, in the
// embedded-database pass, and not again when the suite repeats on a Postgres server.
const seconds = Number(process.env.SOAK_SECONDS ?? 20)
const skip = process.env.TEST_DATABASE === 'postgres'
  ? 'runs once, in the first pass (it starts its own Postgres cluster)'
  : !canStartCluster() ? 'no PostgreSQL server binaries (initdb, pg_ctl) on this machine; set PG_BIN' : false

t.setTimeout(seconds * 1000 + 180_000)

t.test('soak: two instances, faults, a SIGKILL and a Postgres restart; nothing sent twice, lost or left half-done', { skip }, async (t) => {
  const report = await runSoak({ seconds, settleSeconds: 40, log: (line) => t.comment(line) })
  t.comment(`\n${soakTable(report)}`)
  for (const [name, n] of report.mustBeZero) t.equal(n, 0, name)

  const { totals } = report
  t.ok(totals.webhooks > 0 && totals.tokensRecorded > 0, 'opt-ins arrived and were recorded')
  t.ok(totals.sends > 0 && totals.tokensAccepted > 0, 'notifications spent tokens at the emulator')
  t.ok(totals.faults > 0, 'the emulator injected faults')
  t.ok(totals.instanceStarts >= 3, 'the killed instance was started again')
  if (report.logsKeptIn) t.comment(`instance and Postgres logs kept in ${report.logsKeptIn}`)
})
