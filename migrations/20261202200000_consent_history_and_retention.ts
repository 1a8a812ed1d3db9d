import { sql, type Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
//
// A person's consent (issue 30, docs/PRIVACY.md).
// - Retention: raw webhook bodies are removed after WEBHOOK_BODY_RETENTION_DAYS (the row goes) and
//   notification messages after MESSAGE_BODY_RETENTION_DAYS (the message becomes {}), in batches in
//   the order they age; two partial indexes let each batch start where the last one ended instead
//   of scanning what was already removed.
// Expand-only: a build without them still runs against this schema.
export async function up (db: Kysely<any>): Promise<void> {
  await sql`create index webhook_events_received_idx on webhook_events (received_at)`.execute(db)
  await sql`create index notifications_message_kept_idx on notifications (created_at)
            where message <> '{}'::jsonb and completed_at is not null`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await sql`drop index notifications_message_kept_idx`.execute(db)
  await sql`drop index webhook_events_received_idx`.execute(db)
}
