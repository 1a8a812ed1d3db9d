/** A person's tokens: views, export and erasure (consent-export.ts, erasure.ts). (The token store: see ../token-store.ts.) */
import { sql } from 'kysely'
import type { Database } from '../../db/database.js'
import type { RecurringFrequency, TokenKind } from '../../db/types.js'
import { SecretUnreadableError, tryOpenSecret } from '../../crypto/secret-box.js'
import { DERIVED_STATES } from '../lifecycle.js'
import { usable } from './states.js'

/**
 * A stored token's clear value for a view or the export (masked by the caller: it never leaves in
 * clear). One no configured key can read shows as '' (masked `****`), so that a person's other
 * tokens are still shown.
 */
function viewed (stored: string): string {
  const token = tryOpenSecret('optin_tokens.token', stored)
  return token instanceof SecretUnreadableError ? '' : token
}

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
  return rows.map((r) => ({ ...r, token: viewed(r.token) }))
}

/** When a person first opted in on a Page (any token, any state), or undefined. */
export async function firstOptinAt (db: Database, pageId: string, psid: string): Promise<Date | undefined> {
  const { rows: [row] } = await sql<{ at: Date | null }>`
    select min(opted_in_at) as at from optin_tokens where page_id = ${pageId} and psid = ${psid}`.execute(db)
  return row?.at ?? undefined
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
  return rows.map((r) => ({ ...r, token: viewed(r.token) }))
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
  return rows.map((r) => ({ ...r, token: viewed(r.token) }))
}

/**
 * Deletes every token of a person on a Page, in any state (a send holding one finds it gone and
 * records nothing); with `optedInUpTo`, only those opted in at or before it (erasure.ts, second pass).
 */
export async function erasePersonTokens (db: Database, pageId: string, psid: string, optedInUpTo?: Date): Promise<number> {
  const result = await sql`delete from optin_tokens where page_id = ${pageId} and psid = ${psid}
    ${optedInUpTo !== undefined ? sql`and opted_in_at <= ${optedInUpTo}` : sql``}`.execute(db)
  return Number(result.numAffectedRows ?? 0n)
}
