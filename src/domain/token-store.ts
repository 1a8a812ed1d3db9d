/**
 * The token store: every statement that reads or moves a token is here, and nowhere else. The
 * lifecycle's derived states (lifecycle.ts) become SQL here, once. Statements of other modules
 * that must move tokens in the same round trip (a send's start and outcome, webhook ingestion)
 * take their token part from this module as a CTE.
 *
 * A held token keeps its state, `available`: a claim sets `notification_id` and
 * `lease_expires_at`, columns no index names, so that Postgres makes the claim a HOT update (no
 * new index entries) and its cost stays flat at ten million tokens (migration 20261122000000):
 * a committed claim's p50 at 10 M tokens went from 1.18–1.80× of its p50 at 10 k to 1.02–1.03×,
 * and its WAL from 29.7 to 7.4 kB (2026-11-22).
 */
import { sql, type Expression, type RawBuilder, type SqlBool } from 'kysely'
import type { Database } from '../db/database.js'
import type { RecurringFrequency, TokenKind } from '../db/types.js'
import { tokenHistory } from './consent-history.js'
import { DEFAULT_COOLDOWN_SECONDS, DERIVED_STATES, NO_EXPIRY, SETTLED, type Settled, type TokenOutcome } from './lifecycle.js'

const NO_EXPIRY_SQL = sql`${sql.lit(NO_EXPIRY.toISOString())}::timestamptz`

// ---- the derived states as SQL ----

function available (alias: string | undefined, holder: RawBuilder<unknown>): RawBuilder<SqlBool> {
  const column = (name: string) => sql.ref(alias ? `${alias}.${name}` : name)
  return sql<SqlBool>`(${column('state')} = ${sql.lit(DERIVED_STATES.usable.state)} and ${column('notification_id')} ${holder})`
}

/** Usable (lifecycle.ts), without the expiry: callers add `expires_at > now()` where it matters. */
export function usable (alias?: string): RawBuilder<SqlBool> {
  return sql<SqlBool>`(${available(alias, sql`is null`)} and ${sql.ref(alias ? `${alias}.stopped_at` : 'stopped_at')} is null)`
}

/**
 * What a send may claim now: usable, not expired, of the kind asked for (`kind`: a TokenKind or a
 * reference to one, null: any) and, for a recurring token, past its pacing (`next_send_at`).
 */
function sendable (alias: string, kind: unknown): RawBuilder<SqlBool> {
  const c = (name: string) => sql.ref(`${alias}.${name}`)
  return sql<SqlBool>`(${usable(alias)} and ${c('expires_at')} > now()
    and (${kind}::text is null or ${c('kind')} = ${kind}::text)
    and (${c('kind')} = 'one_time_notif' or ${c('next_send_at')} is null or ${c('next_send_at')} <= now()))`
}

/** The order a send takes a person's tokens in: a recurring one first (it stays usable), then the soonest to expire. */
function sendOrder (alias: string): RawBuilder<unknown> {
  return sql`(${sql.ref(`${alias}.kind`)} = 'one_time_notif'), ${sql.ref(`${alias}.expires_at`)}`
}

/** Held by `holder` (a notification id, or a reference to one). */
export function heldBy (holder: unknown, alias?: string): RawBuilder<SqlBool> {
  return available(alias, sql`= ${holder}`)
}

/** Held by some notification. */
export function held (alias?: string): RawBuilder<SqlBool> {
  return available(alias, sql`is not null`)
}

// ---- claims and holds ----

/** A token held for one notification; its value goes to Meta and nowhere else. */
export interface ClaimedToken {
  id: string
  kind: TokenKind
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
 * next token after a refusal.
 */
export async function claimToken (db: Database, target: ClaimTarget): Promise<ClaimedToken | undefined> {
  const { rows } = await sql<ClaimedToken>`
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
    returning id, kind, token, expires_at, lease_expires_at`.execute(db)
  return rows[0]
}

/**
 * The claim of a send's first statement, as three CTEs, `pick`, `claim` and `cooling`: for each
 * row of `source` (columns id: the notification's, page_id, payload, psid, window_open, token_kind)
 * whose window is closed, the person's next sendable token (as claimToken chooses), held for it with
 * a lease of `leaseSeconds`. `claim` returns id, notification_id, kind, token, expires_at,
 * lease_expires_at. `cooling` (notification_id, until) names, for each row that claimed nothing,
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
async function retireTokens (db: Database, state: 'expired' | 'discarded', where: RawBuilder<unknown>): Promise<number> {
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

// ---- recovery ----

/** A token by its key. */
export interface TokenRef { page_id: string, id: string }

/**
 * Tokens held past their lease, oldest lease first, found from the open notifications that hold
 * them (the partial index on open notifications), each among its person's tokens: no index names
 * a hold. A sweep across every Page.
 */
export async function expiredHolds (db: Database, limit: number): Promise<TokenRef[]> {
  const { rows } = await sql<TokenRef>`
    select t.page_id, t.id from notifications n
      join optin_tokens t on t.page_id = n.page_id and t.psid = n.psid and ${heldBy(sql.ref('n.id'), 't')}
     where n.completed_at is null and t.lease_expires_at < now()
     order by t.lease_expires_at
     limit ${limit}`.execute(db)
  return rows
}

/**
 * Takes over one expired hold with a fresh lease, guarded so that instances sweeping together take
 * each once; undefined when another did (or the hold ended meanwhile).
 */
export async function takeOverHold (db: Database, hold: TokenRef, leaseSeconds: number)
  : Promise<(ClaimedToken & { page_id: string, payload: string, notification_id: string }) | undefined> {
  const { rows: [token] } = await sql<ClaimedToken & { page_id: string, payload: string, notification_id: string }>`
    update optin_tokens set lease_expires_at = now() + make_interval(secs => ${leaseSeconds}), updated_at = now()
     where page_id = ${hold.page_id} and id = ${hold.id} and ${held()} and lease_expires_at < now()
    returning id, kind, token, expires_at, lease_expires_at, page_id, payload, notification_id`.execute(db)
  return token
}

/** A hold whose notification is already final (never left by the send path; kept for safety): its outcome decides, as SETTLED says. */
export async function settleOrphan (db: Database, h: Hold, sent: boolean, cooldownSeconds = DEFAULT_COOLDOWN_SECONDS): Promise<void> {
  await sql`with input as (${holdInput(h, sent ? 'used' : 'unconfirmed')}), moved as (${settleHolds('input', cooldownSeconds)}),
    history as (${tokenHistory('moved', sql`case when x.state = 'used' and x.kind = 'one_time_notif' then 'token_used' end`)}) select 1`.execute(db)
}

/** The condition that notification `n` (an alias of the notifications table) holds no token. */
export function holdsNoToken (n: string): Expression<SqlBool> {
  return sql<SqlBool>`not exists (select 1 from optin_tokens t
    where t.page_id = ${sql.ref(`${n}.page_id`)} and t.psid = ${sql.ref(`${n}.psid`)} and ${heldBy(sql.ref(`${n}.id`), 't')})`
}

// ---- sweeps ----

/**
 * Marks usable tokens past their expiry as `expired`, in batches over the expiry index (a token a
 * send holds is left to that send). Counts and claims already ignore such rows by time; this makes
 * the state say so too. SKIP LOCKED leaves a row a claim holds at this moment to the next sweep, so
 * the sweep never waits on a send, and instances sweeping together do the work once between them.
 */
export async function expireTokens (db: Database, batchSize = 5000): Promise<number> {
  let total = 0
  for (;;) {
    const n = await retireTokens(db, 'expired', sql`(page_id, id) in (select page_id, id from optin_tokens where ${usable()} and expires_at <= now()
                       order by expires_at limit ${batchSize} for update skip locked)
           and ${usable()}`)
    total += n
    if (n < batchSize) return total
  }
}

// ---- topics ----

export interface TopicCounts {
  usable_tokens: number
  subscribers: number
  expiring_soon: number
  /** People holding an active recurring token on the topic (held or not). */
  recurring_active: number
  /** People holding a stopped recurring token on the topic. */
  recurring_stopped: number
}

/**
 * A topic's counts as a lateral subquery over `topics` (an alias in scope): one index range scan
 * over its unspent tokens (the usable index), so a token a send in flight holds is counted until it
 * is spent. `usable_tokens` and `expiring_soon` count one-time tokens; `subscribers` the people a
 * send could reach with either kind (a stopped recurring token reaches nobody); `recurring_*` the
 * people with an active (usable or held) or a stopped recurring token. Replaced, expired and other
 * spent tokens are not `available`, so they count nowhere.
 */
export function topicCounts (topics: string, expiringWithin: RawBuilder<unknown>): RawBuilder<TopicCounts> {
  const t = (c: string) => sql.ref(`${topics}.${c}`)
  const otn = sql`o.kind = 'one_time_notif'`
  const recurring = sql`o.kind = 'notification_messages'`
  return sql<TopicCounts>`lateral (
    select (count(*) filter (where ${otn}))::int as usable_tokens,
           (count(distinct o.psid) filter (where ${otn} or o.stopped_at is null))::int as subscribers,
           (count(*) filter (where ${otn} and o.expires_at <= now() + ${expiringWithin}))::int as expiring_soon,
           (count(distinct o.psid) filter (where ${recurring} and o.stopped_at is null))::int as recurring_active,
           (count(distinct o.psid) filter (where ${recurring} and o.stopped_at is not null))::int as recurring_stopped
      from optin_tokens o
     where o.page_id = ${t('page_id')} and o.payload = ${t('payload')}
       and o.state = 'available' and o.expires_at > now())`
}

/** Usable tokens of a topic (Page and payload) not held by a send: counted, or with `discard`, discarded. */
export async function topicTokens (db: Database, topic: { page_id: string, payload: string }, discard: boolean): Promise<number> {
  const usableOnTopic = sql`select id from optin_tokens
    where page_id = ${topic.page_id} and payload = ${topic.payload} and ${usable()} and expires_at > now()`
  if (discard) {
    return retireTokens(db, 'discarded', sql`page_id = ${topic.page_id} and id in (${usableOnTopic})`)
  }
  const { rows: [row] } = await sql<{ n: number }>`select count(*)::int as n from (${usableOnTopic}) u`.execute(db)
  return row.n
}

// ---- people ----

export interface PersonToken {
  id: string
  token: string
  payload: string
  opted_in_at: Date
  expires_at: Date
  topic_id: string | null
  topic_name: string | null
}

/** A person's usable one-time tokens on a Page with the topic each belongs to (if any), soonest expiry first (recurring ones: personRecurringTokens). */
export async function personTokens (db: Database, pageId: string, psid: string): Promise<PersonToken[]> {
  const { rows } = await sql<PersonToken>`
    select t.id, t.token, t.payload, t.opted_in_at, t.expires_at, tp.id as topic_id, tp.name as topic_name
      from optin_tokens t
      left join topics tp on tp.page_id = t.page_id and tp.payload = t.payload
     where t.page_id = ${pageId} and t.psid = ${psid} and t.kind = 'one_time_notif' and ${usable('t')} and t.expires_at > now()
     order by t.expires_at, t.id`.execute(db)
  return rows
}

/** When a person first opted in on a Page (any token, any state), or undefined. */
export async function firstOptinAt (db: Database, pageId: string, psid: string): Promise<Date | undefined> {
  const { rows: [row] } = await sql<{ at: Date | null }>`
    select min(opted_in_at) as at from optin_tokens where page_id = ${pageId} and psid = ${psid}`.execute(db)
  return row?.at ?? undefined
}

// ---- broadcasts ----

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

// ---- ingestion ----

/**
 * New tokens of a webhook statement, as the body of a CTE: from `tokensJson` (a jsonb array, or an
 * expression of one, of
 * TokenRecord with the `ord` of their delivery) joined to `input` (the deliveries: id, ord), each
 * token once (its earliest opt-in), a token already held left as it is. Already-expired ones are
 * stored `expired`. Returns webhook_event_id and state of each token added.
 */
export function insertTokens (tokensJson: string | RawBuilder<unknown>, input: string): RawBuilder<unknown> {
  return sql`
    insert into optin_tokens (kind, page_id, psid, payload, token, opted_in_at, expires_at, state, webhook_event_id)
    select distinct on (t.page_id, t.token) t.kind, t.page_id, t.psid, t.payload, t.token, t.opted_in_at, t.expires_at,
           case when t.expires_at <= now() then 'expired' else 'available' end,
           input.id
      from jsonb_to_recordset(${tokensJson}::jsonb)
        as t(ord int, kind text, page_id text, psid text, payload text, token text, opted_in_at timestamptz, expires_at timestamptz)
      join ${sql.table(input)} input on input.ord = t.ord
     order by t.page_id, t.token, t.opted_in_at, t.ord
    on conflict (page_id, token) do nothing
    returning webhook_event_id, state, id, page_id, psid, payload, kind, opted_in_at, expires_at`
}

/**
 * Recurring events of a webhook statement (RecurringRecord, with the `ord` of their delivery, joined
 * to `input`: the deliveries stored now, columns id and ord), applied as CTEs named `rec_in`,
 * `rec_token`, `rec_replaced` and `rec_written`; `rec_written` returns the event id (`webhook_event_id` of
 * the delivery that brought it), `state` and `inserted` of each token written. The latest event by
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
      select r.*, i.id as event_id
        from jsonb_to_recordset(${recordsJson}::jsonb)
          as r(ord int, page_id text, psid text, payload text, token text, at timestamptz, event text, title text, frequency text,
               timezone text, user_token_status text, expires_at timestamptz)
        join ${sql.table(input)} i on i.ord = r.ord
    ), rec_token as (
      select r.page_id, r.token,
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
       group by r.page_id, r.token
    ), rec_newer as (
      -- Whether a newer opt-in on the same topic (stored, or in this statement) supersedes each token.
      select r.*, (
        exists (select 1 from optin_tokens o where ${sameTopic('o', 'r')} and o.kind = ${NM} and o.token <> r.token
                   and o.state in ('available', 'replaced') and o.opted_in_at > r.first_at)
        or exists (select 1 from rec_token n where ${sameTopic('n', 'r')} and n.token <> r.token and n.optin_at > r.first_at)
      ) as superseded
        from rec_token r
    ), rec_replaced as (
      update optin_tokens o set state = 'replaced', updated_at = now()
        from rec_token r
       where ${sameTopic('o', 'r')} and o.kind = ${NM} and o.token <> r.token and r.optin_at is not null and o.opted_in_at < r.optin_at
         and ${usable('o')}
         and not exists (select 1 from rec_token x where x.page_id = o.page_id and x.token = o.token)
      returning o.id
    ), rec_written as (
      insert into optin_tokens (kind, page_id, psid, payload, token, opted_in_at, expires_at, state, webhook_event_id, title, frequency,
                                timezone, user_token_status, stopped_at, status_at, last_sent_at, next_send_at)
      select ${NM}, r.page_id, r.psid, r.payload, r.token, r.first_at, r.expires_at,
             case when r.expires_at <= now() then 'expired' when r.superseded then 'replaced' else 'available' end,
             r.event_id, r.title, r.frequency, r.timezone, r.user_token_status, r.stopped_at, r.status_at,
             (select max(o.last_sent_at) from optin_tokens o where ${sameTopic('o', 'r')} and o.kind = ${NM}),
             (select max(o.next_send_at) from optin_tokens o where ${sameTopic('o', 'r')} and o.kind = ${NM})
        from rec_newer r
       order by r.page_id, r.token
      on conflict (page_id, token) do update set
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
      returning webhook_event_id, state, (xmax = 0) as inserted, id, page_id, token, expires_at
    )`
}

// ---- metrics ----

export interface SendBacklog { held: number, pending: number, oldest_pending_seconds: number }

/**
 * Notifications in flight and the tokens they hold, in one read over the partial index of open
 * notifications (each hold found among its person's tokens): what the metrics report.
 */
export async function sendBacklog (db: Database): Promise<SendBacklog> {
  const { rows: [row] } = await sql<SendBacklog>`
    select count(t.id)::float8 as held,
           count(*)::float8 as pending,
           coalesce(extract(epoch from now() - min(n.created_at)), 0)::float8 as oldest_pending_seconds
      from notifications n
      left join optin_tokens t on t.page_id = n.page_id and t.psid = n.psid and ${heldBy(sql.ref('n.id'), 't')}
     where n.completed_at is null and n.status = 'pending'`.execute(db)
  return row
}

// ---- recurring views ----

/** One of a person's recurring tokens as the inbox shows it (the value is masked by the caller). */
export interface PersonRecurringToken {
  id: string
  token: string
  payload: string
  topic_id: string | null
  topic_name: string | null
  stopped: boolean
  frequency: RecurringFrequency | null
  timezone: string | null
  expires_at: Date
  last_sent_at: Date | null
  next_send_at: Date | null
}

/**
 * A person's live recurring tokens on a Page: active (usable or held by a send) and stopped, not
 * replaced, expired or otherwise gone; with the topic each belongs to (if any), by topic name then
 * the newest opt-in first.
 */
export async function personRecurringTokens (db: Database, pageId: string, psid: string): Promise<PersonRecurringToken[]> {
  const { rows } = await sql<PersonRecurringToken>`
    select t.id, t.token, t.payload, tp.id as topic_id, tp.name as topic_name, t.stopped_at is not null as stopped,
           t.frequency, t.timezone, t.expires_at, t.last_sent_at, t.next_send_at
      from optin_tokens t
      left join topics tp on tp.page_id = t.page_id and tp.payload = t.payload
     where t.page_id = ${pageId} and t.psid = ${psid} and t.kind = 'notification_messages'
       and t.state = ${sql.lit(DERIVED_STATES.stopped.state)} and t.expires_at > now()
     order by tp.name nulls last, t.payload, t.opted_in_at desc, t.id`.execute(db)
  return rows
}

// ---- a person's data (export and erasure: consent-export.ts, erasure.ts) ----

/** One of a person's tokens as the export shows it (the value is masked by the caller). */
export interface ExportedToken {
  id: string
  kind: TokenKind
  topic_id: string | null
  payload: string
  token: string
  state: string
  opted_in_at: Date
  expires_at: Date
  title: string | null
  frequency: RecurringFrequency | null
  timezone: string | null
  user_token_status: string | null
  stopped_at: Date | null
  last_sent_at: Date | null
  next_send_at: Date | null
}

/** Every token of a person on a Page, in any state, oldest opt-in first. */
export async function personTokensForExport (db: Database, pageId: string, psid: string): Promise<ExportedToken[]> {
  const { rows } = await sql<ExportedToken>`
    select t.id::text as id, t.kind, tp.id as topic_id, t.payload, t.token, t.state, t.opted_in_at, t.expires_at, t.title, t.frequency,
           t.timezone, t.user_token_status, t.stopped_at, t.last_sent_at, t.next_send_at
      from optin_tokens t
      left join topics tp on tp.page_id = t.page_id and tp.payload = t.payload
     where t.page_id = ${pageId} and t.psid = ${psid}
     order by t.opted_in_at, t.id`.execute(db)
  return rows
}

/** Deletes every token of a person on a Page, in any state (a send holding one finds it gone and records nothing). */
export async function erasePersonTokens (db: Database, pageId: string, psid: string): Promise<number> {
  const result = await sql`delete from optin_tokens where page_id = ${pageId} and psid = ${psid}`.execute(db)
  return Number(result.numAffectedRows ?? 0n)
}
