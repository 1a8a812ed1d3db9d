import { sql, type RawBuilder } from 'kysely'
import type { Database } from '../db/database.js'
import type { TokenKind } from '../db/types.js'

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
  leaseSeconds: number
}

/** `available` and a condition on `notification_id`; `alias` is the table's, if any. */
function available (alias: string | undefined, holder: RawBuilder<unknown>): RawBuilder<boolean> {
  const column = (name: string) => sql.ref(alias ? `${alias}.${name}` : name)
  return sql<boolean>`(${column('state')} = 'available' and ${column('notification_id')} ${holder})`
}

/**
 * The condition that a token is usable: `available` and held by no notification (see claimToken).
 * Every query that picks tokens to send, discard or expire uses it.
 */
export function usable (alias?: string): RawBuilder<boolean> {
  return available(alias, sql`is null`)
}

/** The condition that a token is held by `holder` (a notification id, or a reference to one). */
export function heldBy (holder: unknown, alias?: string): RawBuilder<boolean> {
  return available(alias, sql`= ${holder}`)
}

/** The condition that a token is held by some notification. */
export function held (alias?: string): RawBuilder<boolean> {
  return available(alias, sql`is not null`)
}

/**
 * Holds the soonest-expiring usable OTN token of (Page, topic payload, PSID) for one notification,
 * in one statement. SKIP LOCKED hands concurrent claimers different rows (or none) without waiting
 * on each other, across any number of service instances. A new send makes the same choice inside
 * its first statement (startSends in notifications.ts); this one serves the next token after a
 * refusal.
 *
 * A token is usable when it is `available` and no notification holds it. A claim holds it in place:
 * it sets `notification_id` and `lease_expires_at` and leaves `state` alone, so that the update
 * touches no indexed column and Postgres can make it HOT (no new index entries: the claim costs
 * about the same at ten million tokens as at ten thousand; migration 20261122000000). Queries say
 * so with `usable`, `held` and `heldBy`; a hold ends in settleHeld.
 */
export async function claimToken (db: Database, target: ClaimTarget): Promise<ClaimedToken | undefined> {
  const { rows } = await sql<ClaimedToken>`
    update optin_tokens
       set notification_id = ${target.notification_id},
           lease_expires_at = now() + make_interval(secs => ${target.leaseSeconds}),
           updated_at = now()
     where id = (
       select id from optin_tokens
        where page_id = ${target.page_id} and payload = ${target.payload} and psid = ${target.psid}
          and kind = 'one_time_notif' and ${usable()} and expires_at > now()
        order by expires_at
        limit 1
        for update skip locked)
    returning id, kind, token, expires_at, lease_expires_at`.execute(db)
  return rows[0]
}

export interface Reservation { token_id: string, notification_id: string }

/** Where a reservation ends: spent, refused by Meta, usable again, or possibly delivered. */
export type SettledState = 'used' | 'invalid' | 'available' | 'unconfirmed'

/**
 * The end of a token's hold, as the body of a CTE over `input`, a relation with the columns
 * `held_token_id` (bigint), `held_by` (uuid: the notification holding it) and `token_to` (a
 * SettledState); rows with a null `held_token_id` move nothing. Each row names the holder, so a
 * stale holder (whose lease recovery took over) changes nothing. Returns `held_by` for each token
 * moved, so that the caller writes the notification's side only where its token moved.
 * `used`: Meta accepted the send; the token stays linked to its notification. `invalid`: Meta
 * refused the token itself. `available`: Meta refused for a reason that is not the token (and it
 * cannot have been spent). `unconfirmed`: it may have been delivered, so it is never handed out again.
 */
export function settleHeld (input: string) {
  return sql`
    update optin_tokens o
       set state = i.token_to, lease_expires_at = null,
           notification_id = case when i.token_to = 'available' then null else o.notification_id end,
           updated_at = now()
      from ${sql.table(input)} i
     where o.id = i.held_token_id and ${heldBy(sql.ref('i.held_by'), 'o')}
    returning i.held_by`
}

/** One reservation as the `input` of settleHeld. */
export function heldInput (r: Reservation, to: SettledState) {
  return sql`select ${r.token_id}::bigint as held_token_id, ${r.notification_id}::uuid as held_by, ${to}::text as token_to`
}

/** Moves one token alone; true when this holder moved it. */
export async function settleToken (db: Database, r: Reservation, to: SettledState): Promise<boolean> {
  const { rows } = await sql<{ held_by: string }>`
    with input as (${heldInput(r, to)}), moved as (${settleHeld('input')}) select held_by from moved`.execute(db)
  return rows.length > 0
}

/** Pushes the lease forward before another attempt, so recovery does not take over a live send. */
export async function extendLease (db: Database, r: Reservation, leaseSeconds: number): Promise<boolean> {
  const result = await db.updateTable('optin_tokens')
    .set({ lease_expires_at: sql`now() + make_interval(secs => ${leaseSeconds})`, updated_at: sql`now()` })
    .where('id', '=', r.token_id).where(heldBy(r.notification_id))
    .executeTakeFirst()
  return result.numUpdatedRows > 0n
}

/** The person stopped the topic: their other usable tokens on it will never be sent. */
export function discardPersonTokens (db: Database, target: { page_id: string, payload: string, psid: string }) {
  return db.updateTable('optin_tokens')
    .set({ state: 'discarded', updated_at: sql`now()` })
    .where('page_id', '=', target.page_id).where('payload', '=', target.payload).where('psid', '=', target.psid)
    .where(usable())
}
