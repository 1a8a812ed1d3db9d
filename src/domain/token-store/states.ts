/** The lifecycle's derived states (lifecycle.ts) as SQL, once: every token statement builds on these. (The token store: see ../token-store.ts.) */
import { sql, type RawBuilder, type SqlBool } from 'kysely'
import { DERIVED_STATES, NO_EXPIRY } from '../lifecycle.js'

export const NO_EXPIRY_SQL = sql`${sql.lit(NO_EXPIRY.toISOString())}::timestamptz`

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
export function sendable (alias: string, kind: unknown): RawBuilder<SqlBool> {
  const c = (name: string) => sql.ref(`${alias}.${name}`)
  return sql<SqlBool>`(${usable(alias)} and ${c('expires_at')} > now()
    and (${kind}::text is null or ${c('kind')} = ${kind}::text)
    and (${c('kind')} = 'one_time_notif' or ${c('next_send_at')} is null or ${c('next_send_at')} <= now()))`
}

/** The order a send takes a person's tokens in: a recurring one first (it stays usable), then the soonest to expire. */
export function sendOrder (alias: string): RawBuilder<unknown> {
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
