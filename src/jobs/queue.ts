import { createRequire } from 'node:module'
import PgBoss from 'pg-boss'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config.js'
import { rawExecutor, type Database } from '../db/database.js'
import type { Sender } from '../domain/send.js'

export type JobQueue = PgBoss

// pg-boss 10 (10.4.2, the latest 10.x) marks a job completed or failed without awaiting it
// (src/manager.js, onFetch). When the database is unreachable at that moment the rejection is
// unhandled, and close-with-grace then takes the whole instance down. The job itself is safe: it
// stays active, expires and is retried, and every handler here is idempotent. So the failure is
// reported as a queue error (logged) instead. Patched once, before any queue is created, so both the
// worker loop and boss.complete/boss.fail (bound at construction) go through it; a caller that
// awaits still gets the rejection.
type Manager = { emit (event: string, arg: unknown): boolean }
type Settle = (this: Manager, ...args: unknown[]) => Promise<unknown>
const manager = createRequire(import.meta.url)('pg-boss/src/manager.js') as { prototype: Record<'complete' | 'fail', Settle> }
for (const method of ['complete', 'fail'] as const) {
  const original = manager.prototype[method]
  manager.prototype[method] = function (...args) {
    const settled = original.apply(this, args)
    settled.catch((err: unknown) => { this.emit('error', err) })
    return settled
  }
}

/** What a job handler needs; `stopping()` turns true when the instance shuts down, so long handlers hand over. */
export interface JobContext {
  boss: JobQueue
  db: Database
  /** The process's one send path (buildApp). */
  sender: Sender
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
