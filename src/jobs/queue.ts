import PgBoss from 'pg-boss'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config.js'
import { rawExecutor, type Database } from '../db/database.js'
import type { GraphClient } from '../graph/client.js'

export type JobQueue = PgBoss

/** What a job handler needs; `stopping()` turns true when the instance shuts down, so long handlers hand over. */
export interface JobContext {
  boss: JobQueue
  db: Database
  graph: GraphClient
  config: Config
  log: FastifyBaseLogger
  stopping: () => boolean
}

/** Registers one family of queues and their workers on a started queue. */
export type JobWorkers = (ctx: JobContext) => Promise<void>

/**
 * pg-boss over the app's own Kysely handle: the pg Pool on Postgres, the session lock on PGlite,
 * so the embedded database needs no second connection and the service process is the worker.
 */
export function createJobQueue (db: Database, config: Config, log: FastifyBaseLogger): JobQueue {
  const boss = new PgBoss({
    db: rawExecutor(db),
    schema: 'pgboss',
    pollingIntervalSeconds: config.JOB_POLL_INTERVAL_SECONDS,
  })
  boss.on('error', (err) => log.error({ err }, 'job queue error'))
  return boss
}

/** Creates a queue unless it exists (instances starting together are fine: creation is idempotent). */
export async function ensureQueue (boss: JobQueue, name: string, options: Omit<PgBoss.Queue, 'name'>): Promise<void> {
  if (await boss.getQueue(name)) return
  await boss.createQueue(name, { name, ...options })
}

/** A pg-boss connection inside a Kysely transaction: a job sent through it exists only if the transaction commits. */
export function inTransaction (trx: Database): PgBoss.ConnectionOptions {
  return { db: rawExecutor(trx) as PgBoss.Db }
}

/** Lets in-flight jobs finish (handlers see `stopping()` and hand over) without closing the app's database. */
export async function stopJobQueue (boss: JobQueue, timeoutMs: number): Promise<void> {
  await boss.stop({ graceful: true, wait: true, close: false, timeout: timeoutMs })
}
