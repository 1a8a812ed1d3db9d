import fp from 'fastify-plugin'
import { createJobQueue, stopJobQueue, type JobContext, type JobQueue, type JobWorkers } from '../jobs/queue.js'

declare module 'fastify' {
  interface FastifyInstance {
    jobs: JobQueue
  }
}

/**
 * The job queue, started with the app: every instance runs the workers it is given. On close,
 * handlers are told to hand over and in-flight jobs are awaited before the database goes.
 */
export default fp<{ workers: JobWorkers[] }>(async (app, { workers }) => {
  const boss = createJobQueue(app.db, app.config, app.log)
  await boss.start()
  let stopping = false
  const ctx: JobContext = { boss, db: app.db, sender: app.sender, config: app.config, log: app.log, stopping: () => stopping }
  app.decorate('jobs', boss)
  app.addHook('onClose', async () => {
    stopping = true
    await stopJobQueue(boss, app.config.SHUTDOWN_TIMEOUT_MS)
  })
  try {
    for (const register of workers) await register(ctx)
  } catch (error) {
    await boss.stop({ graceful: false, close: false })
    throw error
  }
}, { name: 'jobs', dependencies: ['database', 'sender'] })
