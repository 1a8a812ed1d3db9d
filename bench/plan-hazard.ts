// The guarded transitions (`where id = $1 and state = 'reserved' and ...`, `where id = $1 and
// status = 'pending'`) imply the predicates of the partial indexes optin_tokens_reserved_idx and
// notifications_pending_idx. Sent unnamed (custom plans, as Kysely does), Postgres may then scan
// the whole partial index instead of using the primary key, when its statistics say the index is
// small: after a burst of reservations or pending notifications since the last ANALYZE (and its
// dead entries until VACUUM). This measures one transition with such a backlog, as shipped and with
// the partial indexes keyed on a column the transitions do not test. Run alone:
// `npx tsx bench/plan-hazard.ts` (BENCH_BACKLOG, default 40,000).
import { randomUUID } from 'node:crypto'
import { pathToFileURL } from 'node:url'
import { Kysely, PostgresDialect, type CompiledQuery } from 'kysely'
import pg from 'pg'
import { openDatabase } from '../src/db/database.js'
import { migrate } from '../src/db/migrate.js'
import type { DB } from '../src/db/types.js'
import { settleToken } from '../src/domain/claims.js'
import { ADMIN_URL, createDatabase, envInt, fmt, log, quantile, table } from './lib.js'

export interface HazardResult {
  transition: string
  backlog: number
  shipped: { p50: number, plan: string }
  keyed: { p50: number, plan: string }
}

/**
 * The indexes before migration 20261121040000: partial on `state = 'reserved'` / `status = 'pending'`,
 * predicates every transition guard implies. Shipped now: keyed on lease_expires_at / completed_at.
 */
export const PRE_FIX_INDEXES = [
  'drop index optin_tokens_lease_idx',
  "create index optin_tokens_reserved_idx on optin_tokens (lease_expires_at) where state = 'reserved'",
  'drop index notifications_open_idx',
  "create index notifications_pending_idx on notifications (updated_at) where status = 'pending'",
]

// The shape of notifications.ts's beginAttempt (not exported): the first write of every send.
const BEGIN_ATTEMPT = 'update "notifications" set "attempts" = "attempts" + $1, "route" = $2, "updated_at" = now() where "id" = $3 and "status" = $4 returning "id"'

async function markUsedStatement (pool: pg.Pool): Promise<string> {
  let captured: CompiledQuery | undefined
  const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool }), log: (e) => { captured = e.query } })
  await settleToken(db, { token_id: '0', notification_id: randomUUID() }, 'used')
  return captured!.sql
}

const planOf = async (c: pg.Client, text: string, values: unknown[]) => {
  await c.query('begin')
  try {
    const { rows } = await c.query(`explain ${text}`, values)
    // The scan of a table (not of a CTE or a function) is what the hazard is about.
    const scan = rows.map((r) => r['QUERY PLAN'] as string).find((l) => /Scan/.test(l) && !/(CTE|Function) Scan/.test(l)) ?? ''
    return /using (\w+)/.exec(scan)?.[1] ?? scan.trim()
  } finally {
    await c.query('rollback')
  }
}

async function timeEach (c: pg.Client, count: number, values: (i: number) => unknown[], text: string): Promise<number> {
  const times: number[] = []
  for (let i = 0; i < count; i++) {
    const t0 = process.hrtime.bigint()
    const { rowCount } = await c.query(text, values(i))
    times.push(Number(process.hrtime.bigint() - t0) / 1e6)
    if (rowCount !== 1) throw new Error(`transition ${i} matched ${rowCount} rows`)
  }
  return quantile(times.sort((a, b) => a - b), 0.5)
}

/**
 * `backlog` reservations and pending notifications made after ANALYZE (as a burst would), then
 * `count` transitions of other rows, timed; then the same with the keyed partial indexes.
 */
export async function runPlanHazard (opts: { adminUrl: string, backlog: number, count: number }): Promise<HazardResult[]> {
  const scratch = await createDatabase(opts.adminUrl, 'otn_bench_plans')
  try {
    const handle = await openDatabase({ databaseUrl: scratch.url, poolSize: 1 })
    await migrate(handle.db)
    await handle.close()
    const pool = new pg.Pool({ connectionString: scratch.url, max: 1 })
    pool.on('error', () => {})
    const markUsedSql = await markUsedStatement(pool)
    await pool.end()

    const c = new pg.Client({ connectionString: scratch.url })
    c.on('error', () => {})
    await c.connect()
    try {
      const n = opts.backlog
      const rounds = 2 * opts.count
      await c.query(`insert into optin_tokens (page_id, psid, payload, token, opted_in_at, expires_at)
        select 'p', 'u' || i, 't', md5(i::text), now(), now() + interval '300 days' from generate_series(1, ${10 * n}) i`)
      await c.query(`insert into notifications (page_id, psid, message, status, completed_at)
        select 'p', 'u' || i, '{}', 'sent', now() from generate_series(1, ${10 * n}) i`)
      await c.query('analyze')
      // The burst: the backlog plus the rows the timed transitions will move, one set per variant.
      await c.query(`update optin_tokens set state = 'reserved', lease_expires_at = now() + interval '120 seconds', notification_id = gen_random_uuid()
        where id <= ${n + rounds}`)
      await c.query(`insert into notifications (page_id, psid, message) select 'p', 'v' || i, '{}' from generate_series(1, ${n + rounds}) i`)
      const { rows: tokens } = await c.query(`select id, notification_id from optin_tokens where id > ${n} and id <= ${n + rounds} order by id`)
      const { rows: pending } = await c.query(`select id from notifications where status = 'pending' order by psid desc limit ${rounds}`)

      const tokenValues = (i: number) => [tokens[i].id, tokens[i].notification_id, 'used']
      const pendingValues = (i: number) => [1, 'token', pending[i].id, 'pending']
      // markUsed's parameters in the order settleToken sends them: token, holder, target state.
      const measureAll = async (offset: number) => ({
        token: {
          p50: await timeEach(c, opts.count, (i) => tokenValues(offset + i), markUsedSql),
          plan: await planOf(c, markUsedSql, tokenValues(rounds - 1)),
        },
        pending: {
          p50: await timeEach(c, opts.count, (i) => pendingValues(offset + i), BEGIN_ATTEMPT),
          plan: await planOf(c, BEGIN_ATTEMPT, pendingValues(rounds - 1)),
        },
      })
      const shipped = await measureAll(0)
      for (const statement of PRE_FIX_INDEXES) await c.query(statement)
      const keyed = await measureAll(opts.count)
      return [
        { transition: 'markUsed (reserved → used)', backlog: n, shipped: shipped.token, keyed: keyed.token },
        { transition: 'beginAttempt (pending notification)', backlog: n, shipped: shipped.pending, keyed: keyed.pending },
      ]
    } finally {
      await c.end()
    }
  } finally {
    await scratch.drop()
  }
}

export function planHazardTable (results: HazardResult[]): string {
  return table(['transition', 'backlog since ANALYZE', 'as shipped p50 ms', 'index used', 'pre-fix indexes p50 ms', 'index used'],
    results.map((r) => [r.transition, r.backlog.toLocaleString('en-US'), fmt.ms(r.shipped.p50), r.shipped.plan, fmt.ms(r.keyed.p50), r.keyed.plan]))
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  log('plan hazard: seeding')
  const results = await runPlanHazard({ adminUrl: ADMIN_URL, backlog: envInt('BENCH_BACKLOG', 40_000), count: 300 })
  console.log(planHazardTable(results))
}
