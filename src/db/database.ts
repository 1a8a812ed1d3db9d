import { mkdirSync } from 'node:fs'
import { Kysely, PostgresDialect, sql } from 'kysely'
import { PGliteDialect } from 'kysely-pglite-dialect'
import { PGlite } from '@electric-sql/pglite'
import pg from 'pg'
import type { DB } from './types.js'

export type Database = Kysely<DB>

export interface DatabaseHandle {
  db: Database
  kind: 'postgres' | 'pglite'
  /** Where the data lives, for the start-up log; never includes a password. */
  location: string
  close(): Promise<void>
}

// int8 (counts, identity ids) arrives as a string from pg; keep it so, as PGlite is told to below.
export interface DatabaseOptions {
  databaseUrl?: string
  poolSize?: number
  pgliteDataDir?: string
}

export async function openDatabase (options: DatabaseOptions): Promise<DatabaseHandle> {
  if (options.databaseUrl) {
    const pool = new pg.Pool({ connectionString: options.databaseUrl, max: options.poolSize ?? 10 })
    // An idle client losing its server (a Postgres restart) must not crash the process.
    pool.on('error', () => {})
    const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) })
    const url = new URL(options.databaseUrl)
    url.password = url.password ? '***' : ''
    return { db, kind: 'postgres', location: url.toString(), close: () => db.destroy() }
  }
  const dataDir = options.pgliteDataDir ?? './data/pglite'
  if (!dataDir.startsWith('memory://')) mkdirSync(dataDir, { recursive: true })
  const pglite = await PGlite.create(dataDir, {
    parsers: { 20: (value: string) => value },
  })
  const db = new Kysely<DB>({ dialect: new PGliteDialect(pglite) })
  return { db, kind: 'pglite', location: dataDir, close: () => db.destroy() }
}

export async function ping (db: Database): Promise<void> {
  await sql`select 1`.execute(db)
}
