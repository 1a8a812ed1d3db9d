import PgBoss from 'pg-boss'
import { rawExecutor, type Database } from './database.js'

/** The schema of the job queue's tables (src/jobs/queue.ts creates its queue there; a test checks they agree). */
export const JOB_QUEUE_SCHEMA = 'pgboss'

/**
 * Creates or upgrades the job queue's (pg-boss's) schema, as every instance's start would, so a deploy
 * can migrate before it starts instances. Starts pg-boss with no workers, no supervision and no
 * schedule, which does only that; pg-boss serialises concurrent installs itself.
 */
export async function migrateJobQueue (db: Database): Promise<{ from: number | null, to: number }> {
  const boss = new PgBoss({ db: rawExecutor(db) as PgBoss.Db, schema: JOB_QUEUE_SCHEMA, supervise: false, schedule: false })
  let failure: unknown
  boss.on('error', (error) => { failure ??= error })
  const from = (await boss.isInstalled()) ? Number(await boss.schemaVersion()) : null
  await boss.start()
  await boss.stop({ graceful: false, close: false, wait: true })
  if (failure) throw failure
  return { from, to: Number(await boss.schemaVersion()) }
}
