// The embedded database (PGlite) runs Postgres as a single process without background workers:
// its autovacuum never runs (`show autovacuum` says on, yet pg_stat_user_tables never shows an
// autovacuum or an autoanalyze). Without it a token table that is updated on every send keeps its
// dead rows for ever, and the planner, with no statistics at all (reltuples -1), guesses. This does
// what autovacuum would, with autovacuum's own default thresholds, from the maintenance task.
// A Postgres server does this itself; the task leaves it alone.
import { sql } from 'kysely'
import type { Database } from './database.js'

/** autovacuum_vacuum_threshold / _scale_factor and autovacuum_analyze_* defaults (Postgres 15). */
const VACUUM = { threshold: 50, scale: 0.2 }
const ANALYZE = { threshold: 50, scale: 0.1 }

/**
 * VACUUM (ANALYZE) each table, in any schema (the job queue's too), whose dead rows or changes
 * since its last analyze pass autovacuum's default thresholds. Answers how many it vacuumed. On
 * PGlite the one connection is busy for the time it takes (about half a second for a 200,000-row
 * table on this machine), once per table that needs it.
 */
export async function vacuumChangedTables (db: Database): Promise<number> {
  const { rows } = await sql<{ schema: string, name: string }>`
    select schemaname as schema, relname as name from pg_stat_user_tables
     where n_dead_tup > ${sql.lit(VACUUM.threshold)} + ${sql.lit(VACUUM.scale)} * n_live_tup
        or n_mod_since_analyze > ${sql.lit(ANALYZE.threshold)} + ${sql.lit(ANALYZE.scale)} * n_live_tup
     order by schemaname, relname`.execute(db)
  for (const { schema, name } of rows) await sql`vacuum (analyze) ${sql.id(schema, name)}`.execute(db)
  return rows.length
}
