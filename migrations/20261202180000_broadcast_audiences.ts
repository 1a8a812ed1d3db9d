import { sql, type Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
//
// Broadcast audiences (docs/BROADCASTS.md, "Audiences"):
// - broadcasts.audience_filter: the filters a topic audience was created with (null: none), read by
//   the planner; broadcasts.audience_final: the people planning listed (null until planned), beside
//   audience_estimate (the count at creation) so a broadcast says how the two differ.
// - notifications_page_psid_sent_idx: the filter `not_notified_since` asks, for each person of an
//   audience, whether a message reached them since a time; keyed by Page and person, partial on what
//   reached someone (sent, or maybe: unconfirmed), so it stays a short range per person.
// Expand-only: an older build neither reads nor writes the new columns, and the index only adds.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('broadcasts')
    .addColumn('audience_filter', 'jsonb')
    .addColumn('audience_final', 'integer')
    .execute()
  await sql`create index notifications_page_psid_sent_idx on notifications (page_id, psid, completed_at)
            where status in ('sent', 'unconfirmed')`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await sql`drop index notifications_page_psid_sent_idx`.execute(db)
  await db.schema.alterTable('broadcasts').dropColumn('audience_final').dropColumn('audience_filter').execute()
}
