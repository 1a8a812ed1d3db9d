import { sql, type Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
//
// Recurring notifications (Meta's `notification_messages` opt-in) are rows of optin_tokens, kind
// `notification_messages` (docs/RECURRING.md):
// - what the opt-in said: `title`, `frequency` (DAILY | WEEKLY | MONTHLY, absent on newer API
//   versions), `timezone` (IANA, absent when Meta gives none), `user_token_status`;
// - `stopped_at`: the person stopped the topic (null: active). A column, not a state, so that a stop
//   arriving while a send holds the token changes nothing the send's outcome relies on, and a
//   resume clears it. `status_at`: the event time of the latest opt-in, stop or resume applied, so
//   that an older event delivered late changes nothing;
// - `last_sent_at` and `next_send_at`: the pacing. A send may use the token from `next_send_at` on.
// - state `replaced`: a newer opt-in of the same person on the same topic (Meta's re-opt-in,
//   `REFRESHED`) took its place.
// pages gain `timezone` (IANA, default UTC): a recurring token's calendar periods when Meta gave it
// none. Notifications sent with a recurring token have route `recurring`, and a recurring token's
// outcome may be `stopped` (Meta: the person stopped the topic) or `deferred` (Meta's frequency
// limit); opt-in requests have a kind; a broadcast may wait for people's cooldowns.
// Expand-only: a build without them still runs against this schema (it writes none of the new values).
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('optin_tokens')
    .addColumn('title', 'text')
    .addColumn('frequency', 'text', (c) => c.check(sql`frequency in ('DAILY', 'WEEKLY', 'MONTHLY')`))
    .addColumn('timezone', 'text')
    .addColumn('user_token_status', 'text')
    .addColumn('stopped_at', sql`timestamptz(3)`)
    .addColumn('status_at', sql`timestamptz(3)`)
    .addColumn('last_sent_at', sql`timestamptz(3)`)
    .addColumn('next_send_at', sql`timestamptz(3)`)
    .execute()
  await sql`alter table optin_tokens drop constraint optin_tokens_state_check`.execute(db)
  await sql`alter table optin_tokens add constraint optin_tokens_state_check
            check (state in ('available', 'used', 'invalid', 'expired', 'discarded', 'unconfirmed', 'replaced'))`.execute(db)

  await db.schema.alterTable('pages').addColumn('timezone', 'text', (c) => c.notNull().defaultTo('UTC')).execute()

  await sql`alter table notifications drop constraint notifications_route_check`.execute(db)
  await sql`alter table notifications add constraint notifications_route_check check (route in ('window', 'token', 'recurring'))`.execute(db)
  await sql`alter table notifications drop constraint notifications_token_state_check`.execute(db)
  await sql`alter table notifications add constraint notifications_token_state_check
            check (token_state in ('used', 'released', 'invalid', 'unconfirmed', 'stopped', 'deferred'))`.execute(db)

  // The kind of token a send may use (null: any), as the caller asked: kept for the send's next token and for recovery.
  await db.schema.alterTable('notifications')
    .addColumn('token_kind', 'text', (c) => c.check(sql`token_kind in ('one_time_notif', 'notification_messages')`))
    .execute()

  await db.schema.alterTable('optin_requests')
    .addColumn('kind', 'text', (c) => c.notNull().defaultTo('one_time_notif').check(sql`kind in ('one_time_notif', 'notification_messages')`))
    .execute()
  // Meta's rule: one recurring request per title, person and week (the lookup of POST .../optin-requests).
  await sql`create index optin_requests_recurring_idx on optin_requests (page_id, psid, title, created_at)
            where kind = 'notification_messages' and status = 'sent'`.execute(db)

  await db.schema.alterTable('broadcasts')
    .addColumn('defer_cooldown', 'boolean', (c) => c.notNull().defaultTo(false))
    .execute()
  await sql`alter table broadcast_recipients drop constraint broadcast_recipients_outcome_check`.execute(db)
  await sql`alter table broadcast_recipients add constraint broadcast_recipients_outcome_check
            check (outcome in ('sent_window', 'sent_token', 'sent_recurring', 'no_token', 'cooldown', 'failed', 'unconfirmed'))`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await sql`alter table broadcast_recipients drop constraint broadcast_recipients_outcome_check`.execute(db)
  await sql`update broadcast_recipients set outcome = case outcome when 'sent_recurring' then 'sent_token' else 'failed' end
             where outcome in ('sent_recurring', 'cooldown')`.execute(db)
  await sql`alter table broadcast_recipients add constraint broadcast_recipients_outcome_check
            check (outcome in ('sent_window', 'sent_token', 'no_token', 'failed', 'unconfirmed'))`.execute(db)
  await db.schema.alterTable('broadcasts').dropColumn('defer_cooldown').execute()
  await sql`drop index optin_requests_recurring_idx`.execute(db)
  await db.schema.alterTable('optin_requests').dropColumn('kind').execute()
  await db.schema.alterTable('notifications').dropColumn('token_kind').execute()
  await sql`alter table notifications drop constraint notifications_token_state_check`.execute(db)
  await sql`update notifications set token_state = case token_state when 'stopped' then 'invalid' else 'released' end
             where token_state in ('stopped', 'deferred')`.execute(db)
  await sql`alter table notifications add constraint notifications_token_state_check
            check (token_state in ('used', 'released', 'invalid', 'unconfirmed'))`.execute(db)
  await sql`alter table notifications drop constraint notifications_route_check`.execute(db)
  await sql`update notifications set route = 'token' where route = 'recurring'`.execute(db)
  await sql`alter table notifications add constraint notifications_route_check check (route in ('window', 'token'))`.execute(db)
  await db.schema.alterTable('pages').dropColumn('timezone').execute()
  await sql`alter table optin_tokens drop constraint optin_tokens_state_check`.execute(db)
  await sql`update optin_tokens set state = 'discarded' where state = 'replaced'`.execute(db)
  await sql`alter table optin_tokens add constraint optin_tokens_state_check
            check (state in ('available', 'used', 'invalid', 'expired', 'discarded', 'unconfirmed'))`.execute(db)
  for (const column of ['next_send_at', 'last_sent_at', 'status_at', 'stopped_at', 'user_token_status', 'timezone', 'frequency', 'title']) {
    await db.schema.alterTable('optin_tokens').dropColumn(column).execute()
  }
}
