import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import type { Config } from './config.js'
import type { Database } from './db/database.js'
import type { Notification } from './db/types.js'
import type { GraphClient } from './graph/client.js'

export interface MaintenanceContext {
  db: Database
  config: Config
  log: FastifyBaseLogger
  /** Lease recovery re-sends reserved tokens. */
  graph: GraphClient
  /** See SendDeps.onFinal. */
  onFinal?: (n: Notification) => void
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

/** Runs the tasks once when the app is ready and then every MAINTENANCE_INTERVAL_SECONDS until it closes. */
export function scheduleMaintenance (app: FastifyInstance, tasks: MaintenanceTask[]): void {
  let timer: NodeJS.Timeout | undefined
  let running: Promise<unknown> = Promise.resolve()
  const ctx = (): MaintenanceContext => ({ db: app.db, config: app.config, log: app.log, graph: app.graph, onFinal: app.notificationFinished })
  app.addHook('onReady', async () => {
    running = runMaintenance(ctx(), tasks)
    await running
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
