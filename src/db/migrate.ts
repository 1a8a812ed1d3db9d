import { Migrator, type MigrationResultSet } from 'kysely'
import { migrations } from '../../migrations/index.js'
import type { Database } from './database.js'

function migrator (db: Database): Migrator {
  return new Migrator({ db, provider: { getMigrations: async () => migrations } })
}

/** Applies pending migrations; Kysely holds a lock so that instances starting together take turns. */
export async function migrate (db: Database): Promise<MigrationResultSet> {
  const result = await migrator(db).migrateToLatest()
  if (result.error) throw result.error
  return result
}

/** Names of migrations the code knows but the database has not applied. */
export async function pendingMigrations (db: Database): Promise<string[]> {
  const all = await migrator(db).getMigrations()
  return all.filter((m) => !m.executedAt).map((m) => m.name)
}
