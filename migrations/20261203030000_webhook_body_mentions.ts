import { sql, type Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
//
// Raw webhook bodies encrypted at rest (issue 31, docs/SECURITY.md): once a body is sealed, erasure
// can no longer search it for a PSID, so each stored body carries `mentions`, the erasure subjects
// (erasure.ts subjectOf: a keyed digest of Page and PSID, not tied to ENCRYPTION_KEYS) of every person
// its events name, and erasure finds a person's bodies by the GIN index (`mentions && array[...]`).
// Rows stored before it keep null: legacy plaintext, found by the former search of the body, which
// the partial index keeps to those rows only (rotate-keys fills `mentions` as it encrypts them).
// Expand-only: a nullable column and two indexes; a build without them writes rows with null
// mentions and a plaintext body, which the legacy search still finds.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('webhook_events').addColumn('mentions', sql`bytea[]`).execute()
  await sql`create index webhook_events_mentions_idx on webhook_events using gin (mentions)`.execute(db)
  await sql`create index webhook_events_legacy_idx on webhook_events (received_at) where mentions is null`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await sql`drop index webhook_events_legacy_idx`.execute(db)
  await sql`drop index webhook_events_mentions_idx`.execute(db)
  await db.schema.alterTable('webhook_events').dropColumn('mentions').execute()
}
