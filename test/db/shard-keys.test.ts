import t from 'tap'
import { sql } from 'kysely'
import type { Database } from '../../src/db/database.js'
import { testDatabase } from '../helper.js'

// The rule that keeps the schema ready to shard by Page on Citus (docs/SCALING.md), read from the
// catalog of the migrated database. A new table must be added to one of the two lists.

/** Tables that grow with traffic: distributed by page_id. */
const GROWING = [
  'optin_tokens', 'subscribers', 'notifications', 'optin_requests', 'webhook_events', 'broadcasts', 'broadcast_recipients', 'topics',
  'consent_history', 'events', 'event_deliveries', 'event_delivery_attempts',
  // One row per changing /v1 call: it grows with traffic like the notifications it records.
  'audit_log',
]
/** Tables that do not: reference or coordinator tables (the job queue has its own schema). */
const REFERENCE = ['pages', 'broadcast_pacing', 'kysely_migration', 'kysely_migration_lock', 'event_subscriptions']

/** What breaks the rule in schema `public`, one line each; empty when the schema keeps it. */
async function violations (db: Database): Promise<string[]> {
  const found: string[] = []
  const { rows: tables } = await sql<{ name: string, has_page_id: boolean }>`
    select c.relname as name,
           exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'page_id' and not a.attisdropped) as has_page_id
      from pg_class c join pg_namespace ns on ns.oid = c.relnamespace
     where ns.nspname = 'public' and c.relkind in ('r', 'p')
     order by c.relname`.execute(db)
  for (const { name, has_page_id: hasPageId } of tables) {
    if (!GROWING.includes(name) && !REFERENCE.includes(name)) found.push(`${name}: a new table, neither growing nor reference`)
    if (GROWING.includes(name) && !hasPageId) found.push(`${name}: grows with traffic but has no page_id`)
  }

  // Primary keys, unique constraints and unique indexes (expression and partial ones too) of growing tables.
  const { rows: uniques } = await sql<{ table: string, index: string, primary: boolean, has_page_id: boolean }>`
    select c.relname as table, i.relname as index, x.indisprimary as primary,
           exists (select 1 from pg_attribute a
                    where a.attrelid = c.oid and a.attname = 'page_id' and a.attnum = any (x.indkey::int2[])) as has_page_id
      from pg_index x
      join pg_class c on c.oid = x.indrelid
      join pg_class i on i.oid = x.indexrelid
      join pg_namespace ns on ns.oid = c.relnamespace
     where ns.nspname = 'public' and x.indisunique
     order by c.relname, i.relname`.execute(db)
  for (const u of uniques) {
    if (GROWING.includes(u.table) && !u.has_page_id) {
      found.push(`${u.table}: ${u.primary ? 'primary key' : 'unique index'} ${u.index} does not include page_id`)
    }
  }
  for (const table of GROWING.filter((g) => tables.some((x) => x.name === g))) {
    if (!uniques.some((u) => u.table === table && u.primary)) found.push(`${table}: no primary key`)
  }

  // Foreign keys: between growing tables they must pair page_id with page_id (colocated); a
  // reference table must not point at a growing one.
  const { rows: fks } = await sql<{ name: string, from_table: string, to_table: string, pairs_page_id: boolean }>`
    select k.conname as name, f.relname as from_table, r.relname as to_table,
           exists (select 1 from unnest(k.conkey, k.confkey) as p(fa, ra)
                     join pg_attribute af on af.attrelid = k.conrelid and af.attnum = p.fa
                     join pg_attribute ar on ar.attrelid = k.confrelid and ar.attnum = p.ra
                    where af.attname = 'page_id' and ar.attname = 'page_id') as pairs_page_id
      from pg_constraint k
      join pg_class f on f.oid = k.conrelid
      join pg_class r on r.oid = k.confrelid
      join pg_namespace ns on ns.oid = f.relnamespace
     where ns.nspname = 'public' and k.contype = 'f'
     order by k.conname`.execute(db)
  for (const fk of fks) {
    if (GROWING.includes(fk.from_table) && GROWING.includes(fk.to_table) && !fk.pairs_page_id) {
      found.push(`${fk.from_table}: foreign key ${fk.name} to ${fk.to_table} does not pair page_id with page_id`)
    }
    if (REFERENCE.includes(fk.from_table) && GROWING.includes(fk.to_table)) {
      found.push(`${fk.from_table}: foreign key ${fk.name} from a reference table to ${fk.to_table}, a growing one`)
    }
  }
  return found
}

/** Runs `change` in a transaction that is rolled back, and returns what violations() says meanwhile. */
async function violationsAfter (db: Database, change: (trx: Database) => Promise<void>): Promise<string[]> {
  let seen: string[] = []
  const rollback = new Error('rollback')
  await db.transaction().execute(async (trx) => {
    await change(trx)
    seen = await violations(trx)
    throw rollback
  }).catch((error) => { if (error !== rollback) throw error })
  return seen
}

t.test('every growing table carries page_id in its primary key, its unique keys and its foreign keys to other growing tables', async (t) => {
  const { db } = await testDatabase()
  t.same(await violations(db), [])
  const { rows } = await sql<{ name: string }>`
    select table_name as name from information_schema.tables where table_schema = 'public' and table_type = 'BASE TABLE'`.execute(db)
  t.same(rows.map((r) => r.name).sort(), [...GROWING, ...REFERENCE].sort(), 'the lists name every table, and every one exists')
})

t.test('the check fails on each way of breaking the rule', async (t) => {
  const { db } = await testDatabase()
  t.same(await violationsAfter(db, async (trx) => {
    await sql`create table shiny_new_things (id bigint primary key)`.execute(trx)
  }), ['shiny_new_things: a new table, neither growing nor reference'], 'a table in neither list')
  t.same(await violationsAfter(db, async (trx) => {
    await sql`create unique index optin_tokens_token_only on optin_tokens (token)`.execute(trx)
  }), ['optin_tokens: unique index optin_tokens_token_only does not include page_id'], 'a unique index without page_id')
  t.same(await violationsAfter(db, async (trx) => {
    await sql`alter table notifications drop constraint notifications_pkey`.execute(trx)
    await sql`alter table notifications add primary key (id)`.execute(trx)
  }), ['notifications: primary key notifications_pkey does not include page_id'], 'a primary key without page_id')
  t.same(await violationsAfter(db, async (trx) => {
    await sql`create unique index broadcasts_id_only on broadcasts (id)`.execute(trx)
    await sql`alter table broadcast_recipients add constraint recipients_by_id foreign key (broadcast_id) references broadcasts (id)`.execute(trx)
  }), [
    'broadcasts: unique index broadcasts_id_only does not include page_id',
    'broadcast_recipients: foreign key recipients_by_id to broadcasts does not pair page_id with page_id',
  ], 'a foreign key between growing tables without page_id')
  t.same(await violationsAfter(db, async (trx) => {
    await sql`alter table webhook_events drop column page_id cascade`.execute(trx)
  }), ['webhook_events: grows with traffic but has no page_id', 'webhook_events: no primary key'], 'a growing table without page_id')
})
