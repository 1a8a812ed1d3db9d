import { openDatabase, type DatabaseHandle } from '../db/database.js'
import { migrateJobQueue } from '../db/job-queue-schema.js'
import { migrate } from '../db/migrate.js'
import { maskUrl } from '../logger.js'
import { exitWith, explainDatabaseError, startupConfig } from '../startup.js'

// The service's migrations, then the job queue's schema: what a deploy runs before it starts instances.
const program = 'otn-service migrate'
const { config } = startupConfig(program, { API_KEYS: 'unused-by-migrate', ALLOW_PLAINTEXT_SECRETS: 'true' })
let handle: DatabaseHandle | undefined
try {
  handle = await openDatabase({ databaseUrl: config.DATABASE_URL, pgliteDataDir: config.PGLITE_DATA_DIR, poolSize: 1 })
  const { results, newer } = await migrate(handle.db)
  for (const r of results ?? []) console.log(`${r.status}: ${r.migrationName}`)
  const queue = await migrateJobQueue(handle.db)
  const queueDone = queue.from === null ? `created at version ${queue.to}` : queue.from < queue.to ? `upgraded from version ${queue.from} to ${queue.to}` : `up to date (version ${queue.to})`
  const state = newer.length > 0 ? `ahead of this build (a newer build applied ${newer.join(', ')}); nothing to do`
    : results?.length ? `${results.length} migration(s) applied` : 'migrations up to date'
  console.log(`${handle.kind} at ${maskUrl(handle.location)}: ${state}; job queue schema ${queueDone}`)
} catch (error) {
  await handle?.close().catch(() => {})
  exitWith(program, error, explainDatabaseError(error, config))
}
await handle.close()
