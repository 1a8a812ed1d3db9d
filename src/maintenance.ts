import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import type { Config } from './config.js'
import type { Database } from './db/database.js'
import type { Sender } from './domain/send.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The maintenance run in progress (or the last one), resolved when it ends. */
    maintenance: () => Promise<unknown>
  }
}

export interface MaintenanceContext {
  db: Database
  config: Config
  log: FastifyBaseLogger
  /** Lease recovery finishes sends through the one send path. */
  sender: Sender
  /** The embedded database needs the vacuuming a Postgres server does itself. */
  dbKind: 'postgres' | 'pglite'
}

/**
 * Idempotent sweeps (expiry, lease recovery): each is a set-based UPDATE guarded by row state,
 * so several instances running them at once do the work once between them.
 */
export interface MaintenanceTask {
  name: string
  run(ctx: MaintenanceContext): Promise<number>
}

async function runMaintenance (ctx: MaintenanceContext, tasks: MaintenanceTask[]): Promise<Record<string, number>> {
  const done: Record<string, number> = {}
  for (const task of tasks) {
    try {
      done[task.name] = await task.run(ctx)
      if (done[task.name] > 0) ctx.log.info({ task: task.name, rows: done[task.name] }, `maintenance: ${task.name}`)
    } catch (err) {
      ctx.log.warn({ err, task: task.name }, 'maintenance task failed; it runs again next period')
    }
  }
  return done
}

/**
 * Runs the tasks once the app is ready and then every MAINTENANCE_INTERVAL_SECONDS until it
 * closes, in the background: a long run (recovery of a large backlog while Meta is slow) never
 * holds up start-up or readiness. One run at a time per instance; `app.maintenance` resolves when
 * the current one ends (tests wait on it).
 */
export function scheduleMaintenance (app: FastifyInstance, tasks: MaintenanceTask[]): void {
  let timer: NodeJS.Timeout | undefined
  let running: Promise<unknown> = Promise.resolve()
  const ctx = (): MaintenanceContext => ({ db: app.db, config: app.config, log: app.log, sender: app.sender, dbKind: app.dbKind })
  app.decorate('maintenance', () => running)
  app.addHook('onReady', async () => {
    running = runMaintenance(ctx(), tasks)
    timer = setInterval(() => {
      running = running.then(() => runMaintenance(ctx(), tasks))
    }, app.config.MAINTENANCE_INTERVAL_SECONDS * 1000)
    timer.unref()
  })
  app.addHook('onClose', async () => {
    clearInterval(timer)
    await running
  })
}
