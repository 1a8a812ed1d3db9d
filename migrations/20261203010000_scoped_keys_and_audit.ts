import { sql, type Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
//
// Scoped API keys and the audit (issue 31, docs/SECURITY.md).
// - created_by: the name of the API key that created the row (null: created before this, by the
//   service itself, or by a webhook). Nullable, no default: old builds keep inserting without it.
// - audit_log: one row per changing /v1 call, written after the answer: who (the key's name), what
//   (method, route pattern, Page, resource id, status), when. It grows with traffic, so it is
//   distributed by page_id like the other growing tables: page_id is '' when the call named no Page
//   the service knows (a call refused before its Page was found). Never a body, never a secret.
//   Removed after AUDIT_RETENTION_DAYS by the maintenance task, oldest first (audit_log_created_idx).
// Expand-only: a build without them still runs against this schema.
export async function up (db: Kysely<any>): Promise<void> {
  for (const table of ['pages', 'topics', 'optin_requests', 'notifications', 'broadcasts']) {
    await db.schema.alterTable(table).addColumn('created_by', 'text').execute()
  }
  await db.schema.createTable('audit_log')
    .addColumn('id', 'bigint', (c) => c.generatedAlwaysAsIdentity())
    .addColumn('page_id', 'text', (c) => c.notNull())
    .addColumn('key_name', 'text', (c) => c.notNull())
    .addColumn('method', 'text', (c) => c.notNull())
    .addColumn('route', 'text', (c) => c.notNull())
    .addColumn('resource_id', 'text')
    .addColumn('status', 'integer', (c) => c.notNull())
    .addColumn('request_id', 'text')
    .addColumn('created_at', sql`timestamptz(3)`, (c) => c.notNull().defaultTo(sql`now()`))
    .addPrimaryKeyConstraint('audit_log_pkey', ['id', 'page_id'])
    .execute()
  await sql`create index audit_log_created_idx on audit_log (created_at, id)`.execute(db)
  await sql`create index audit_log_key_idx on audit_log (key_name, created_at, id)`.execute(db)
  await sql`create index audit_log_page_idx on audit_log (page_id, created_at, id)`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('audit_log').execute()
  for (const table of ['pages', 'topics', 'optin_requests', 'notifications', 'broadcasts']) {
    await db.schema.alterTable(table).dropColumn('created_by').execute()
  }
}
