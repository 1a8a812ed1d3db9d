import { mkdirSync } from 'node:fs'
import { CompiledQuery, Kysely, PostgresDialect } from 'kysely'
import { PGlite } from '@electric-sql/pglite'
import pg from 'pg'
import { lockDataDir, type Holder } from './data-dir-lock.js'
import { PGliteDialect, SessionLock } from './pglite-dialect.js'
import { defaultSeedPath, seedFor } from './pglite-seed.js'
import { prepareStatements } from './prepared-statements.js'
import type { DB } from './types.js'

export type Database = Kysely<DB>

export interface DatabaseHandle {
  db: Database
  kind: 'postgres' | 'pglite'
  /** Where the data lives, for the start-up log; never includes a password. */
  location: string
  /** The pg Pool behind `db` (Postgres only), for its metrics. */
  pool?: pg.Pool
  /** The process that held the embedded folder before this one and was killed without releasing it. */
  previousHolder?: Holder
  close(): Promise<void>
}

// int8 (counts, identity ids) arrives as a string from pg; keep it so, as PGlite is told to below.
export interface DatabaseOptions {
  databaseUrl?: string
  poolSize?: number
  /** Named statements kept per connection (0: none). */
  statementCacheSize?: number
  pgliteDataDir?: string
  /** An empty database to copy into a new folder (pglite-seed.ts); default: the one the build wrote, if any. */
  pgliteSeed?: string
}

export async function openDatabase (options: DatabaseOptions): Promise<DatabaseHandle> {
  if (options.databaseUrl) {
    // Named statements are planned for each execution's own parameters (they still save the parse).
    // A generic plan is made once per connection, often while the tables are still small, and kept:
    // with keys that share the `page_id` prefix (docs/SCALING.md) it took an index on page_id alone
    // and scanned every row of the Page, and the window route fell from 1,069–1,267 to 249–316
    // sends/s at 64 connections (2026-12-02, bench, after the shard-key migration). Unnamed
    // statements (a cache of 0, behind a pooler that would refuse the start-up option) always are.
    const statementCacheSize = options.statementCacheSize ?? 100
    const pool = new pg.Pool({
      connectionString: options.databaseUrl,
      max: options.poolSize ?? 10,
      ...(statementCacheSize > 0 ? { options: '-c plan_cache_mode=force_custom_plan' } : {}),
    })
    // An idle client losing its server (a Postgres restart) must not crash the process.
    pool.on('error', () => {})
    // Nor must a client losing it while checked out (inside a transaction): its query rejects and
    // the caller answers 503; an unhandled 'error' event would kill the process (seen in the soak).
    pool.on('connect', (client) => { client.on('error', () => {}) })
    prepareStatements(pool, statementCacheSize)
    const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) })
    const url = new URL(options.databaseUrl)
    url.password = url.password ? '***' : ''
    return {
      db,
      kind: 'postgres',
      location: url.toString(),
      pool,
      close: () => db.destroy(),
    }
  }
  const dataDir = options.pgliteDataDir ?? './data/pglite'
  const seed = options.pgliteSeed ?? defaultSeedPath()
  if (dataDir.startsWith('memory://')) return openPglite(dataDir, seed)
  mkdirSync(dataDir, { recursive: true })
  // Held until close: a second process on this folder is refused (DataDirInUseError), never run beside.
  const folderLock = lockDataDir(dataDir)
  try {
    const handle = await openPglite(dataDir, seed)
    return {
      ...handle,
      previousHolder: folderLock.previous,
      close: async () => {
        try {
          await handle.close()
        } finally {
          folderLock.release()
        }
      },
    }
  } catch (error) {
    folderLock.release()
    throw error
  }
}

async function openPglite (dataDir: string, seedPath: string): Promise<DatabaseHandle> {
  const pglite = await PGlite.create(dataDir, {
    parsers: { 20: (value: string) => value },
    loadDataDir: seedFor(dataDir, seedPath),
  })
  const lock = new SessionLock()
  const db = new Kysely<DB>({ dialect: new PGliteDialect(pglite, lock) })
  return {
    db,
    kind: 'pglite',
    location: dataDir,
    close: async () => {
      await db.destroy()
      // Kysely closes PGlite only once it has run a query; one started from a seed otherwise keeps the process alive.
      if (!pglite.closed) await pglite.close()
    },
  }
}

/** Raw SQL for libraries that bring their own (the job queue), through the same pool or session lock. */
export function rawExecutor (db: Database): { executeSql(text: string, values?: unknown[]): Promise<{ rows: any[] }> } {
  return { executeSql: async (text, values) => db.executeQuery(CompiledQuery.raw(text, values ?? [])) }
}
