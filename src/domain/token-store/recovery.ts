/** Lease recovery's token statements: holds whose lease ran out, taken over and settled. (The token store: see ../token-store.ts.) */
import { sql, type Expression, type SqlBool } from 'kysely'
import type { Database } from '../../db/database.js'
import { tokenHistory } from '../consent-history.js'
import { DEFAULT_COOLDOWN_SECONDS } from '../lifecycle.js'
import { holdInput, settleHolds, type ClaimedToken, type Hold } from './holds.js'
import { held, heldBy } from './states.js'

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
