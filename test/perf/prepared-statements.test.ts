import t from 'tap'
import { sql } from 'kysely'
import { openDatabase, type Database } from '../../src/db/database.js'
import { recordAudit } from '../../src/domain/audit.js'
import { testDatabase } from '../helper.js'

// Named statements exist on Postgres connections only (PGlite is one in-process session): test/perf
// runs in the Postgres pass.
{
  const shared = await testDatabase()

  /** One connection, so every statement below meets the same server session. */
  const open = async (statementCacheSize?: number) => {
    const handle = await openDatabase({ databaseUrl: shared.url!, poolSize: 1, ...(statementCacheSize !== undefined ? { statementCacheSize } : {}) })
    t.teardown(() => handle.close())
    return handle.db
  }
  const prepared = async (db: Database) =>
    (await sql<{ name: string, statement: string }>`select name, statement from pg_prepared_statements order by prepare_time`.execute(db)).rows

  t.test('a parameterised statement is prepared once per connection and reused', async (t) => {
    const db = await open()
    for (let i = 0; i < 3; i++) {
      const { rows } = await sql<{ n: number }>`select ${i}::int + 1 as n`.execute(db)
      t.equal(rows[0].n, i + 1)
    }
    const statements = await prepared(db)
    t.equal(statements.filter((s) => s.statement.includes('+ 1 as n')).length, 1, 'one prepared statement for three calls')
    t.match(statements[0].name, /^otn_\d+$/)
    t.notOk(statements.some((s) => s.statement.includes('pg_prepared_statements')), 'a statement without parameters stays unnamed')
  })

  t.test('at most the configured number per connection, least recently used deallocated first', async (t) => {
    const db = await open(3)
    const keep = (v: number) => sql`select ${v}::int as keep`.execute(db)
    await keep(1)
    for (let i = 0; i < 10; i++) {
      await sql`select ${i}::int as ${sql.raw(`c${i}`)}`.execute(db)
      await keep(i) // used all along: never the least recently used
    }
    const statements = await prepared(db)
    t.equal(statements.length, 3)
    t.ok(statements.some((s) => s.statement.includes('as keep')), 'the statement in constant use is kept')
    t.ok(statements.some((s) => s.statement.includes('as c9')), 'the newest is kept')
    t.notOk(statements.some((s) => s.statement.includes('as c0')), 'the oldest unused is gone')
    const { rows } = await sql<{ c0: number }>`select ${7}::int as c0`.execute(db)
    t.equal(rows[0].c0, 7, 'an evicted statement is prepared again when it comes back')
  })

  t.test('a batched write is one statement whatever its batch size: it takes one slot of the cache, not one per size', async (t) => {
    // The audit is written by group commit, so its batches come in every size. Written as a VALUES
    // list they were a new statement per size and pushed the send's statements out of the cache.
    const db = await open()
    const entry = (i: number) => ({ key_name: 'cache-probe', method: 'POST', route: '/v1/notifications', page_id: null, resource_id: null, status: 201, request_id: `c${i}`, at: new Date() })
    for (const size of [1, 2, 3, 7, 20]) await recordAudit(db, ...Array.from({ length: size }, (_, i) => entry(i)))
    t.equal((await prepared(db)).filter((s) => s.statement.includes('audit_log')).length, 1, 'five batch sizes, one prepared statement')
    const { rows } = await sql<{ n: number }>`select count(*)::int as n from audit_log where key_name = 'cache-probe'`.execute(db)
    t.equal(rows[0].n, 33, 'every entry written')
  })

  t.test('0 turns naming off', async (t) => {
    const db = await open(0)
    await sql`select ${1}::int as off`.execute(db)
    t.same(await prepared(db), [])
  })

  t.test('a migration that changes the columns of a prepared select *', async (t) => {
    const db = await open()
    await sql`create table prepared_probe (id int primary key)`.execute(db)
    await sql`insert into prepared_probe values (1)`.execute(db)
    const read = () => sql<Record<string, unknown>>`select * from prepared_probe where id = ${1}`.execute(db)
    t.same((await read()).rows, [{ id: 1 }])

    await sql`alter table prepared_probe add column note text default 'new'`.execute(db)
    t.same((await read()).rows, [{ id: 1, note: 'new' }], 'outside a transaction: prepared afresh and sent again, the caller sees nothing')

    await sql`alter table prepared_probe add column other int default 2`.execute(db)
    await t.rejects(db.transaction().execute(async (trx) => {
      await sql`select * from prepared_probe where id = ${1}`.execute(trx)
    }), { code: '0A000' }, 'inside a transaction the refusal reaches the caller (the transaction is already aborted)')
    t.same((await read()).rows, [{ id: 1, note: 'new', other: 2 }], 'and the next call works')
    await sql`drop table prepared_probe`.execute(db)
  })
}
