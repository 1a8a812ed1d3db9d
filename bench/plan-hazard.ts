// A guarded transition implies the predicate of a partial index when its guard tests the column the
// predicate does: `where id = $1 and status = 'pending'` implied that of notifications_pending_idx
// (before migration 20261121040000), and the end of a token's hold, `where id = $1 and state =
// 'available' and notification_id = $2`, implies those of optin_tokens_usable_idx and
// optin_tokens_expiry_idx. Sent unnamed (custom plans, as Kysely does), Postgres may then scan the
// whole partial index instead of using the primary key, when its statistics say the index is small:
// after a burst of rows since the last ANALYZE (and its dead entries until VACUUM). This measures
// one transition of each table with such a backlog: for the notifications as shipped and with the
// pre-fix index; for the tokens as shipped, with a burst of new tokens, all held by sends. Run
// alone: `npx tsx bench/plan-hazard.ts` (BENCH_BACKLOG, default 40,000).
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
  /** With PRE_FIX_INDEXES; none for the tokens, whose pre-fix index (on `state = 'reserved'`) no state matches any more. */
  keyed?: { p50: number, plan: string }
}

/**
 * The notifications' index before migration 20261121040000: partial on `status = 'pending'`, a
 * predicate every transition guard implies. Shipped now: keyed on completed_at.
 */
export const PRE_FIX_INDEXES = [
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
 * `backlog` held tokens and pending notifications made after ANALYZE (as a burst would), then
 * `count` transitions of other rows, timed; then the notifications' with the pre-fix index.
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
      // The burst: the backlog plus the rows the timed transitions will move, one set per variant:
      // new tokens, each held by a send (the usable and expiry indexes grow past their statistics).
      await c.query(`insert into optin_tokens (page_id, psid, payload, token, opted_in_at, expires_at, notification_id, lease_expires_at)
        select 'p', 'w' || i, 't', md5('w' || i), now(), now() + interval '300 days', gen_random_uuid(), now() + interval '120 seconds'
          from generate_series(1, ${n + rounds}) i`)
      await c.query(`insert into notifications (page_id, psid, message) select 'p', 'v' || i, '{}' from generate_series(1, ${n + rounds}) i`)
      const { rows: tokens } = await c.query(`select id, notification_id from optin_tokens where psid like 'w%' order by id offset ${n} limit ${rounds}`)
      const { rows: pending } = await c.query(`select id from notifications where status = 'pending' order by psid desc limit ${rounds}`)

      // markUsed's parameters in the order settleToken sends them: token, holder, target state.
      const tokenValues = (i: number) => [tokens[i].id, tokens[i].notification_id, 'used']
      const pendingValues = (i: number) => [1, 'token', pending[i].id, 'pending']
      const measure = async (text: string, values: (i: number) => unknown[], offset: number) => ({
        p50: await timeEach(c, opts.count, (i) => values(offset + i), text),
        plan: await planOf(c, text, values(rounds - 1)),
      })
      const token = await measure(markUsedSql, tokenValues, 0)
      const pendingShipped = await measure(BEGIN_ATTEMPT, pendingValues, 0)
      for (const statement of PRE_FIX_INDEXES) await c.query(statement)
      const pendingKeyed = await measure(BEGIN_ATTEMPT, pendingValues, opts.count)
      return [
        { transition: 'markUsed (held → used)', backlog: n, shipped: token },
        { transition: 'beginAttempt (pending notification)', backlog: n, shipped: pendingShipped, keyed: pendingKeyed },
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
    results.map((r) => [r.transition, r.backlog.toLocaleString('en-US'), fmt.ms(r.shipped.p50), r.shipped.plan, r.keyed ? fmt.ms(r.keyed.p50) : '–', r.keyed?.plan ?? '–']))
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  log('plan hazard: seeding')
  const results = await runPlanHazard({ adminUrl: ADMIN_URL, backlog: envInt('BENCH_BACKLOG', 40_000), count: 300 })
  console.log(planHazardTable(results))
}
