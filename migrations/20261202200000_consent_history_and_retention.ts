import { sql, type Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
//
// A person's consent (issue 30, docs/PRIVACY.md).
// - Retention: raw webhook bodies are removed after WEBHOOK_BODY_RETENTION_DAYS (the row goes) and
//   notification messages after MESSAGE_BODY_RETENTION_DAYS (the message becomes {}), in batches in
//   the order they age; two partial indexes let each batch start where the last one ended instead
//   of scanning what was already removed.
// - consent_history: the append-only ledger per (Page, person), one row per change of their consent
//   or of what was sent on it, written in the transaction of that change. `psid` is null only on
//   an `erased` entry, which names the person by `subject` instead: a keyed digest (HMAC-SHA256
//   under ERASURE_KEY) of Page and PSID, so that the entry holds no personal data yet lets a later
//   webhook for that person be recognised as older than the erasure. A re-delivered webhook event
//   writes nothing twice: (page_id, token_id, type, at) is unique where a token is named.
// Expand-only: a build without them still runs against this schema.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.createTable('consent_history')
    .addColumn('id', 'bigint', (c) => c.generatedAlwaysAsIdentity())
    .addColumn('page_id', 'text', (c) => c.notNull())
    .addColumn('psid', 'text')
    .addColumn('subject', 'bytea')
    .addColumn('type', 'text', (c) => c.notNull().check(sql`type in ('optin_requested', 'opted_in', 'refreshed', 'stopped', 'resumed',
      'token_used', 'token_expired', 'token_invalid', 'token_discarded', 'notification_sent', 'notification_failed', 'erased')`))
    .addColumn('payload', 'text')
    .addColumn('kind', 'text')
    .addColumn('token_id', 'bigint')
    .addColumn('notification_id', 'uuid')
    .addColumn('optin_request_id', 'uuid')
    .addColumn('route', 'text')
    .addColumn('status', 'text')
    .addColumn('expires_at', sql`timestamptz(3)`)
    .addColumn('detail', 'jsonb')
    .addColumn('at', sql`timestamptz(3)`, (c) => c.notNull())
    .addColumn('created_at', sql`timestamptz(3)`, (c) => c.notNull().defaultTo(sql`now()`))
    .addPrimaryKeyConstraint('consent_history_pkey', ['id', 'page_id'])
    .addCheckConstraint('consent_history_person_check', sql`(psid is not null) <> (type = 'erased')`)
    .execute()
  await sql`create index consent_history_person_idx on consent_history (page_id, psid, created_at, id)`.execute(db)
  await sql`create index consent_history_erased_idx on consent_history (page_id, subject) where type = 'erased'`.execute(db)
  await sql`create unique index consent_history_token_event_key on consent_history (page_id, token_id, type, at)
            where token_id is not null`.execute(db)

  await sql`create index webhook_events_received_idx on webhook_events (received_at)`.execute(db)
  await sql`create index notifications_message_kept_idx on notifications (created_at)
            where message <> '{}'::jsonb and completed_at is not null`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await db.schema.dropTable('consent_history').execute()
  await sql`drop index notifications_message_kept_idx`.execute(db)
  await sql`drop index webhook_events_received_idx`.execute(db)
}
