// What the app's thread spends on a send's statement before it reaches the database: writeSteps
// (building the statement, its parameters, kysely's executor) on kysely's DummyDriver, which
// answers every statement with no rows at once. Neither Postgres nor pg is measured; the figure
// is the service's own JavaScript per statement, for the group commit's usual shapes.
//   npx tsx bench/statement-build.ts     (BENCH_STATEMENTS=20000 per shape and round)
import { randomUUID } from 'node:crypto'
import { DummyDriver, Kysely, PostgresAdapter, PostgresIntrospector, PostgresQueryCompiler } from 'kysely'
import type { DB } from '../src/db/types.js'
import { writeSteps, type Finishing, type Starting } from '../src/domain/notifications.js'
import { envInt, log, table } from './lib.js'

const db = new Kysely<DB>({
  dialect: {
    createAdapter: () => new PostgresAdapter(),
    createDriver: () => new DummyDriver(),
    createIntrospector: (k) => new PostgresIntrospector(k),
    createQueryCompiler: () => new PostgresQueryCompiler(),
  },
})

const start = (): Starting => ({
  id: randomUUID(),
  input: { topic_id: randomUUID(), psid: `p${Math.random()}`, message: { text: 'Your size is back in stock' }, idempotency_key: randomUUID() },
  hash: 'a'.repeat(64),
})
const finish = (): Finishing => ({
  id: randomUUID(),
  outcome: { status: 'sent', route: 'token', httpStatus: 201, graphMessageId: 'm_1', tokenId: '1', tokenState: 'used', tokensRefused: 0 },
  transition: { reservation: { token_id: '1', notification_id: randomUUID() }, to: 'used' },
})

const STATEMENTS = envInt('BENCH_STATEMENTS', 20_000)
const shapes = [[1, 0], [0, 1], [2, 2], [5, 5]] as const
const best = new Map<string, number>()
for (let round = 0; round < 3; round++) {
  for (const [starts, finishes] of shapes) {
    const label = `${starts} start(s), ${finishes} outcome(s)`
    // The inputs are made before the clock starts: only writeSteps is timed.
    const inputs = Array.from({ length: STATEMENTS }, (): [Starting[], Finishing[]] => [Array.from({ length: starts }, start), Array.from({ length: finishes }, finish)])
    const t0 = process.hrtime.bigint()
    for (const [s, f] of inputs) await writeSteps(db, 60, s, f)
    const us = Number(process.hrtime.bigint() - t0) / STATEMENTS / 1000
    best.set(label, Math.min(best.get(label) ?? Infinity, us))
  }
  log(`round ${round + 1}/3 done`)
}
console.log(table(['statement', 'µs per statement (best of 3 rounds)'], [...best].map(([label, us]) => [label, us.toFixed(1)])))
