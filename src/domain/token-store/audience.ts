/** Broadcast audiences (audience.ts): the filters as one WHERE over the usable-token index, the estimate, and why a person had no token. (The token store: see ../token-store.ts.) */
import { sql, type RawBuilder, type SqlBool } from 'kysely'
import type { Database } from '../../db/database.js'
import type { TokenKind } from '../../db/types.js'
import { usable } from './states.js'

/**
 * A topic audience as SQL asks it: everyone holding a usable token on (Page, payload) that matches
 * the token filters, whose person matches the person filters (src/domain/audience.ts says what
 * each means; it resolves topics to payloads). Absent fields filter nothing.
 */
export interface AudienceQuery {
  page_id: string
  payload: string
  token_kind?: TokenKind
  opted_in_after?: string
  opted_in_before?: string
  expiring_before?: string
  last_interaction_after?: string
  last_interaction_before?: string
  window?: 'open' | 'closed'
  /** Payloads of other topics the person must hold a usable token on, each; `false`: a topic asked for is gone (nobody matches). */
  holds?: string[] | false
  excludes?: string[]
  not_notified_since?: string
  psids?: string[]
  exclude_psids?: string[]
}

/**
 * The audience's rows: usable tokens of the topic (`o`) matching every filter, AND-ed. Driven by the
 * usable index's range of the topic (page_id, payload, psid); a person's other facts are index
 * probes keyed by (page_id, psid): subscribers' primary key, the usable index for other topics,
 * notifications_page_psid_sent_idx. A person never seen interacting counts as interacting at -infinity.
 */
function audienceMatch (q: AudienceQuery, windowSeconds: number): RawBuilder<SqlBool> {
  const at = (v: string) => sql`${v}::timestamptz`
  const lastInteraction = sql`coalesce((select s.last_interaction_at from subscribers s where s.page_id = o.page_id and s.psid = o.psid), '-infinity'::timestamptz)`
  const holdsOther = (payload: string) => sql`exists (select 1 from optin_tokens h
      where h.page_id = o.page_id and h.payload = ${payload} and h.psid = o.psid and ${usable('h')} and h.expires_at > now())`
  const parts: Array<RawBuilder<unknown>> = [sql`o.page_id = ${q.page_id} and o.payload = ${q.payload} and ${usable('o')} and o.expires_at > now()`]
  if (q.token_kind !== undefined) parts.push(sql`o.kind = ${q.token_kind}`)
  if (q.opted_in_after !== undefined) parts.push(sql`o.opted_in_at >= ${at(q.opted_in_after)}`)
  if (q.opted_in_before !== undefined) parts.push(sql`o.opted_in_at < ${at(q.opted_in_before)}`)
  if (q.expiring_before !== undefined) parts.push(sql`o.expires_at < ${at(q.expiring_before)}`)
  if (q.psids !== undefined) parts.push(sql`o.psid = any(${q.psids}::text[])`)
  if (q.exclude_psids !== undefined) parts.push(sql`not (o.psid = any(${q.exclude_psids}::text[]))`)
  if (q.last_interaction_after !== undefined) parts.push(sql`${lastInteraction} >= ${at(q.last_interaction_after)}`)
  if (q.last_interaction_before !== undefined) parts.push(sql`${lastInteraction} < ${at(q.last_interaction_before)}`)
  if (q.window !== undefined) {
    parts.push(sql`${lastInteraction} ${sql.raw(q.window === 'open' ? '>' : '<=')} now() - make_interval(secs => ${windowSeconds})`)
  }
  if (q.holds === false) parts.push(sql`false`)
  else for (const payload of q.holds ?? []) parts.push(holdsOther(payload))
  for (const payload of q.excludes ?? []) parts.push(sql`not ${holdsOther(payload)}`)
  if (q.not_notified_since !== undefined) {
    parts.push(sql`not exists (select 1 from notifications n where n.page_id = o.page_id and n.psid = o.psid
      and n.status in ('sent', 'unconfirmed') and n.completed_at >= ${at(q.not_notified_since)})`)
  }
  return sql<SqlBool>`(${sql.join(parts, sql` and `)})`
}

/**
 * People of an audience after `after` in PSID order, `limit` at most: one page of it, in the usable
 * index's order (never the whole audience at once). A recurring token cooling down still counts:
 * its person is waited for or skipped as `cooldown` when their turn comes (the broadcast's defer_cooldown).
 */
export function audiencePage (q: AudienceQuery, windowSeconds: number, after: string | undefined, limit: number): RawBuilder<{ psid: string }> {
  return sql<{ psid: string }>`
    select distinct o.psid from optin_tokens o
     where ${audienceMatch(q, windowSeconds)}
       ${after !== undefined ? sql`and o.psid > ${after}` : sql``}
     order by o.psid
     limit ${limit}`
}

/** An audience's size, and how many of them each route would reach now (window, a recurring token, a one-time token). */
export interface AudienceEstimate { audience: number, window: number, recurring: number, token: number }

/**
 * The estimate as one statement over the same rows planning lists, so that with nothing changed in
 * between it equals the planned audience. The route each person would take, as a send picks it
 * among all their usable tokens on the topic (of the broadcast's token_kind, if any): the window
 * when `useWindow` and it is open; else a recurring token that may send now; else a one-time token;
 * else (only a recurring token cooling down) recurring, waited for or skipped as cooldown.
 */
export function audienceEstimate (q: AudienceQuery, windowSeconds: number, useWindow: boolean): RawBuilder<AudienceEstimate> {
  const holds = (kind: TokenKind, extra: RawBuilder<unknown>) => q.token_kind !== undefined && q.token_kind !== kind
    ? sql`false`
    : sql`exists (select 1 from optin_tokens t where t.page_id = ${q.page_id} and t.payload = ${q.payload} and t.psid = a.psid
          and ${usable('t')} and t.expires_at > now() and t.kind = ${kind} ${extra})`
  return sql<AudienceEstimate>`
    select count(*)::int as audience,
           (count(*) filter (where r.window_open))::int as window,
           (count(*) filter (where not r.window_open and (r.recurring_ready or not r.one_time)))::int as recurring,
           (count(*) filter (where not r.window_open and not r.recurring_ready and r.one_time))::int as token
      from (
        select ${useWindow}::boolean and coalesce((select s.last_interaction_at > now() - make_interval(secs => ${windowSeconds})
                 from subscribers s where s.page_id = ${q.page_id} and s.psid = a.psid), false) as window_open,
               ${holds('notification_messages', sql`and (t.next_send_at is null or t.next_send_at <= now())`)} as recurring_ready,
               ${holds('one_time_notif', sql``)} as one_time
          from (select distinct o.psid from optin_tokens o where ${audienceMatch(q, windowSeconds)}) a
        offset 0 -- each person's facts once, not once per count that reads them
      ) r`
}

/**
 * Why someone a broadcast listed holds no usable token on its topic when their turn comes (the
 * send answered no_token), from the person's most recently changed token there: `opted_out` (they
 * stopped it, or the topic), `token_spent` (used, refused, unconfirmed, replaced, or held by another
 * send), `token_expired`, or `no_record` (no token on record: erased, or never opted in).
 */
export type NoTokenReason = 'opted_out' | 'token_spent' | 'token_expired' | 'no_record'

export async function noTokenReason (db: Database, target: { page_id: string, topic_id: string, psid: string }): Promise<NoTokenReason> {
  const { rows: [last] } = await sql<{ state: string, stopped: boolean, expired: boolean }>`
    select o.state, o.stopped_at is not null as stopped, o.expires_at <= now() as expired
      from optin_tokens o
     where o.page_id = ${target.page_id} and o.psid = ${target.psid}
       and o.payload = (select t.payload from topics t where t.page_id = ${target.page_id} and t.id = ${target.topic_id})
     order by o.updated_at desc, o.id desc
     limit 1`.execute(db)
  if (!last) return 'no_record'
  if (last.stopped || last.state === 'discarded') return 'opted_out'
  if (last.state === 'expired' || (last.state === 'available' && last.expired)) return 'token_expired'
  return 'token_spent'
}
