/** Webhook ingestion's token part (ingest.ts): new one-time tokens and recurring opt-ins, stops and resumes, as CTEs of its one statement. (The token store: see ../token-store.ts.) */
import { sql, type RawBuilder } from 'kysely'
import { keyedDigests, sealSecret } from '../../crypto/secret-box.js'
import { NO_EXPIRY_SQL, usable } from './states.js'

/**
 * A token record (one-time or recurring) as the statements below take it: `token` sealed
 * (secret-box, column `optin_tokens.token`), `digest` its keyed digest under the current key (what a
 * new row stores) and `digests` every digest a row of it stored earlier may carry (older keys',
 * the unkeyed one of rows written in clear), all hex. Equality and uniqueness go by digest: two
 * seals of one token differ.
 */
export function storedToken<T extends { token: string }> (record: T): Omit<T, 'token'> & { token: string, digest: string, digests: string[] } {
  // The first of the lookup digests is the one a new row stores (keyedDigests).
  const digests = keyedDigests('optin_token', record.token).map((d) => d.toString('hex'))
  return { ...record, token: sealSecret('optin_tokens.token', record.token), digest: digests[0], digests }
}

/** The bytea[] of a record's `digests` (a jsonb array of hex) in SQL. */
const digestsOf = (alias: string) => sql`array(select decode(d, 'hex') from jsonb_array_elements_text(${sql.ref(`${alias}.digests`)}) d)`

/**
 * New tokens of a webhook statement, as the body of a CTE: from `tokensJson` (a jsonb array, or an
 * expression of one, of
 * TokenRecord as storedToken gives it, with the `ord` of their delivery) joined to `input` (the deliveries: id, ord), each
 * token once (its earliest opt-in), a token already held left as it is. Already-expired ones are
 * stored `expired`. Returns webhook_event_id and state of each token added.
 */
export function insertTokens (tokensJson: string | RawBuilder<unknown>, input: string): RawBuilder<unknown> {
  return sql`
    insert into optin_tokens (kind, page_id, psid, payload, token, token_digest, opted_in_at, expires_at, state, webhook_event_id)
    select distinct on (t.page_id, t.digest) t.kind, t.page_id, t.psid, t.payload, t.token, decode(t.digest, 'hex'), t.opted_in_at, t.expires_at,
           case when t.expires_at <= now() then 'expired' else 'available' end,
           input.id
      from jsonb_to_recordset(${tokensJson}::jsonb)
        as t(ord int, kind text, page_id text, psid text, payload text, token text, digest text, digests jsonb, opted_in_at timestamptz, expires_at timestamptz)
      join ${sql.table(input)} input on input.ord = t.ord
     where not exists (select 1 from optin_tokens o where o.page_id = t.page_id and o.token_digest = any(${digestsOf('t')}))
     order by t.page_id, t.digest, t.opted_in_at, t.ord
    on conflict (page_id, token_digest) do nothing
    returning webhook_event_id, state, id, page_id, psid, payload, kind, opted_in_at, expires_at`
}

/**
 * Recurring events of a webhook statement (RecurringRecord, with the `ord` of their delivery, joined
 * to `input`: the deliveries stored now, columns id and ord), applied as CTEs named `rec_in`,
 * `rec_token`, `rec_stored`, `rec_newer`, `rec_replaced` and `rec_written` (records as storedToken gives them; `rec_in` adds
 * `token_digest` and `lookup`, the bytea of `digest` and `digests`); `rec_written` returns the event id (`webhook_event_id` of
 * the delivery that brought it), `state`, `inserted` and `token_digest` of each token written. The latest event by
 * event time wins (an opt-in or resume makes a token active, a stop stops it), so a duplicate or an
 * older event delivered late changes nothing. A person holds one active recurring token per topic:
 * a newer opt-in (Meta's re-opt-in, `REFRESHED`) replaces older ones, which carry their pacing over
 * (a refresh must not open a second message inside the cooldown). A token a send holds is left to
 * that send. A token value already held as a one-time token is left as it is.
 */
export function recordRecurring (recordsJson: string | RawBuilder<unknown>, input: string): RawBuilder<unknown> {
  const NM = sql.lit('notification_messages')
  const sameTopic = (a: string, b: string) => sql`${sql.ref(`${a}.page_id`)} = ${sql.ref(`${b}.page_id`)} and ${sql.ref(`${a}.psid`)} = ${sql.ref(`${b}.psid`)}
    and ${sql.ref(`${a}.payload`)} = ${sql.ref(`${b}.payload`)}`
  return sql`
    rec_in as (
      select r.*, decode(r.digest, 'hex') as token_digest, ${digestsOf('r')} as lookup, i.id as event_id
        from jsonb_to_recordset(${recordsJson}::jsonb)
          as r(ord int, page_id text, psid text, payload text, token text, digest text, digests jsonb, at timestamptz, event text, title text,
               frequency text, timezone text, user_token_status text, expires_at timestamptz)
        join ${sql.table(input)} i on i.ord = r.ord
    ), rec_token as (
      select g.*, ${digestsOf('g')} as lookup from (
        select r.page_id, r.token_digest,
               (array_agg(r.token order by r.at, r.ord))[1] as token,
               (array_agg(r.digests))[1] as digests,
               (array_agg(r.psid order by r.at desc))[1] as psid,
               (array_agg(r.payload order by r.at desc))[1] as payload,
               (array_agg(r.event_id order by r.at, r.ord))[1] as event_id,
               min(r.at) as first_at,
               min(r.at) filter (where r.event = 'optin') as optin_at,
               max(r.at) as status_at,
               (array_agg(case when r.event = 'stop' then r.at end order by r.at desc))[1] as stopped_at,
               (array_agg(r.title order by r.at desc) filter (where r.title is not null))[1] as title,
               (array_agg(r.frequency order by r.at desc) filter (where r.frequency is not null))[1] as frequency,
               (array_agg(r.timezone order by r.at desc) filter (where r.timezone is not null))[1] as timezone,
               (array_agg(r.user_token_status order by r.at desc) filter (where r.user_token_status is not null))[1] as user_token_status,
               coalesce(max(r.expires_at) filter (where r.expires_at < ${NO_EXPIRY_SQL}), ${NO_EXPIRY_SQL}) as expires_at
          from rec_in r
         group by r.page_id, r.token_digest) g
    ), rec_stored as (
      -- The row each token is stored in already, under any configured key's digest (or the unkeyed
      -- one of a row written in clear), locked. A rotation that re-digests it meanwhile (token-store/
      -- rotation.ts) makes this wait and read the row's new digest; reading it unlocked, the insert
      -- below would go by the digest the row no longer has and store the token a second time.
      select o.page_id, o.token_digest, r.token_digest as incoming
        from optin_tokens o join rec_token r on o.page_id = r.page_id and o.token_digest = any(r.lookup)
       order by o.page_id, o.token_digest
         for update of o
    ), rec_newer as (
      -- Whether a newer opt-in on the same topic (stored, or in this statement) supersedes each token;
      -- and the digest of the row it is written to: a row stored before under another key's digest
      -- (or in clear) is the same token, and the insert below meets it by that digest.
      select r.*, (
        exists (select 1 from optin_tokens o where ${sameTopic('o', 'r')} and o.kind = ${NM} and not (o.token_digest = any(r.lookup))
                   and o.state in ('available', 'replaced') and o.opted_in_at > r.first_at)
        or exists (select 1 from rec_token n where ${sameTopic('n', 'r')} and n.token_digest <> r.token_digest and n.optin_at > r.first_at)
      ) as superseded,
      coalesce((select s.token_digest from rec_stored s where s.page_id = r.page_id and s.incoming = r.token_digest limit 1), r.token_digest) as stored_digest
        from rec_token r
    ), rec_replaced as (
      update optin_tokens o set state = 'replaced', updated_at = now()
        from rec_token r
       where ${sameTopic('o', 'r')} and o.kind = ${NM} and not (o.token_digest = any(r.lookup)) and r.optin_at is not null and o.opted_in_at < r.optin_at
         and ${usable('o')}
         and not exists (select 1 from rec_token x where x.page_id = o.page_id and o.token_digest = any(x.lookup))
      returning o.id
    ), rec_written as (
      insert into optin_tokens (kind, page_id, psid, payload, token, token_digest, opted_in_at, expires_at, state, webhook_event_id, title, frequency,
                                timezone, user_token_status, stopped_at, status_at, last_sent_at, next_send_at)
      select ${NM}, r.page_id, r.psid, r.payload, r.token, r.stored_digest, r.first_at, r.expires_at,
             case when r.expires_at <= now() then 'expired' when r.superseded then 'replaced' else 'available' end,
             r.event_id, r.title, r.frequency, r.timezone, r.user_token_status, r.stopped_at, r.status_at,
             (select max(o.last_sent_at) from optin_tokens o where ${sameTopic('o', 'r')} and o.kind = ${NM}),
             (select max(o.next_send_at) from optin_tokens o where ${sameTopic('o', 'r')} and o.kind = ${NM})
        from rec_newer r
       order by r.page_id, r.stored_digest
      on conflict (page_id, token_digest) do update set
        stopped_at = case when excluded.status_at > coalesce(optin_tokens.status_at, '-infinity') then excluded.stopped_at else optin_tokens.stopped_at end,
        status_at = greatest(optin_tokens.status_at, excluded.status_at),
        opted_in_at = least(optin_tokens.opted_in_at, excluded.opted_in_at),
        title = coalesce(optin_tokens.title, excluded.title),
        frequency = coalesce(optin_tokens.frequency, excluded.frequency),
        timezone = coalesce(optin_tokens.timezone, excluded.timezone),
        user_token_status = coalesce(excluded.user_token_status, optin_tokens.user_token_status),
        expires_at = case when excluded.expires_at < ${NO_EXPIRY_SQL} and (optin_tokens.expires_at >= ${NO_EXPIRY_SQL} or excluded.expires_at > optin_tokens.expires_at)
                          then excluded.expires_at else optin_tokens.expires_at end,
        state = case when excluded.state = 'replaced' and ${usable('optin_tokens')} then 'replaced' else optin_tokens.state end,
        updated_at = now()
       where optin_tokens.kind = ${NM}
      returning webhook_event_id, state, (xmax = 0) as inserted, id, page_id, token_digest, expires_at
    )`
}
