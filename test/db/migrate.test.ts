import t from 'tap'
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { sql } from 'kysely'
import { openDatabase } from '../../src/db/database.js'
import { migrate, pendingMigrations } from '../../src/db/migrate.js'
import { databaseKind } from '../helper.js'
import { migrations } from '../../migrations/index.js'

const adminUrl = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

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
  const a = await openDatabase({ databaseUrl: url.toString() })
  const b = await openDatabase({ databaseUrl: url.toString() })
  t.teardown(async () => { await a.close(); await b.close() })
  const [ra, rb] = await Promise.all([migrate(a.db), migrate(b.db)])
  const applied = (ra.results?.length ?? 0) + (rb.results?.length ?? 0)
  t.equal(applied, Object.keys(migrations).length, 'each migration applied exactly once between the two')
  const rows = await sql<{ n: number }>`select count(*)::int as n from kysely_migration`.execute(a.db)
  t.equal(rows.rows[0].n, Object.keys(migrations).length)
  t.same(await pendingMigrations(b.db), [])
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
