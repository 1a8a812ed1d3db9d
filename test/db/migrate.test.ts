import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { randomBytes, randomUUID } from 'node:crypto'
import pg from 'pg'
import { sql } from 'kysely'
import { openDatabase, type Database } from '../../src/db/database.js'
import { isContractMigration, migrate, MigrationMismatchError, migrator, pendingMigrations } from '../../src/db/migrate.js'
import { databaseKind, TEST_ENCRYPTION_KEYS } from '../helper.js'
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
  // Up to this migration only, so that migrateDown below reverts it (not whichever migration is last).
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

t.test('migration 20261202120000 keys growing tables by Page and keeps every row; down restores the global keys', async (t) => {
  const db = await emptyDatabase(t)
  const steps = migrator(db)
  t.equal((await steps.migrateTo('20261202090000_add_webhook_event_digest')).error, undefined)
  const body = (s: string) => Buffer.from(s)
  await sql`insert into webhook_events (signature, object, body, digest) values
    ('s1', 'page', ${body('{"object":"page","entry":[{"id":"1001","time":1},{"id":"1002"}]}')}, sha256('a'::bytea)),
    ('s2', 'page', ${body('{"object":"page","entry":[{"id":1003}]}')}, null),
    ('s3', 'page', ${body('{"object":"page","entry":[{"id":"not-a-page"}]}')}, null),
    ('s4', 'page', ${body('{"object":"page","entry":[]}')}, null),
    ('s5', 'page', ${body('not json at all')}, null)`.execute(db)
  await sql`insert into pages (id, name) values ('1001', 'P')`.execute(db)
  const { rows: [b] } = await sql<{ id: string }>`
    insert into broadcasts (page_id, topic_id, message, audience, audience_estimate, state, send_at, idempotency_key)
    values ('1001', gen_random_uuid(), '{}', 'explicit', 2, 'running', now(), 'k1') returning id`.execute(db)
  await sql`insert into broadcast_recipients (broadcast_id, psid, batch) values (${b.id}, 'p1', 0), (${b.id}, 'p2', 0)`.execute(db)
  await sql`insert into optin_tokens (page_id, psid, payload, token, opted_in_at, expires_at)
            values ('1001', 'p1', 'topic', 'TOKEN-A', now(), now() + interval '1 day')`.execute(db)

  t.equal((await steps.migrateTo('20261202120000_contract_shard_keys_by_page')).error, undefined)
  const events = await sql<{ signature: string, page_id: string }>`select signature, page_id from webhook_events order by id`.execute(db)
  t.same(events.rows.map((r) => r.page_id), ['1001', '1003', '', '', ''],
    "the first entry's id when it is a Page id (a number too), else '' (not a Page id, no entry, not JSON)")
  const recipients = await sql<{ page_id: string }>`select page_id from broadcast_recipients order by psid`.execute(db)
  t.same(recipients.rows.map((r) => r.page_id), ['1001', '1001'], "each recipient gets its broadcast's Page")
  // Now unique per Page: the same token and key on another Page are other rows.
  await sql`insert into optin_tokens (page_id, psid, payload, token, opted_in_at, expires_at)
            values ('2002', 'p1', 'topic', 'TOKEN-A', now(), now() + interval '1 day')`.execute(db)
  await t.rejects(sql`insert into optin_tokens (page_id, psid, payload, token, opted_in_at, expires_at)
            values ('1001', 'p9', 'topic', 'TOKEN-A', now(), now() + interval '1 day')`.execute(db), { code: '23505' }, 'still unique on its Page')
  await t.rejects(sql`insert into broadcast_recipients (page_id, broadcast_id, psid, batch) values ('2002', ${b.id}, 'p3', 0)`.execute(db),
    { code: '23503' }, "a recipient's Page must be its broadcast's")
  await sql`delete from broadcasts where id = ${b.id}`.execute(db)
  t.equal((await sql<{ n: number }>`select count(*)::int as n from broadcast_recipients`.execute(db)).rows[0].n, 0, 'the cascade still holds')

  await t.rejects(steps.migrateDown().then((r) => { if (r.error) throw r.error }), { code: '23505' },
    'down refuses while two Pages share a token the old schema cannot hold')
  await sql`delete from optin_tokens where page_id = '2002'`.execute(db)
  t.equal((await steps.migrateDown()).error, undefined)
  const columns = await sql<{ n: number }>`select count(*)::int as n from information_schema.columns
    where table_name in ('webhook_events', 'broadcast_recipients') and column_name = 'page_id'`.execute(db)
  t.equal(columns.rows[0].n, 0, 'down drops the two columns it added')
  t.equal((await sql<{ n: number }>`select count(*)::int as n from webhook_events`.execute(db)).rows[0].n, 5)
  t.equal((await steps.migrateToLatest()).error, undefined, 'and up again')
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

/** Records `names` as applied, as a newer build's Migrator would have. */
async function applyFromNewerBuild (db: Database, ...names: string[]): Promise<void> {
  for (const name of names) await sql`insert into kysely_migration (name, timestamp) values (${name}, ${new Date().toISOString()})`.execute(db)
}

t.test('rolling deploys: an older build runs against a newer build\'s expand migrations (#24.9)', async (t) => {
  const db = await emptyDatabase(t)
  await migrate(db)
  await applyFromNewerBuild(db, '29990101000000_add_future_column', '29990102000000_create_future_table')
  // Kysely alone refuses: "corrupted migrations: previously executed migration ... is missing".
  const kysely = await migrator(db).migrateToLatest()
  t.match(kysely.error, { message: /^corrupted migrations: previously executed migration 29990101000000_add_future_column is missing/ })
  const result = await migrate(db)
  t.same(result.newer, ['29990101000000_add_future_column', '29990102000000_create_future_table'])
  t.same(result.results, [], 'nothing to apply')
  t.same(await pendingMigrations(db), [], 'ready: every migration this build knows is applied')
})

t.test('rolling deploys: a contract migration, or this build\'s own not applied, stops start-up saying what to do (#24.9)', async (t) => {
  t.ok(isContractMigration('29990101000000_contract_drop_old_column'))
  t.notOk(isContractMigration('29990101000000_add_contract_column'))
  t.same(Object.keys(migrations).filter(isContractMigration), ['20261202120000_contract_shard_keys_by_page', '20261203020100_contract_sealed_optin_tokens'],
    'the contracts: keys changed to include page_id, which an older build\'s ON CONFLICT targets do not match; opt-in tokens sealed, which an older build would send as they are')

  const db = await emptyDatabase(t)
  await migrate(db)
  await applyFromNewerBuild(db, '29990101000000_add_future_column', '29990102000000_contract_drop_old_column')
  const last = Object.keys(migrations).sort().at(-1)
  await t.rejects(migrate(db), new MigrationMismatchError(`This build (last migration ${last}) cannot run against this database: a newer ` +
    'build applied 29990102000000_contract_drop_old_column, a contract migration that removes or changes what this build uses. Deploy a ' +
    'build that includes 29990102000000_contract_drop_old_column (or a later one); to go back to this build, restore the database from before that migration.'))

  const behind = await emptyDatabase(t)
  const names = Object.keys(migrations).sort()
  t.equal((await migrator(behind).migrateTo(names.at(-2)!)).error, undefined)
  await applyFromNewerBuild(behind, '29990101000000_add_other_branch_column')
  const error = await migrate(behind).then(() => undefined, (e: unknown) => e)
  t.type(error, MigrationMismatchError)
  t.match((error as Error).message, new RegExp(`^This build's migrations ${names.at(-1)} are not applied, but the database has applied ` +
    '29990101000000_add_other_branch_column, which this build does not know .*Deploy a build that includes all of them'))
  t.same(await pendingMigrations(behind), [names.at(-1)], 'nothing was applied out of order')
})

t.test('rolling deploys, as processes: the previous build restarts against a newer database, or exits saying why (#24.9)', async (t) => {
  const dir = t.testdir({})
  const env = databaseKind === 'postgres' ? { DATABASE_URL: await scratchDatabase(t), ENCRYPTION_KEYS: TEST_ENCRYPTION_KEYS } : { PGLITE_DATA_DIR: dir }
  const prepare = await openDatabase({ databaseUrl: env.DATABASE_URL, pgliteDataDir: env.PGLITE_DATA_DIR })
  await migrate(prepare.db)
  await applyFromNewerBuild(prepare.db, '29990101000000_add_future_column')
  await prepare.close()

  const run = (extra: Record<string, string> = {}) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
      cwd: new URL('../..', import.meta.url).pathname,
      env: { PATH: process.env.PATH ?? '', API_KEYS: 'rolling-test-key', PORT: '0', LOG_LEVEL: 'info', ...env, ...extra },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let out = ''
    let err = ''
    child.stdout.on('data', (c) => { out += c })
    child.stderr.on('data', (c) => { err += c })
    const exited = once(child, 'exit').then(([code]) => code as number)
    const listening = new Promise<string>((resolve, reject) => {
      child.stdout.on('data', () => {
        const docs = /"docs":"([^"]+)\/docs"/.exec(out)
        if (docs) resolve(docs[1])
      })
      void exited.then((code) => reject(new Error(`exited ${code}: ${err}`)))
    })
    return { child, listening, exited, out: () => out, err: () => err }
  }

  const older = run()
  const base = await older.listening
  const ready = await fetch(`${base}/readyz`)
  t.equal(ready.status, 200, 'ready: the newer migration is an expand')
  const warned = older.out().split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((l) => l.newer_migrations)
  t.match(warned, { level: 40, newer_migrations: ['29990101000000_add_future_column'], msg: /^the database is ahead of this build/ })
  older.child.kill('SIGTERM')
  t.equal(await older.exited, 0)

  const again = await openDatabase({ databaseUrl: env.DATABASE_URL, pgliteDataDir: env.PGLITE_DATA_DIR })
  await applyFromNewerBuild(again.db, '29990102000000_contract_drop_old_column')
  await again.close()
  const refused = run()
  refused.listening.catch(() => {})
  t.not(await refused.exited, 0, 'start-up fails')
  t.match(refused.err(), /cannot run against this database: a newer build applied 29990102000000_contract_drop_old_column.*Deploy a build that includes 29990102000000_contract_drop_old_column/)
})
