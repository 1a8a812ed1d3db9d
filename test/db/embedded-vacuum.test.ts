import t from 'tap'
import { sql } from 'kysely'
import { vacuumChangedTables } from '../../src/db/embedded-vacuum.js'
import { build, databaseKind, testDatabase } from '../helper.js'

// What autovacuum does on a server, done by the maintenance task on the embedded database, where
// autovacuum never runs. Both databases: the sweep itself is plain SQL; only the task is PGlite's.

interface Stats { n_dead_tup: number, n_mod_since_analyze: number, reltuples: number }
const scratch = 'vacuum_probe'

t.test('a table past autovacuum\'s thresholds is vacuumed and analyzed; one under them is left alone', async (t) => {
  const { db } = await testDatabase()
  const stats = async (): Promise<Stats> => {
    const { rows: [row] } = await sql<Stats>`
      select s.n_dead_tup::int, s.n_mod_since_analyze::int, c.reltuples::float8 as reltuples
        from pg_stat_user_tables s join pg_class c on c.oid = s.relid where s.relname = ${scratch}`.execute(db)
    return row
  }
  await sql`create table ${sql.id(scratch)} (id int primary key, v text)`.execute(db)
  t.teardown(() => sql`drop table if exists ${sql.id(scratch)}`.execute(db))
  await sql`insert into ${sql.id(scratch)} select i, md5(i::text) from generate_series(1, 5000) i`.execute(db)
  await sql`update ${sql.id(scratch)} set v = v || 'x' where id % 2 = 0`.execute(db)
  await sql`select pg_stat_force_next_flush()`.execute(db).catch(() => {})
  const before = await stats()
  t.ok(before.n_dead_tup > 50 + 0.2 * 5000 || before.n_mod_since_analyze > 0, `past the thresholds: ${JSON.stringify(before)}`)

  t.ok(await vacuumChangedTables(db) >= 1, 'at least the scratch table was vacuumed')
  const after = await stats()
  t.equal(after.n_dead_tup, 0, 'its dead rows are gone')
  t.equal(after.n_mod_since_analyze, 0, 'and it has fresh statistics')
  t.equal(after.reltuples, 5000, 'the planner knows its size')

  await sql`update ${sql.id(scratch)} set v = 'y' where id <= 10`.execute(db)
  await sql`select pg_stat_force_next_flush()`.execute(db).catch(() => {})
  const { rows } = await sql<{ name: string }>`select relname as name from pg_stat_user_tables where relname = ${scratch}
     and (n_dead_tup > 50 + 0.2 * n_live_tup or n_mod_since_analyze > 50 + 0.1 * n_live_tup)`.execute(db)
  t.same(rows, [], 'ten changed rows of 5,000: under the thresholds')
})

t.test('the maintenance task vacuums on the embedded database only', async (t) => {
  const { db } = await testDatabase()
  await sql`create table ${sql.id(scratch)} (id int primary key)`.execute(db)
  t.teardown(() => sql`drop table if exists ${sql.id(scratch)}`.execute(db))
  await sql`insert into ${sql.id(scratch)} select generate_series(1, 1000)`.execute(db)
  await sql`select pg_stat_force_next_flush()`.execute(db).catch(() => {})
  const app = await build(t)
  await app.ready()
  await app.maintenance() // it runs in the background, once the app is ready
  const { rows: [row] } = await sql<{ analyzed: boolean }>`
    select last_analyze is not null as analyzed from pg_stat_user_tables where relname = ${scratch}`.execute(db)
  t.equal(row.analyzed, databaseKind === 'pglite', databaseKind === 'pglite'
    ? 'PGlite: the task analyzed the new table'
    : 'Postgres: the task left it to the server\'s autovacuum (which records last_autoanalyze, not last_analyze)')
})
