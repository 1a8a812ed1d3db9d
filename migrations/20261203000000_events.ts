import { sql, type Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
//
// Outbound events (issue 29, docs/EVENTS.md): an outbox written by triggers in the transaction of
// the change it reports. Every mapping from a change to an event is in this file (the table at the
// top of src/domain/events.ts says which gives which):
// - consent_history, AFTER INSERT, once per statement over its new rows: the ledger's entries.
// - broadcasts, AFTER UPDATE OF state, when it becomes completed or cancelled.
// - pages, AFTER UPDATE OF healthy, when it flips.
// An event, and one delivery per matching subscription, is written only when an enabled subscription
// asks for its type (exact, `family.*` or `*`) and Page; with no enabled subscription a trigger costs
// one probe of event_subscriptions (a reference table of a few rows) and writes nothing.
// Events never hold a token value, an access token or a message (the message of a notification is
// read at delivery time, for a subscription with include_message only).
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.createTable('event_subscriptions')
    .addColumn('id', 'uuid', (c) => c.primaryKey().defaultTo(sql`gen_random_uuid()`))
    .addColumn('url', 'text', (c) => c.notNull())
    .addColumn('events', sql`text[]`, (c) => c.notNull())
    .addColumn('page_ids', sql`text[]`)
    .addColumn('description', 'text')
    .addColumn('include_message', 'boolean', (c) => c.notNull().defaultTo(false))
    .addColumn('enabled', 'boolean', (c) => c.notNull().defaultTo(true))
    .addColumn('disabled_reason', 'text')
    .addColumn('secret', 'text', (c) => c.notNull())
    .addColumn('previous_secret', 'text')
    .addColumn('previous_secret_expires_at', sql`timestamptz(3)`)
    .addColumn('failing_since', sql`timestamptz(3)`)
    .addColumn('created_at', sql`timestamptz(3)`, (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn('updated_at', sql`timestamptz(3)`, (c) => c.notNull().defaultTo(sql`now()`))
    .execute()

  await sql`create sequence event_sequence`.execute(db)
  await db.schema.createTable('events')
    .addColumn('id', 'uuid', (c) => c.notNull().defaultTo(sql`gen_random_uuid()`))
    .addColumn('page_id', 'text', (c) => c.notNull())
    .addColumn('psid', 'text')
    .addColumn('type', 'text', (c) => c.notNull())
    .addColumn('data', 'jsonb', (c) => c.notNull())
    .addColumn('sequence', 'bigint', (c) => c.notNull().defaultTo(sql`nextval('event_sequence')`))
    .addColumn('occurred_at', sql`timestamptz(3)`, (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn('created_at', sql`timestamptz(3)`, (c) => c.notNull().defaultTo(sql`now()`))
    .addPrimaryKeyConstraint('events_pkey', ['id', 'page_id'])
    .execute()
  await sql`create index events_person_idx on events (page_id, psid) where psid is not null`.execute(db)
  await sql`create index events_created_idx on events (created_at)`.execute(db)

  await db.schema.createTable('event_deliveries')
    .addColumn('id', 'uuid', (c) => c.notNull().defaultTo(sql`gen_random_uuid()`))
    .addColumn('page_id', 'text', (c) => c.notNull())
    .addColumn('event_id', 'uuid', (c) => c.notNull())
    .addColumn('subscription_id', 'uuid', (c) => c.notNull().references('event_subscriptions.id').onDelete('cascade'))
    .addColumn('state', 'text', (c) => c.notNull().defaultTo('pending')
      .check(sql`state in ('pending', 'delivering', 'delivered', 'failed', 'cancelled')`))
    .addColumn('attempts', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('next_attempt_at', sql`timestamptz(3)`)
    .addColumn('last_status', 'integer')
    .addColumn('last_error', 'text')
    .addColumn('last_duration_ms', 'integer')
    .addColumn('created_at', sql`timestamptz(3)`, (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn('delivered_at', sql`timestamptz(3)`)
    .addPrimaryKeyConstraint('event_deliveries_pkey', ['id', 'page_id'])
    .addForeignKeyConstraint('event_deliveries_event_fkey', ['event_id', 'page_id'], 'events', ['id', 'page_id'], (c) => c.onDelete('cascade'))
    .execute()
  await sql`create index event_deliveries_due_idx on event_deliveries (next_attempt_at) where state in ('pending', 'delivering')`.execute(db)
  await sql`create index event_deliveries_subscription_idx on event_deliveries (subscription_id, created_at, id)`.execute(db)
  await sql`create index event_deliveries_event_idx on event_deliveries (page_id, event_id)`.execute(db)

  await db.schema.createTable('event_delivery_attempts')
    .addColumn('id', 'bigint', (c) => c.generatedAlwaysAsIdentity())
    .addColumn('page_id', 'text', (c) => c.notNull())
    .addColumn('delivery_id', 'uuid', (c) => c.notNull())
    .addColumn('at', sql`timestamptz(3)`, (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn('duration_ms', 'integer', (c) => c.notNull())
    .addColumn('response_status', 'integer')
    .addColumn('error', 'text')
    .addPrimaryKeyConstraint('event_delivery_attempts_pkey', ['id', 'page_id'])
    .addForeignKeyConstraint('event_delivery_attempts_delivery_fkey', ['delivery_id', 'page_id'], 'event_deliveries', ['id', 'page_id'], (c) => c.onDelete('cascade'))
    .execute()
  await sql`create index event_delivery_attempts_delivery_idx on event_delivery_attempts (page_id, delivery_id, id)`.execute(db)

  // Writes `mapped` (page_id, psid, type, data, occurred_at) as events, each with one delivery per
  // enabled subscription that asks for its type and Page; nothing for an event no subscription wants.
  await sql`
    create function emit_events (mapped jsonb) returns void language plpgsql as $$
    begin
      with m as (
        select x.page_id, x.psid, x.type, x.data, x.occurred_at
          from jsonb_to_recordset(mapped) as x(page_id text, psid text, type text, data jsonb, occurred_at timestamptz)
      ), wanted as (
        select m.*, gen_random_uuid() as id from m
         where exists (select 1 from event_subscriptions s
                        where s.enabled
                          and (m.type = any (s.events) or split_part(m.type, '.', 1) || '.*' = any (s.events) or '*' = any (s.events))
                          and (s.page_ids is null or m.page_id = any (s.page_ids)))
      ), ev as (
        insert into events (id, page_id, psid, type, data, occurred_at)
        select w.id, w.page_id, w.psid, w.type, w.data, w.occurred_at from wanted w
        returning id, page_id, type
      )
      insert into event_deliveries (page_id, event_id, subscription_id, next_attempt_at)
      select ev.page_id, ev.id, s.id, now()
        from ev join event_subscriptions s
          on s.enabled
         and (ev.type = any (s.events) or split_part(ev.type, '.', 1) || '.*' = any (s.events) or '*' = any (s.events))
         and (s.page_ids is null or ev.page_id = any (s.page_ids));
    end $$`.execute(db)

  await sql`
    create function consent_history_events () returns trigger language plpgsql as $$
    declare
      mapped jsonb;
    begin
      if not exists (select 1 from event_subscriptions where enabled) then return null; end if;
      select coalesce(jsonb_agg(e), '[]'::jsonb) into mapped from (
        select h.page_id, h.psid,
               case h.type when 'opted_in' then 'optin.created' when 'stopped' then 'optin.stopped'
                           when 'resumed' then 'optin.resumed' when 'refreshed' then 'optin.refreshed' end as type,
               jsonb_strip_nulls(jsonb_build_object(
                 'page_id', h.page_id, 'psid', h.psid, 'topic_id', tp.id, 'topic_payload', h.payload, 'kind', h.kind,
                 'token_id', h.token_id::text, 'expires_at', h.expires_at, 'token_state', h.status)) as data,
               h.at as occurred_at
          from new_rows h left join topics tp on tp.page_id = h.page_id and tp.payload = h.payload
         where h.type in ('opted_in', 'stopped', 'resumed', 'refreshed')
        union all
        select h.page_id, h.psid,
               case when h.type = 'notification_sent' then 'notification.sent'
                    when h.status = 'unconfirmed' then 'notification.unconfirmed' else 'notification.failed' end,
               jsonb_strip_nulls(jsonb_build_object(
                 'page_id', h.page_id, 'psid', h.psid, 'notification_id', h.notification_id, 'topic_id', n.topic_id,
                 'topic_payload', h.payload, 'kind', h.kind, 'token_id', h.token_id::text, 'route', h.route, 'status', h.status,
                 'token_state', h.detail ->> 'token_state', 'graph_message_id', h.detail ->> 'graph_message_id',
                 'broadcast_id', h.detail ->> 'broadcast_id',
                 'error', case when n.error is not null then jsonb_strip_nulls(jsonb_build_object('code', n.error -> 'code', 'graph', n.error -> 'graph')) end)),
               h.at
          from new_rows h left join notifications n on n.page_id = h.page_id and n.id = h.notification_id
         where h.type in ('notification_sent', 'notification_failed')
        union all
        select h.page_id, null, 'token.expired',
               jsonb_strip_nulls(jsonb_build_object('page_id', h.page_id, 'topic_id', min(tp.id::text), 'topic_payload', h.payload,
                 'kind', min(h.kind), 'count', count(*))),
               max(h.at)
          from new_rows h left join topics tp on tp.page_id = h.page_id and tp.payload = h.payload
         where h.type = 'token_expired'
         group by h.page_id, h.payload
      ) e;
      if jsonb_array_length(mapped) > 0 then perform emit_events(mapped); end if;
      return null;
    end $$`.execute(db)
  await sql`create trigger consent_history_events after insert on consent_history
            referencing new table as new_rows for each statement execute function consent_history_events()`.execute(db)

  await sql`
    create function broadcast_events () returns trigger language plpgsql as $$
    begin
      if not exists (select 1 from event_subscriptions where enabled) then return null; end if;
      perform emit_events(jsonb_build_array(jsonb_build_object(
        'page_id', new.page_id, 'psid', null, 'type', 'broadcast.' || new.state, 'occurred_at', now(),
        'data', (select jsonb_build_object(
                   'broadcast_id', new.id, 'page_id', new.page_id, 'topic_id', new.topic_id, 'state', new.state,
                   'counts', jsonb_build_object(
                     'total', count(*),
                     'sent', count(*) filter (where r.outcome in ('sent_window', 'sent_token')),
                     'no_token', count(*) filter (where r.outcome = 'no_token'),
                     'failed', count(*) filter (where r.outcome = 'failed'),
                     'unconfirmed', count(*) filter (where r.outcome = 'unconfirmed'),
                     'cancelled', count(*) filter (where r.state = 'cancelled'),
                     'pending', count(*) filter (where r.state = 'pending')))
                   from broadcast_recipients r where r.page_id = new.page_id and r.broadcast_id = new.id))));
      return null;
    end $$`.execute(db)
  await sql`create trigger broadcast_events after update of state on broadcasts for each row
            when (new.state is distinct from old.state and new.state in ('completed', 'cancelled'))
            execute function broadcast_events()`.execute(db)

  await sql`
    create function page_health_events () returns trigger language plpgsql as $$
    begin
      if not exists (select 1 from event_subscriptions where enabled) then return null; end if;
      perform emit_events(jsonb_build_array(jsonb_build_object(
        'page_id', new.id, 'psid', null, 'type', case when new.healthy then 'page.healthy' else 'page.unhealthy' end, 'occurred_at', now(),
        'data', jsonb_strip_nulls(jsonb_build_object('page_id', new.id, 'healthy', new.healthy,
                  'error', case when not new.healthy then new.last_error - 'at' end)))));
      return null;
    end $$`.execute(db)
  await sql`create trigger page_health_events after update of healthy on pages for each row
            when (new.healthy is distinct from old.healthy)
            execute function page_health_events()`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await sql`drop trigger page_health_events on pages`.execute(db)
  await sql`drop trigger broadcast_events on broadcasts`.execute(db)
  await sql`drop trigger consent_history_events on consent_history`.execute(db)
  await sql`drop function page_health_events()`.execute(db)
  await sql`drop function broadcast_events()`.execute(db)
  await sql`drop function consent_history_events()`.execute(db)
  await sql`drop function emit_events(jsonb)`.execute(db)
  await db.schema.dropTable('event_delivery_attempts').execute()
  await db.schema.dropTable('event_deliveries').execute()
  await db.schema.dropTable('events').execute()
  await sql`drop sequence event_sequence`.execute(db)
  await db.schema.dropTable('event_subscriptions').execute()
}
