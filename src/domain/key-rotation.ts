import { sql } from 'kysely'
import type { Database } from '../db/database.js'
import { activeKeyring, PREFIX, type Keyring } from '../crypto/secret-box.js'
import { rotateTokenBatch } from './token-store.js'

// Key rotation and the encryption of existing data (docs/SECURITY.md): every stored secret that is
// not under the key that encrypts now (ENCRYPTION_KEYS's first), legacy plaintext included, is
// decrypted and encrypted again, in bounded batches. Each batch locks its rows (`for update skip
// locked`) for one short transaction, so the service keeps running: a Page updated meanwhile waits
// for the batch or is skipped and taken by the next run. A value no configured key can read stops
// the rotation with the error naming its key id; the batches before it are kept.

export const ROTATION_BATCH = 500

export interface RotationCounts { pages: number, event_subscriptions: number, optin_tokens: number }

/** The SQL test "this value is not under the current key" (not a LIKE: `_` may be in a key id). */
function notCurrent (column: 'access_token' | 'secret' | 'previous_secret', keyring: Keyring) {
  const prefix = `${PREFIX}${keyring.currentId}:`
  return sql<boolean>`(${sql.ref(column)} is not null and left(${sql.ref(column)}, ${prefix.length}) <> ${prefix})`
}

async function rotatePages (db: Database, keyring: Keyring, batch: number): Promise<number> {
  return await db.transaction().execute(async (trx) => {
    const { rows } = await sql<{ id: string, access_token: string }>`
      select id, access_token from pages where ${notCurrent('access_token', keyring)}
       order by id limit ${batch} for update skip locked`.execute(trx)
    if (rows.length === 0) return 0
    const values = rows.map((r) => keyring.seal('pages.access_token', keyring.open('pages.access_token', r.access_token)))
    await sql`
      update pages p set access_token = x.v
        from unnest(${rows.map((r) => r.id)}::text[], ${values}::text[]) as x(id, v)
       where p.id = x.id`.execute(trx)
    return rows.length
  })
}

async function rotateSubscriptions (db: Database, keyring: Keyring, batch: number): Promise<number> {
  return await db.transaction().execute(async (trx) => {
    const { rows } = await sql<{ id: string, secret: string, previous_secret: string | null }>`
      select id::text as id, secret, previous_secret from event_subscriptions
       where ${notCurrent('secret', keyring)} or ${notCurrent('previous_secret', keyring)}
       order by id limit ${batch} for update skip locked`.execute(trx)
    if (rows.length === 0) return 0
    const again = (s: string): string => keyring.seal('event_subscriptions.secret', keyring.open('event_subscriptions.secret', s))
    await sql`
      update event_subscriptions s set secret = x.s, previous_secret = x.p
        from unnest(${rows.map((r) => r.id)}::text[], ${rows.map((r) => again(r.secret))}::text[], ${rows.map((r) => r.previous_secret === null ? null : again(r.previous_secret))}::text[]) as x(id, s, p)
       where s.id::text = x.id`.execute(trx)
    return rows.length
  })
}

/**
 * Re-encrypts every Page access token, event signing secret and opt-in token (sealed and digested
 * again: token-store/rotation.ts) not under the current key; returns the rows changed per table. With no key configured (plaintext allowed) there is nothing to do.
 */
export async function rotateKeys (db: Database, opts: { keyring?: Keyring, batch?: number, progress?: (c: RotationCounts) => void } = {}): Promise<RotationCounts> {
  const keyring = opts.keyring ?? activeKeyring()
  const batch = opts.batch ?? ROTATION_BATCH
  const counts: RotationCounts = { pages: 0, event_subscriptions: 0, optin_tokens: 0 }
  if (keyring.currentId === undefined) return counts
  for (let n; (n = await rotatePages(db, keyring, batch)) > 0;) { counts.pages += n; opts.progress?.(counts) }
  for (let n; (n = await rotateSubscriptions(db, keyring, batch)) > 0;) { counts.event_subscriptions += n; opts.progress?.(counts) }
  for (let step = await rotateTokenBatch(db, keyring, batch); step.read > 0; step = await rotateTokenBatch(db, keyring, batch, step.last)) {
    counts.optin_tokens += step.changed
    opts.progress?.(counts)
  }
  return counts
}
