// What a send's statements cost Postgres, by how many sends one statement carries: the service's
// own writeSteps on a fresh database with a history, one connection, one statement at a time, the
// commit not waited for (synchronous_commit off in this session only: the disk is not measured).
// Shows why the group commit matters: a statement has a large fixed cost (executor start-up for
// every CTE, opening each table's indexes, the CHECK constraints built anew per statement, the
// commit), which a statement carrying several sends shares out.
//   npx tsx bench/send-statements.ts     (BENCH_BATCHES=1,2,5,10,20 BENCH_SENDS=3000 BENCH_HISTORY=100000)
import { randomUUID } from 'node:crypto'
import { pathToFileURL } from 'node:url'
import { sql } from 'kysely'
import { openDatabase } from '../src/db/database.js'
import { migrate } from '../src/db/migrate.js'
import { requestHash, writeSteps, type Finishing, type NotificationInput, type Starting } from '../src/domain/notifications.js'
import { ADMIN_URL, cpuSeconds, createDatabase, envInt, log, table } from './lib.js'

export interface StatementCost {
  /** Each statement carries either one step of every send (start, then outcome: two statements per send) or both steps (the starts of new sends with the outcomes of the previous ones). */
  shape: 'separate' | 'combined'
  sendsPerStatement: number
  sends: number
  /** CPU time of the Postgres backend per send, microseconds (from /proc: NaN off Linux). */
  postgresUs: number
  /** CPU time of this process (pg, Kysely, the service's code) per send, microseconds. */
  clientUs: number
  wallUs: number
}

export interface StatementRun {
  costs: StatementCost[]
  /** The plans Postgres ran (auto_explain) for one send of each shape, once the statements had their cached plans. */
  plans: string[]
}

/** `history`: finished notifications before the run; `tokens`: at least this many tokens (people) in the table. */
export async function runSendStatements (opts: { adminUrl: string, history: number, sends: number, sizes: number[], tokens?: number }): Promise<StatementRun> {
  const scratch = await createDatabase(opts.adminUrl, 'sendstmt')
  const handle = await openDatabase({ databaseUrl: scratch.url, poolSize: 1 })
  const { db } = handle
  const plans: string[] = []
  handle.pool!.on('connect', (c) => c.on('notice', (n) => { if (/plan:/.test(n.message ?? '')) plans.push(n.message!) }))
  try {
    await migrate(db)
    const pageId = String(100000 + Math.floor(Math.random() * 1e9))
    const payload = 'bench-topic'
    await sql`insert into pages (id, name, access_token) values (${pageId}, 'Bench', 'token')`.execute(db)
    const { rows: [topic] } = await sql<{ id: string }>`insert into topics (page_id, name, title, payload)
      values (${pageId}, 'Bench', 'Back in stock', ${payload}) returning id`.execute(db)
    // One token per person; enough people for every send and warm-up of both shapes.
    const warmups = 10
    const needed = opts.sizes.reduce((sum, size) => sum + 2 * (Math.max(1, Math.floor(opts.sends / size)) + warmups + 1) * size, 0)
    const people = Math.max(needed, opts.tokens ?? 0)
    await sql`insert into optin_tokens (page_id, psid, payload, token, opted_in_at, expires_at)
      select ${pageId}, 'p' || i, ${payload}, md5(i::text) || md5((i + 1)::text), now(), now() + interval '300 days'
        from generate_series(1, ${people}::int) i`.execute(db)
    await sql`insert into notifications (page_id, topic_id, psid, message, idempotency_key, request_hash, status, route, attempts, http_status, completed_at)
      select ${pageId}, ${topic.id}::uuid, 'h' || i, '{"text":"earlier"}', 'history-' || i, 'h', 'sent', 'window', 1, 201, now()
        from generate_series(1, ${opts.history}::int) i`.execute(db)
    await sql`analyze`.execute(db)
    await sql`set synchronous_commit = off`.execute(db)
    const { rows: [{ pid }] } = await sql<{ pid: number }>`select pg_backend_pid() as pid`.execute(db)

    let person = 0
    const startOf = (): Starting => {
      const input: NotificationInput = { topic_id: topic.id, psid: `p${++person}`, message: { text: 'Back in stock' }, idempotency_key: randomUUID() }
      return { id: randomUUID(), input, hash: requestHash(input) }
    }
    const finishOf = (s: Starting, tokenId: string): Finishing => ({
      id: s.id,
      outcome: { status: 'sent', route: 'token', httpStatus: 201, graphMessageId: 'm', tokenId, tokenState: 'used', tokensRefused: 0 },
      transition: { reservation: { token_id: tokenId, notification_id: s.id }, to: 'used' },
    })
    const claimed = (s: { token?: { id: string } }): string => {
      if (!s.token) throw new Error('a start claimed no token')
      return s.token.id
    }
    const costs: StatementCost[] = []
    for (const shape of ['separate', 'combined'] as const) {
      let previous: Finishing[] = []
      for (const size of opts.sizes) {
        const step = async (): Promise<void> => {
          const starts = Array.from({ length: size }, startOf)
          if (shape === 'combined') {
            const { started } = await writeSteps(db, 60, starts, previous)
            previous = started.map((s, i) => finishOf(starts[i], claimed(s)))
          } else {
            const { started } = await writeSteps(db, 60, starts, [])
            await writeSteps(db, 0, [], started.map((s, i) => finishOf(starts[i], claimed(s))))
          }
        }
        // Warm-up: the statements are prepared and settle on their cached (generic) plans.
        for (let i = 0; i < warmups; i++) await step()
        if (size === opts.sizes[0]) {
          await sql`load 'auto_explain'`.execute(db)
          await sql`set auto_explain.log_min_duration = 0`.execute(db)
          await sql`set auto_explain.log_analyze = on`.execute(db)
          await sql`set client_min_messages = log`.execute(db)
          await step()
          await sql`set auto_explain.log_min_duration = -1`.execute(db)
          await sql`set client_min_messages = notice`.execute(db)
        }
        const rounds = Math.max(1, Math.floor(opts.sends / size))
        const cpu0 = cpuSeconds(pid) ?? Number.NaN
        const client0 = process.cpuUsage()
        const t0 = performance.now()
        for (let i = 0; i < rounds; i++) await step()
        const wall = performance.now() - t0
        const client = process.cpuUsage(client0)
        const sends = rounds * size
        costs.push({
          shape,
          sendsPerStatement: size,
          sends,
          postgresUs: 1e6 * ((cpuSeconds(pid) ?? Number.NaN) - cpu0) / sends,
          clientUs: (client.user + client.system) / sends,
          wallUs: 1000 * wall / sends,
        })
      }
    }
    return { costs, plans }
  } finally {
    await handle.close()
    await scratch.drop()
  }
}

export function statementCostTable (costs: StatementCost[]): string {
  return table(['statements', 'sends per statement', 'sends', 'Postgres CPU µs/send', 'client CPU µs/send', 'wall µs/send'],
    costs.map((c) => [c.shape === 'separate' ? 'start, then outcome' : 'starts with earlier outcomes', String(c.sendsPerStatement),
      c.sends.toLocaleString('en-US'), c.postgresUs.toFixed(0), c.clientUs.toFixed(0), c.wallUs.toFixed(0)]))
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  log('send statements: seeding')
  const { costs, plans } = await runSendStatements({
    adminUrl: ADMIN_URL,
    history: envInt('BENCH_HISTORY', 100_000, 0),
    sends: envInt('BENCH_SENDS', 3_000),
    sizes: (process.env.BENCH_BATCHES ?? '1,2,5,10,20').split(',').map(Number),
  })
  if (process.env.BENCH_EXPLAIN === '1') for (const plan of plans) process.stderr.write(`${plan}\n\n`)
  console.log(statementCostTable(costs))
}
