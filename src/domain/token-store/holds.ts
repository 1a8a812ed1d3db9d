/** Claims and holds: a send takes a token, keeps it under a lease and settles it. (The token store: see ../token-store.ts.) */
import { sql, type RawBuilder, type SqlBool } from 'kysely'
import type { Database } from '../../db/database.js'
import type { TokenKind } from '../../db/types.js'
import { tokenHistory } from '../consent-history.js'
import { DERIVED_STATES, SETTLED, type Settled, type TokenOutcome } from '../lifecycle.js'
import { heldBy, sendOrder, sendable, usable } from './states.js'

/** A token held for one notification; its value goes to Meta and nowhere else. */
export interface ClaimedToken {
  id: string
  kind: TokenKind
  /**
   * As stored (sealed; legacy rows in clear): the send that spends it opens it (send.ts), so that
   * a token no configured key can read fails its own send only, not a batch of others' sends.
   */
  token: string
  expires_at: Date
  lease_expires_at: Date
}

export interface ClaimTarget {
  page_id: string
  payload: string
  psid: string
  notification_id: string
  /** The kind the send may use; null or absent: any. */
  kind?: TokenKind | null
  leaseSeconds: number
}

/**
 * Holds the person's next sendable token of (Page, topic payload, PSID) for one notification, in
 * one statement: a recurring one that may send now, else the soonest-expiring one-time one. SKIP
 * LOCKED hands concurrent claimers different rows (or none) without waiting on each other, across
 * any number of instances; a held recurring token is not usable, so two sends never share one. A
 * new send makes the same choice inside its first statement (claimForStarts); this one serves the
 * next token after a refusal. `busy`: nothing was claimed, yet the person holds a sendable token
 * whose row another statement has locked for a moment (lockedSendable): claim again shortly.
 */
export async function claimToken (db: Database, target: ClaimTarget): Promise<ClaimedToken | 'busy' | undefined> {
  const { rows } = await sql<ClaimedToken & { busy: boolean }>`
    with claimed as (
      update optin_tokens
         set notification_id = ${target.notification_id},
             lease_expires_at = now() + make_interval(secs => ${target.leaseSeconds}),
             updated_at = now()
       where page_id = ${target.page_id} and id = (
         select o.id from optin_tokens o
          where o.page_id = ${target.page_id} and o.payload = ${target.payload} and o.psid = ${target.psid}
            and ${sendable('o', target.kind ?? null)}
          order by ${sendOrder('o')}
          limit 1
          for update skip locked)
      returning id, kind, token, expires_at, lease_expires_at
    )
    select c.id, c.kind, c.token, c.expires_at, c.lease_expires_at,
           c.id is null and ${lockedSendable(sql`${target.page_id}::text`, sql`${target.payload}::text`, sql`${target.psid}::text`, target.kind ?? null)} as busy
      from (select 1) one left join claimed c on true`.execute(db)
  const { busy, ...claimed } = rows[0]
  return claimed.id !== null ? claimed : busy ? 'busy' : undefined
}

/**
 * After a claim of the same statement found nothing: whether the person still holds a sendable
 * token as the statement's snapshot sees it. SKIP LOCKED passes over a row another transaction has
 * locked (a key rotation batch re-sealing it, another send's claim not yet committed) or changed
 * since; the plain read here still sees it, so the person is not without a token: the row is busy.
 */
function lockedSendable (pageId: unknown, payload: unknown, psid: unknown, kind: unknown): RawBuilder<SqlBool> {
  return sql<SqlBool>`exists (
    select 1 from optin_tokens b where b.page_id = ${pageId} and b.payload = ${payload} and b.psid = ${psid} and ${sendable('b', kind)})`
}

/**
 * The claim of a send's first statement, as four CTEs, `pick`, `claim`, `busy` and `cooling`: for each
 * row of `source` (columns id: the notification's, page_id, payload, psid, window_open, token_kind)
 * whose window is closed, the person's next sendable token (as claimToken chooses), held for it with
 * a lease of `leaseSeconds`. `claim` returns id, notification_id, kind, token, expires_at,
 * lease_expires_at. `busy` (notification_id) names each row that claimed nothing while the person
 * holds a sendable token another statement has locked for a moment (lockedSendable): the send claims
 * again shortly. `cooling` (notification_id, until) names, for each other row that claimed nothing,
 * when its recurring token may send next, if it holds one that is only waiting for its pacing (or
 * that another send is using now: then a cooldown from now).
 */
export function claimForStarts (source: string, leaseSeconds: unknown, cooldownSeconds: unknown): RawBuilder<unknown> {
  const go = sql.table(source)
  return sql`
    pick as (
      select go.id as notification_id, go.page_id, o.id
        from ${go} go cross join lateral (
          select o.id from optin_tokens o
           where not go.window_open
             and o.page_id = go.page_id and o.payload = go.payload and o.psid = go.psid
             and ${sendable('o', sql.ref('go.token_kind'))}
           order by ${sendOrder('o')}
           limit 1
           for update of o skip locked) o
    ), claim as (
      update optin_tokens o
         set lease_expires_at = now() + make_interval(secs => ${leaseSeconds}),
             notification_id = pick.notification_id,
             updated_at = now()
        from pick
       where o.page_id = pick.page_id and o.id = pick.id
      returning o.id, o.notification_id, o.kind, o.token, o.expires_at, o.lease_expires_at
    ), busy as materialized (
      select go.id as notification_id from ${go} go
       where not go.window_open and not exists (select 1 from pick where pick.notification_id = go.id)
         and ${lockedSendable(sql.ref('go.page_id'), sql.ref('go.payload'), sql.ref('go.psid'), sql.ref('go.token_kind'))}
    ), cooling as materialized (
      -- Materialized: computed once for each row that claimed nothing, not once per row of the insert's join.
      select go.id as notification_id, (
        select min(case when o.next_send_at > now() then o.next_send_at else now() + make_interval(secs => ${cooldownSeconds}) end)
          from optin_tokens o
         where o.page_id = go.page_id and o.payload = go.payload and o.psid = go.psid and o.kind = 'notification_messages'
           and o.state = ${sql.lit(DERIVED_STATES.usable.state)} and o.stopped_at is null and o.expires_at > now()
           and (go.token_kind is null or go.token_kind = 'notification_messages')) as until
        from ${go} go
       where not go.window_open and not exists (select 1 from pick where pick.notification_id = go.id)
         and not exists (select 1 from busy where busy.notification_id = go.id)
    )`
}

/** One hold: the token and the notification holding it, and their Page; `kind`: the token's (default one-time). */
export interface Hold { page_id: string, token_id: string, notification_id: string, kind?: TokenKind }

/** Where a hold's token goes, as settleHolds reads it: SETTLED (lifecycle.ts) for its kind and outcome. */
export function settledOf (h: Hold, to: TokenOutcome): Settled {
  return SETTLED[h.kind ?? 'one_time_notif'][to]
}

/**
 * When recurring token `alias` may send again if it sends now (its pacing): after the cooldown of
 * `cooldownSeconds`, and not before the next calendar period of its frequency (day; week, Monday to
 * Sunday; month) in its time zone, else its Page's, else UTC.
 */
export function nextSendAt (alias: string, cooldownSeconds: unknown): RawBuilder<Date> {
  const c = (name: string) => sql.ref(`${alias}.${name}`)
  const tz = sql`coalesce(${c('timezone')}, (select p.timezone from pages p where p.id = ${c('page_id')}), 'UTC')`
  const next = (unit: string) => sql`((date_trunc(${sql.lit(unit)}, now() at time zone ${tz}) + ${sql.lit(`1 ${unit}`)}::interval) at time zone ${tz})`
  return sql<Date>`greatest(now() + make_interval(secs => ${cooldownSeconds}),
    case ${c('frequency')} when 'DAILY' then ${next('day')} when 'WEEKLY' then ${next('week')} when 'MONTHLY' then ${next('month')} end)`
}

/**
 * The end of holds, as the body of a CTE over `input`, a relation with the columns
 * `held_page_id` (text), `held_token_id` (bigint), `held_by` (uuid: the notification holding it) and
 * where its token goes, as settledOf gives it: `state_to` (text), `stops` (boolean), `paces` (text:
 * `sent`, `later` or null); rows with a null `held_token_id` move nothing. Each row names the holder,
 * so a stale holder (whose lease recovery took over) changes nothing. Returns `held_by` for each
 * token moved (and what carryPacing needs), so that the caller writes the notification's side only
 * where its token moved. A token that stays usable is free again; one that paces (a recurring
 * token's send) gets its next send time from now and `cooldownSeconds` (`pacing`: some row paces;
 * without, the statement leaves the pacing columns out, so a one-time send plans no more than it needs).
 */
export function settleHolds (input: string, cooldownSeconds: number, pacing = true): RawBuilder<unknown> {
  return sql`
    update optin_tokens o
       set state = i.state_to,
           lease_expires_at = null,
           notification_id = case when i.state_to = ${sql.lit(DERIVED_STATES.usable.state)} then null else o.notification_id end,
           ${pacing
             ? sql`stopped_at = case when i.stops then now() else o.stopped_at end,
           last_sent_at = case when i.paces = 'sent' then now() else o.last_sent_at end,
           next_send_at = case when i.paces is not null then greatest(o.next_send_at, ${nextSendAt('o', cooldownSeconds)}) else o.next_send_at end,`
             : sql``}
           updated_at = now()
      from ${sql.table(input)} i
     where o.page_id = i.held_page_id and o.id = i.held_token_id and ${heldBy(sql.ref('i.held_by'), 'o')}
    returning i.held_by, o.id, o.kind, o.page_id, o.psid, o.payload, o.last_sent_at, o.next_send_at, o.expires_at, o.state`
}

/**
 * After settleHolds (`moved`, its relation): a recurring token's pacing also holds for the person's
 * other recurring tokens on that topic, as the body of a CTE. Normally there is none (a newer
 * opt-in replaces the older token), but a re-opt-in that arrived while a send held the old token
 * leaves both: without this the new one could send inside the cooldown the old one just started.
 */
export function carryPacing (moved: string): RawBuilder<unknown> {
  return sql`
    update optin_tokens s
       set last_sent_at = greatest(s.last_sent_at, m.last_sent_at), next_send_at = greatest(s.next_send_at, m.next_send_at), updated_at = now()
      from ${sql.table(moved)} m
     where m.kind = 'notification_messages' and m.next_send_at is not null
       and s.page_id = m.page_id and s.psid = m.psid and s.payload = m.payload and s.kind = 'notification_messages' and s.id <> m.id
       and s.state = ${sql.lit(DERIVED_STATES.usable.state)}`
}

/** One hold as the `input` of settleHolds. */
export function holdInput (h: Hold, to: TokenOutcome): RawBuilder<unknown> {
  const settled = settledOf(h, to)
  return sql`select ${h.page_id}::text as held_page_id, ${h.token_id}::bigint as held_token_id, ${h.notification_id}::uuid as held_by,
                    ${settled.state}::text as state_to, ${settled.stops ?? false}::boolean as stops, ${settled.paces ?? null}::text as paces`
}

/** Pushes the lease forward before another attempt, so recovery does not take over a live send. */
export async function extendLease (db: Database, h: Hold, leaseSeconds: number): Promise<boolean> {
  const result = await sql`
    update optin_tokens set lease_expires_at = now() + make_interval(secs => ${leaseSeconds}), updated_at = now()
     where page_id = ${h.page_id} and id = ${h.token_id} and ${heldBy(h.notification_id)}`.execute(db)
  return (result.numAffectedRows ?? 0n) > 0n
}

/**
 * Moves the tokens `where` picks to a final state (expired, discarded) and writes each one's
 * consent history entry in the same statement: how many moved.
 */
export async function retireTokens (db: Database, state: 'expired' | 'discarded', where: RawBuilder<unknown>): Promise<number> {
  const { rows: [{ n }] } = await sql<{ n: number }>`
    with moved as (
      update optin_tokens set state = ${state}, updated_at = now() where ${where}
      returning page_id, psid, payload, kind, id, expires_at
    ), history as (${tokenHistory('moved', state === 'expired' ? 'token_expired' : 'token_discarded')})
    select count(*)::int as n from moved`.execute(db)
  return n
}

/** The person stopped the topic: their other usable tokens on it will never be sent. */
export async function discardPersonTokens (db: Database, target: { page_id: string, payload: string, psid: string }): Promise<number> {
  return retireTokens(db, 'discarded', sql`page_id = ${target.page_id} and payload = ${target.payload} and psid = ${target.psid} and ${usable()}`)
}

/** Seconds left on the lease of the token `notificationId` holds, or undefined when it holds none. */
export async function holdLeaseSeconds (db: Database, n: { id: string, page_id: string, psid: string }): Promise<number | undefined> {
  const { rows } = await sql<{ wait: number }>`
    select extract(epoch from (lease_expires_at - now()))::float8 as wait
      from optin_tokens
     where page_id = ${n.page_id} and psid = ${n.psid} and ${heldBy(n.id)}`.execute(db)
  return rows[0]?.wait
}
