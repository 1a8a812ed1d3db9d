import { loadConfig } from '../config.js'
import { openDatabase } from '../db/database.js'
import { migrate } from '../db/migrate.js'
import { maskUrl } from '../logger.js'

const env = { API_KEYS: 'unused-by-migrate', ...process.env }
const config = loadConfig(env)
const handle = await openDatabase({ databaseUrl: config.DATABASE_URL, pgliteDataDir: config.PGLITE_DATA_DIR, poolSize: 1 })
try {
  const { results, newer } = await migrate(handle.db)
  for (const r of results ?? []) console.log(`${r.status}: ${r.migrationName}`)
  const state = newer.length > 0 ? `ahead of this build (a newer build applied ${newer.join(', ')}); nothing to do`
    : results?.length ? `${results.length} migration(s) applied` : 'up to date'
  console.log(`${handle.kind} at ${maskUrl(handle.location)}: ${state}`)
} finally {
  await handle.close()
}
