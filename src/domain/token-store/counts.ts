/** Sweeps and counts: expiry, a topic's tokens, the send backlog of the metrics. (The token store: see ../token-store.ts.) */
import { sql, type RawBuilder } from 'kysely'
import type { Database } from '../../db/database.js'
import { retireTokens } from './holds.js'
import { heldBy, usable } from './states.js'

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
