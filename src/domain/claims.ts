import { sql } from 'kysely'
import type { Database } from '../db/database.js'
import type { TokenKind } from '../db/types.js'

/** A token reserved for one notification; its value goes to Meta and nowhere else. */
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
  leaseSeconds: number
}

/**
 * Reserves the soonest-expiring usable OTN token of (Page, topic payload, PSID) for one
 * notification, in one statement. SKIP LOCKED hands concurrent claimers different rows (or none)
 * without waiting on each other, across any number of service instances.
 */
export async function claimToken (db: Database, target: ClaimTarget): Promise<ClaimedToken | undefined> {
  const { rows } = await sql<ClaimedToken>`
    update optin_tokens
       set state = 'reserved',
           lease_expires_at = now() + make_interval(secs => ${target.leaseSeconds}),
           notification_id = ${target.notification_id},
           updated_at = now()
     where id = (
       select id from optin_tokens
        where page_id = ${target.page_id} and payload = ${target.payload} and psid = ${target.psid}
          and kind = 'one_time_notif' and state = 'available' and expires_at > now()
        order by expires_at
        limit 1
        for update skip locked)
    returning id, kind, token, expires_at, lease_expires_at`.execute(db)
  return rows[0]
}

export interface Reservation { token_id: string, notification_id: string }

// Every transition out of `reserved` names the holder, so a stale holder (whose lease recovery
// took over) changes nothing: the update matches no row and the caller re-reads the outcome.
function fromReserved (db: Database, r: Reservation) {
  return db.updateTable('optin_tokens')
    .where('id', '=', r.token_id)
    .where('state', '=', 'reserved')
    .where('notification_id', '=', r.notification_id)
}

async function changed (query: Promise<{ numUpdatedRows: bigint }>): Promise<boolean> {
  return (await query).numUpdatedRows > 0n
}

/** Meta accepted the send: the token is spent and stays linked to its notification. */
export function markUsed (db: Database, r: Reservation): Promise<boolean> {
  return changed(fromReserved(db, r).set({ state: 'used', lease_expires_at: null, updated_at: sql`now()` }).executeTakeFirst())
}

/** Meta refused the token itself: it can never be sent. */
export function markInvalid (db: Database, r: Reservation): Promise<boolean> {
  return changed(fromReserved(db, r).set({ state: 'invalid', lease_expires_at: null, updated_at: sql`now()` }).executeTakeFirst())
}

/** Meta refused for a reason that is not the token (and it cannot have been spent): usable again. */
export function release (db: Database, r: Reservation): Promise<boolean> {
  return changed(fromReserved(db, r)
    .set({ state: 'available', lease_expires_at: null, notification_id: null, updated_at: sql`now()` })
    .executeTakeFirst())
}

/** It may have been delivered: never handed to another send, kept linked for the record. */
export function markUnconfirmed (db: Database, r: Reservation): Promise<boolean> {
  return changed(fromReserved(db, r).set({ state: 'unconfirmed', lease_expires_at: null, updated_at: sql`now()` }).executeTakeFirst())
}

/** Pushes the lease forward before another attempt, so recovery does not take over a live send. */
export function extendLease (db: Database, r: Reservation, leaseSeconds: number): Promise<boolean> {
  return changed(fromReserved(db, r)
    .set({ lease_expires_at: sql`now() + make_interval(secs => ${leaseSeconds})`, updated_at: sql`now()` })
    .executeTakeFirst())
}

/** The person stopped the topic: their other usable tokens on it will never be sent. */
export async function discardPersonTokens (db: Database, target: { page_id: string, payload: string, psid: string }): Promise<number> {
  const result = await db.updateTable('optin_tokens')
    .set({ state: 'discarded', updated_at: sql`now()` })
    .where('page_id', '=', target.page_id).where('payload', '=', target.payload).where('psid', '=', target.psid)
    .where('state', '=', 'available')
    .executeTakeFirst()
  return Number(result.numUpdatedRows)
}
