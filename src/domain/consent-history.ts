/**
 * The consent history (docs/PRIVACY.md): an append-only ledger per (Page, person) of what they
 * agreed to and what was sent on it. Every entry is written by the statement (or transaction) of
 * the change it records, through the fragments below: one call per place where consent changes,
 * and one set-based INSERT per statement however many rows it settles. No message text, and no
 * token value, is ever written here: ids, kinds, topics (payload keys), routes, statuses and times.
 * Nothing updates or deletes an entry except the erasure (erasure.ts), which leaves one `erased`
 * entry without personal data.
 */
import { sql, type RawBuilder } from 'kysely'
import type { Database } from '../db/database.js'
import type { TokenKind } from '../db/types.js'
import { notFound } from './errors.js'
import { afterCursor, pageOf, PAGE_SIZE } from './pagination.js'

export const HISTORY_TYPES = [
  'optin_requested', 'opted_in', 'refreshed', 'stopped', 'resumed',
  'token_used', 'token_expired', 'token_invalid', 'token_discarded',
  'notification_sent', 'notification_failed', 'erased',
] as const
export type HistoryType = (typeof HISTORY_TYPES)[number]

const COLUMNS = sql`(page_id, psid, type, payload, kind, token_id, notification_id, optin_request_id, route, status, expires_at, detail, at)`
// A re-delivered webhook event, or a sweep repeated by two instances, writes nothing twice.
const ONCE = sql`on conflict (page_id, token_id, type, at) where token_id is not null do nothing`

/**
 * Entries for tokens a statement moved, as the body of a CTE: `relation` has the token's columns
 * page_id, psid, payload, kind, id and expires_at; `type` is an SQL expression over its alias `x`
 * (a HistoryType, or null: no entry for that row).
 */
export function tokenHistory (relation: string, type: RawBuilder<unknown> | HistoryType): RawBuilder<unknown> {
  const t = typeof type === 'string' ? sql`${type}::text` : type
  return sql`
    insert into consent_history ${COLUMNS}
    select x.page_id, x.psid, y.type, x.payload, x.kind, x.id, null::uuid, null::uuid, null::text, null::text, x.expires_at, null::jsonb, now()
      from ${sql.table(relation)} x cross join lateral (select ${t} as type) y
     where y.type is not null
    ${ONCE}`
}

/**
 * Entries for a webhook statement (ingest.ts): an `opted_in` entry for each one-time token
 * `newTokens` inserted (columns id, page_id, psid, payload, kind, opted_in_at, expires_at, state),
 * and one for each recurring event of `recIn` (page_id, psid, payload, lookup, at, event,
 * user_token_status) whose token `recWritten` wrote (id, page_id, token_digest, expires_at): `stopped`,
 * `resumed`, `refreshed` (Meta's REFRESHED re-opt-in) or `opted_in`, at the event's own time.
 */
export function ingestHistory (newTokens: string, recIn: string, recWritten: string): RawBuilder<unknown> {
  return sql`
    insert into consent_history ${COLUMNS}
    select t.page_id, t.psid, 'opted_in', t.payload, t.kind, t.id, null::uuid, null::uuid, null::text, t.state, t.expires_at, null::jsonb, t.opted_in_at
      from ${sql.table(newTokens)} t
    union all
    select r.page_id, r.psid,
           case r.event when 'stop' then 'stopped' when 'resume' then 'resumed'
                else case when upper(coalesce(r.user_token_status, '')) = 'REFRESHED' then 'refreshed' else 'opted_in' end end,
           r.payload, 'notification_messages', w.id, null::uuid, null::uuid, null::text, null::text,
           case when r.event = 'optin' then w.expires_at end, null::jsonb, r.at
      from ${sql.table(recIn)} r join ${sql.table(recWritten)} w on w.page_id = r.page_id and w.token_digest = any(r.lookup)
    ${ONCE}`
}

/**
 * Entries for sends a statement ended (send-steps.ts), as the body of a CTE: for each notification of
 * `written` (notifications' columns) that is final, `notification_sent` or `notification_failed` with
 * its ids, route, status and code (never its message); and, where `moved` (settleHolds' answer: held_by,
 * id, kind, page_id, psid, payload, expires_at, state; null: no token moved) spent or refused the
 * token, `token_used` or `token_invalid`.
 */
export function sendHistory (written: string, moved: string | null): RawBuilder<unknown> {
  const tokens = moved === null
    ? sql``
    : sql`union all
    select m.page_id, m.psid, case when m.state = 'invalid' then 'token_invalid' else 'token_used' end, m.payload, m.kind, m.id,
           m.held_by, null::uuid, null::text, null::text, m.expires_at, null::jsonb, now()
      from ${sql.table(moved)} m join ${sql.table(written)} n on n.page_id = m.page_id and n.id = m.held_by
     where m.state = 'invalid' or (m.state = 'used' and m.kind = 'one_time_notif')`
  return sql`
    insert into consent_history ${COLUMNS}
    select n.page_id, n.psid, case when n.status = 'sent' then 'notification_sent' else 'notification_failed' end,
           (select tp.payload from topics tp where tp.page_id = n.page_id and tp.id = n.topic_id), n.token_kind, n.token_id, n.id, null::uuid, n.route, n.status, null::timestamptz,
           jsonb_strip_nulls(jsonb_build_object('graph_message_id', n.graph_message_id, 'code', n.error ->> 'code',
                                                'token_state', n.token_state, 'broadcast_id', n.broadcast_id)),
           coalesce(n.completed_at, now())
      from ${sql.table(written)} n
     where n.status <> 'pending'
    ${tokens}
    ${ONCE}`
}

/** One entry written by a caller in its own transaction (an opt-in request that went out). */
export interface HistoryEntry {
  page_id: string
  psid: string
  type: HistoryType
  payload?: string | null
  kind?: TokenKind | null
  optin_request_id?: string | null
  status?: string | null
  detail?: Record<string, unknown> | null
}

export async function recordHistory (db: Database, entries: HistoryEntry[]): Promise<void> {
  if (entries.length === 0) return
  await db.insertInto('consent_history').values(entries.map((e) => ({
    page_id: e.page_id, psid: e.psid, type: e.type, payload: e.payload ?? null, kind: e.kind ?? null,
    optin_request_id: e.optin_request_id ?? null, status: e.status ?? null,
    detail: e.detail ? JSON.stringify(e.detail) : null, at: sql<Date>`now()`,
  }))).execute()
}

// ---- reading ----

export interface HistoryFilter {
  topic_id?: string
  type?: HistoryType
  limit?: number
  cursor?: string
}

export interface HistoryRow {
  id: string
  type: HistoryType
  at: Date
  created_at: Date
  topic_id: string | null
  payload: string | null
  kind: TokenKind | null
  token_id: string | null
  notification_id: string | null
  optin_request_id: string | null
  route: string | null
  status: string | null
  expires_at: Date | null
  detail: Record<string, unknown> | null
}

/**
 * A person's entries, oldest first (in the order they were written), optionally of one topic of the
 * Page (its payload key; an unknown topic is topic_not_found) and one type; `subject` also finds their `erased` entry (erasure.ts).
 */
export async function personHistory (db: Database, pageId: string, psid: string, f: HistoryFilter = {}, subject?: Buffer) {
  const limit = f.limit ?? PAGE_SIZE
  let topicPayload: string | undefined
  if (f.topic_id !== undefined) {
    const topic = await db.selectFrom('topics').select('payload').where('page_id', '=', pageId).where('id', '=', f.topic_id).executeTakeFirst()
    if (!topic) throw notFound('topic', f.topic_id)
    topicPayload = topic.payload
  }
  const { rows } = await sql<HistoryRow>`
    select consent_history.id::text as id, consent_history.type, consent_history.at, consent_history.created_at, tp.id as topic_id, consent_history.payload, consent_history.kind, consent_history.token_id::text as token_id,
           consent_history.notification_id, consent_history.optin_request_id, consent_history.route, consent_history.status, consent_history.expires_at, consent_history.detail
      from consent_history
      left join topics tp on tp.page_id = consent_history.page_id and tp.payload = consent_history.payload
     where consent_history.page_id = ${pageId}
       and (consent_history.psid = ${psid}${subject !== undefined ? sql` or (consent_history.type = 'erased' and consent_history.subject = ${subject})` : sql``})
       and ${afterCursor('consent_history', f.cursor)}
       ${f.type !== undefined ? sql`and consent_history.type = ${f.type}` : sql``}
       ${topicPayload !== undefined ? sql`and consent_history.payload = ${topicPayload}` : sql``}
     order by consent_history.created_at, consent_history.id
     limit ${limit + 1}`.execute(db)
  return pageOf(rows, limit)
}
