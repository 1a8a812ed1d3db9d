import { sql, type Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
// A delivery's SHA-256 digest, so that Meta's re-deliveries of the same bytes (for up to 36 hours)
// are answered without being stored again. Expand-only: a build without it writes rows without a
// digest, which deduplicate nothing and are never matched. Rows stored before it get none (hashing
// every stored body would hold the migration lock for as long as that takes): a re-delivery of one
// of them is stored once more, for at most Meta's 36 hours after the upgrade.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('webhook_events').addColumn('digest', 'bytea').execute()
  await db.schema.createIndex('webhook_events_digest_key').on('webhook_events').column('digest').unique()
    .where(sql.ref('digest'), 'is not', null).execute()
}

export async function down (db: Kysely<any>): Promise<void> {
  await db.schema.dropIndex('webhook_events_digest_key').execute()
  await db.schema.alterTable('webhook_events').dropColumn('digest').execute()
}
