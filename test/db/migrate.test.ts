import t, { type Test } from 'tap'
import { randomBytes, randomUUID } from 'node:crypto'
import pg from 'pg'
import { sql } from 'kysely'
import { openDatabase, type Database } from '../../src/db/database.js'
import { migrate, migrator, pendingMigrations } from '../../src/db/migrate.js'
import { databaseKind } from '../helper.js'
import { migrations } from '../../migrations/index.js'

const adminUrl = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

/** A new, empty database on the Postgres server, dropped when the test ends; its URL. */
async function scratchDatabase (t: Test): Promise<string> {
  const name = `otn_migrate_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  await admin.query(`create database ${name}`)
  t.teardown(async () => {
    await admin.query(`drop database if exists ${name} with (force)`)
    await admin.end()
  })
  const url = new URL(adminUrl)
  url.pathname = `/${name}`
  return url.toString()
}

/** A new, empty database of the kind under test (a scratch database on the server, or PGlite in memory), closed when the test ends. */
async function emptyDatabase (t: Test): Promise<Database> {
  const handle = databaseKind === 'postgres'
    ? await openDatabase({ databaseUrl: await scratchDatabase(t) })
    : await openDatabase({ pgliteDataDir: 'memory://' })
  t.teardown(() => handle.close())
  return handle.db
}

t.test('migrations are idempotent, and two instances migrating at once both succeed', async (t) => {
  if (databaseKind !== 'postgres') {
    const handle = await openDatabase({ pgliteDataDir: 'memory://' })
    t.teardown(() => handle.close())
    const first = await migrate(handle.db)
    t.equal(first.results?.length, Object.keys(migrations).length)
    const again = await migrate(handle.db)
    t.same(again.results, [], 'nothing left to apply')
    t.same(await pendingMigrations(handle.db), [])
    return
  }
  const url = await scratchDatabase(t)
  const a = await openDatabase({ databaseUrl: url })
  const b = await openDatabase({ databaseUrl: url })
  t.teardown(async () => { await a.close(); await b.close() })
  const [ra, rb] = await Promise.all([migrate(a.db), migrate(b.db)])
  const applied = (ra.results?.length ?? 0) + (rb.results?.length ?? 0)
  t.equal(applied, Object.keys(migrations).length, 'each migration applied exactly once between the two')
  const rows = await sql<{ n: number }>`select count(*)::int as n from kysely_migration`.execute(a.db)
  t.equal(rows.rows[0].n, Object.keys(migrations).length)
  t.same(await pendingMigrations(b.db), [])
})

t.test('pendingMigrations reads the record of applied migrations, and creates nothing where there is none', async (t) => {
  const db = await emptyDatabase(t)
  const names = Object.keys(migrations).sort()
  t.same(await pendingMigrations(db), names, 'an empty database has applied nothing')
  const tables = async () => (await sql<{ n: number }>`
    select count(*)::int as n from pg_tables where tablename like 'kysely_migration%'`.execute(db)).rows[0].n
  t.equal(await tables(), 0, 'asking created no table')

  const steps = migrator(db)
  t.equal((await steps.migrateTo(names[1])).error, undefined)
  t.same(await pendingMigrations(db), names.slice(2), 'the ones after the last applied, in order')
  const kysely = (await steps.getMigrations()).filter((m) => !m.executedAt).map((m) => m.name)
  t.same(await pendingMigrations(db), kysely, "the same answer as Kysely's Migrator")
  await migrate(db)
  t.same(await pendingMigrations(db), [], 'none once all are applied')
})

t.test('migration 20261122000000 turns each reservation into a hold of its open notification, or settles it', async (t) => {
  const db = await emptyDatabase(t)
  const steps = migrator(db)
  t.equal((await steps.migrateTo('20261121040000_rekey_backlog_indexes')).error, undefined)

  const { rows: ns } = await sql<{ id: string }>`
    insert into notifications (page_id, psid, message, status, completed_at)
    values ('1', 'a', '{}', 'pending', null), ('1', 'b', '{}', 'sent', now()), ('1', 'd', '{}', 'failed', now())
    returning id`.execute(db)
  const [open, sent, failed] = ns.map((n) => n.id)
  const lease = new Date(Date.now() + 60_000)
  const token = (psid: string, state: string, holder: string | null) => sql`
    insert into optin_tokens (page_id, psid, payload, token, opted_in_at, expires_at, state, notification_id, lease_expires_at)
    values ('1', ${psid}, 'x', ${`tok-${psid}`}, now(), now() + interval '300 days', ${state}, ${holder},
            ${state === 'reserved' ? lease : null})`
  for (const [psid, state, holder] of [['a', 'reserved', open], ['b', 'reserved', sent], ['c', 'reserved', randomUUID()],
    ['d', 'reserved', failed], ['e', 'available', null]] as const) {
    await token(psid, state, holder).execute(db)
  }
  t.equal((await steps.migrateTo('20261122000000_hold_tokens_in_place')).error, undefined)

  const { rows } = await sql<{ psid: string, state: string, held_by: string | null, leased: boolean }>`
    select psid, state, notification_id as held_by, lease_expires_at is not null as leased from optin_tokens order by psid`.execute(db)
  t.same(rows.map((r) => [r.psid, r.state, r.leased]), [
    ['a', 'available', true], ['b', 'used', false], ['c', 'unconfirmed', false], ['d', 'unconfirmed', false], ['e', 'available', false],
  ], 'open: held with its lease; sent: used; gone or not sent: unconfirmed; the rest untouched')
  t.equal(rows[0].held_by, open)
  t.equal(rows[4].held_by, null)
  const { rows: indexes } = await sql<{ name: string }>`
    select indexname as name from pg_indexes where tablename = 'optin_tokens' and indexname = 'optin_tokens_lease_idx'`.execute(db)
  t.same(indexes, [], 'no index names the lease: a claim can be a HOT update')

  t.equal((await steps.migrateDown()).error, undefined)
  const { rows: back } = await sql<{ state: string }>`select state from optin_tokens where psid = 'a'`.execute(db)
  t.same(back, [{ state: 'reserved' }], 'down: a hold is a reservation again')
})

t.test('the embedded database keeps its data across restarts', async (t) => {
  const dir = t.testdir({})
  const first = await openDatabase({ pgliteDataDir: dir })
  await migrate(first.db)
  await first.db.insertInto('pages').values({ id: '42', name: 'Persisted' }).execute()
  await first.close()
  const second = await openDatabase({ pgliteDataDir: dir })
  t.teardown(() => second.close())
  t.same(await pendingMigrations(second.db), [])
  const page = await second.db.selectFrom('pages').select('name').where('id', '=', '42').executeTakeFirst()
  t.same(page, { name: 'Persisted' })
})
