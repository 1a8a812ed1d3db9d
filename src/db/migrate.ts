import { DEFAULT_MIGRATION_TABLE, Migrator, sql, type MigrationResultSet } from 'kysely'
import { migrations } from '../../migrations/index.js'
import type { Database } from './database.js'

/** Kysely's Migrator over this build's migrations (tests use it to stop part way). */
export function migrator (db: Database): Migrator {
  return new Migrator({ db, provider: { getMigrations: async () => migrations } })
}

/**
 * A contract migration removes or changes what an earlier build reads or writes; its name says so
 * (`YYYYMMDDHHMMSS_contract_...`), since an older build meeting it has only its name to go by.
 * Every other migration is an expand: it only adds, and every earlier build runs against it
 * (docs/OPERATIONS.md, "Rolling deploys").
 */
export const isContractMigration = (name: string): boolean => /^\d{14}_contract_/.test(name)

/** This build cannot run against the database as it is; the message says what to do. */
export class MigrationMismatchError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'MigrationMismatchError'
  }
}

export interface MigrateResult extends MigrationResultSet {
  /** Migrations the database has applied that this build does not know: a newer build's expands. */
  newer: string[]
}

const UNDEFINED_TABLE = '42P01'

async function appliedMigrations (db: Database): Promise<Set<string>> {
  try {
    const { rows } = await sql<{ name: string }>`select name from ${sql.table(DEFAULT_MIGRATION_TABLE)}`.execute(db)
    return new Set(rows.map((r) => r.name))
  } catch (error) {
    if ((error as { code?: unknown }).code !== UNDEFINED_TABLE) throw error
    return new Set()
  }
}

/**
 * The newer migrations the database has applied, when this build may run against them (all
 * expands, and every one of its own applied); otherwise a MigrationMismatchError saying what to do.
 */
function newerCompatible (applied: Set<string>): string[] {
  const known = Object.keys(migrations).sort()
  const newer = [...applied].filter((name) => !(name in migrations)).sort()
  if (newer.length === 0) return []
  const last = known[known.length - 1]
  const contracts = newer.filter(isContractMigration)
  if (contracts.length > 0) {
    throw new MigrationMismatchError(`This build (last migration ${last}) cannot run against this database: a newer build applied ` +
      `${contracts.join(', ')}, a contract migration that removes or changes what this build uses. Deploy a build that includes ` +
      `${contracts[contracts.length - 1]} (or a later one); to go back to this build, restore the database from before that migration.`)
  }
  const missing = known.filter((name) => !applied.has(name))
  if (missing.length > 0) {
    throw new MigrationMismatchError(`This build's migrations ${missing.join(', ')} are not applied, but the database has applied ` +
      `${newer.join(', ')}, which this build does not know (a build from another branch migrated it). Applying this build's ` +
      `now would run them out of order. Deploy a build that includes all of them (merge the branches), then start again.`)
  }
  return newer
}

/**
 * Applies pending migrations; Kysely holds a lock so that instances starting together take turns.
 * Migrations are expand-then-contract, so during a rolling deploy an instance of the previous build
 * may (re)start against a database a newer build has migrated: it runs when every migration it
 * knows is applied and the newer ones are expands (`newer` names them), and refuses with what to do
 * otherwise.
 */
export async function migrate (db: Database): Promise<MigrateResult> {
  for (let attempt = 0; ; attempt++) {
    const newer = newerCompatible(await appliedMigrations(db))
    if (newer.length > 0) return { results: [], newer }
    const result = await migrator(db).migrateToLatest()
    // A newer build may have migrated between the read and Kysely's: read again once.
    if (result.error instanceof Error && /^corrupted migrations/.test(result.error.message) && attempt === 0) continue
    if (result.error) throw result.error
    return { ...result, newer: [] }
  }
}

/**
 * Names of migrations the code knows but the database has not applied, in the order they apply.
 * One read of Kysely's own record of applied migrations. `Migrator.getMigrations` would first ask
 * whether that table exists by introspecting every table and column of the database: 3.6–6.5 ms
 * against 0.15–0.2 for this read, and /readyz runs it on every probe. A database without that
 * record has applied nothing.
 */
export async function pendingMigrations (db: Database): Promise<string[]> {
  const applied = await appliedMigrations(db)
  return Object.keys(migrations).sort().filter((name) => !applied.has(name))
}
