import { sql, type Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
//
// Ready to shard by Page (docs/SCALING.md): every table that grows with traffic carries `page_id`,
// and its primary key and every unique key include it, which is what Citus asks of a table
// distributed by `page_id` (test/db/shard-keys.test.ts holds the schema to it).
//
// - Tables keyed by a generated id get the primary key (id, page_id): id first, so that the lookups
//   that only have an id (GET /v1/notifications/{id} and the like: "router queries", see
//   docs/SCALING.md) keep their index without a second one on id.
// - A token is unique per Page: (page_id, token).
// - An Idempotency-Key is unique per Page: (page_id, idempotency_key), for notifications and
//   broadcasts. The API has no caller identity to scope keys by (API keys are one flat list), so the
//   scope is the Page a request sends for (from its topic), as Stripe scopes keys per account: the
//   same key on two Pages now names two requests (it was a conflict before).
// - webhook_events gets `page_id`: the id of the body's first entry (Meta batches entries of one
//   app; a body is stored whole, on its first entry's Page), or '' when the body has no entry whose
//   id is a Page id. The service writes the same rule (parseDelivery). A re-delivery is the same
//   bytes, so it has the same Page: deduplication by (page_id, digest) catches what the digest
//   alone did.
// - broadcast_recipients gets its broadcast's `page_id`, and its key and foreign key include it.
//
// A contract migration: an older build's `on conflict (token)` and `on conflict (idempotency_key)`
// have no matching unique index after it, and it writes no page_id into the two new columns.
export async function up (db: Kysely<any>): Promise<void> {
  // ---- the two tables without page_id: add it, fill it, require it ----
  await sql`alter table webhook_events add column page_id text`.execute(db)
  // Stored bodies passed the service's JSON parse, but an unreadable one must not stop the upgrade: it gets ''.
  await sql`
    create function otn_migration_first_entry_page(body bytea) returns text language plpgsql as $$
    declare id text;
    begin
      id := convert_from(body, 'UTF8')::jsonb -> 'entry' -> 0 ->> 'id';
      return case when id ~ '^[0-9]{1,32}$' then id else '' end;
    exception when others then
      return '';
    end $$`.execute(db)
  await sql`update webhook_events set page_id = coalesce(otn_migration_first_entry_page(body), '')`.execute(db)
  await sql`drop function otn_migration_first_entry_page(bytea)`.execute(db)
  await sql`alter table webhook_events alter column page_id set not null`.execute(db)

  await sql`alter table broadcast_recipients add column page_id text`.execute(db)
  await sql`update broadcast_recipients r set page_id = b.page_id from broadcasts b where b.id = r.broadcast_id`.execute(db)
  await sql`alter table broadcast_recipients alter column page_id set not null`.execute(db)

  // ---- primary keys ----
  await sql`alter table broadcast_recipients drop constraint broadcast_recipients_broadcast_id_fkey`.execute(db)
  for (const table of ['optin_tokens', 'notifications', 'optin_requests', 'webhook_events', 'broadcasts', 'topics']) {
    await sql`alter table ${sql.table(table)} drop constraint ${sql.id(`${table}_pkey`)}`.execute(db)
    await sql`alter table ${sql.table(table)} add constraint ${sql.id(`${table}_pkey`)} primary key (id, page_id)`.execute(db)
  }
  await sql`alter table broadcast_recipients drop constraint broadcast_recipients_pkey`.execute(db)
  await sql`alter table broadcast_recipients add constraint broadcast_recipients_pkey primary key (page_id, broadcast_id, psid)`.execute(db)
  await sql`alter table broadcast_recipients add constraint broadcast_recipients_broadcast_fkey
            foreign key (broadcast_id, page_id) references broadcasts (id, page_id) on delete cascade`.execute(db)
  // A worker's claim now names the Page too; keyed without it, the pending index lost to the primary
  // key's (page_id, broadcast_id) prefix, and each claim filtered the whole broadcast (75 ms at 20,000).
  await sql`drop index broadcast_recipients_pending_idx`.execute(db)
  await sql`create index broadcast_recipients_pending_idx on broadcast_recipients (page_id, broadcast_id, batch, psid)
            where state = 'pending'`.execute(db)

  // ---- unique keys ----
  await sql`alter table optin_tokens drop constraint optin_tokens_token_key`.execute(db)
  await sql`alter table optin_tokens add constraint optin_tokens_page_token_key unique (page_id, token)`.execute(db)
  for (const table of ['notifications', 'broadcasts']) {
    await sql`alter table ${sql.table(table)} drop constraint ${sql.id(`${table}_idempotency_key_key`)}`.execute(db)
    await sql`alter table ${sql.table(table)} add constraint ${sql.id(`${table}_page_idempotency_key_key`)}
              unique (page_id, idempotency_key)`.execute(db)
  }
  await sql`drop index webhook_events_digest_key`.execute(db)
  await sql`create unique index webhook_events_page_digest_key on webhook_events (page_id, digest) where digest is not null`.execute(db)
}

// Back to global keys: fails (and changes nothing) when two Pages now share a token or an
// Idempotency-Key, or two Pages' deliveries the same bytes, which the older schema cannot hold.
export async function down (db: Kysely<any>): Promise<void> {
  await sql`drop index webhook_events_page_digest_key`.execute(db)
  await sql`create unique index webhook_events_digest_key on webhook_events (digest) where digest is not null`.execute(db)
  for (const table of ['notifications', 'broadcasts']) {
    await sql`alter table ${sql.table(table)} drop constraint ${sql.id(`${table}_page_idempotency_key_key`)}`.execute(db)
    await sql`alter table ${sql.table(table)} add constraint ${sql.id(`${table}_idempotency_key_key`)} unique (idempotency_key)`.execute(db)
  }
  await sql`alter table optin_tokens drop constraint optin_tokens_page_token_key`.execute(db)
  await sql`alter table optin_tokens add constraint optin_tokens_token_key unique (token)`.execute(db)

  await sql`alter table broadcast_recipients drop constraint broadcast_recipients_broadcast_fkey`.execute(db)
  await sql`alter table broadcast_recipients drop constraint broadcast_recipients_pkey`.execute(db)
  await sql`alter table broadcast_recipients add constraint broadcast_recipients_pkey primary key (broadcast_id, psid)`.execute(db)
  for (const table of ['optin_tokens', 'notifications', 'optin_requests', 'webhook_events', 'broadcasts', 'topics']) {
    await sql`alter table ${sql.table(table)} drop constraint ${sql.id(`${table}_pkey`)}`.execute(db)
    await sql`alter table ${sql.table(table)} add constraint ${sql.id(`${table}_pkey`)} primary key (id)`.execute(db)
  }
  await sql`alter table broadcast_recipients add constraint broadcast_recipients_broadcast_id_fkey
            foreign key (broadcast_id) references broadcasts (id) on delete cascade`.execute(db)

  await sql`drop index broadcast_recipients_pending_idx`.execute(db)
  await sql`create index broadcast_recipients_pending_idx on broadcast_recipients (broadcast_id, batch, psid)
            where state = 'pending'`.execute(db)
  await sql`alter table broadcast_recipients drop column page_id`.execute(db)
  await sql`alter table webhook_events drop column page_id`.execute(db)
}
