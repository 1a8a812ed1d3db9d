import { sql } from 'kysely'
import type { Notification } from '../db/types.js'
import type { ClaimedToken } from './claims.js'
import { getNotificationRow, resumeFromStart, resumeWithToken, type SendDeps } from './notifications.js'

/**
 * A reservation that may already be spent is re-sent once per sweep while Meta times out, fails
 * or throttles; when the notification has made this many attempts, the sweep records it unconfirmed.
 */
export const RECOVERY_ATTEMPTS_CAP = 10

/**
 * Resolves work a dead process left behind, so that no token stays reserved and no notification
 * stays pending forever:
 *
 * 1. Reserved tokens past their lease: the same token is sent again for the same notification
 *    (Meta accepts a token once, so this cannot deliver twice). If the notification had made no
 *    attempt yet, nothing ever left and the token is handled like a fresh claim (refused → next
 *    token, other refusal → released). Otherwise it may already have been delivered: the outcome
 *    is `sent` (Meta accepts) or `unconfirmed` (Meta refuses it as used), never a release; while
 *    Meta does not answer, fails or throttles, the token stays reserved and is re-sent once per
 *    sweep, up to RECOVERY_ATTEMPTS_CAP attempts on the notification, then it is unconfirmed.
 * 2. Pending notifications with no reservation, untouched for a lease: an interrupted window send
 *    becomes `unconfirmed` (a standard message cannot be safely repeated); any other is run again.
 *    Broadcast rows are left to the broadcast worker, which owns their pace.
 *
 * Every step first takes the row over with a guarded update, so instances sweeping together
 * resolve each item once.
 */
export async function recoverLeases (deps: SendDeps, batchSize = 50): Promise<number> {
  let resolved = 0
  const lease = sql`make_interval(secs => ${deps.config.TOKEN_LEASE_SECONDS})`

  const expired = await deps.db.selectFrom('optin_tokens').select('id')
    .where('state', '=', 'reserved').where('lease_expires_at', '<', sql<Date>`now()`)
    .orderBy('lease_expires_at').limit(batchSize).execute()
  for (const { id } of expired) {
    const { rows: [token] } = await sql<ClaimedToken & { page_id: string, payload: string, notification_id: string | null }>`
      update optin_tokens set lease_expires_at = now() + ${lease}, updated_at = now()
       where id = ${id} and state = 'reserved' and lease_expires_at < now()
      returning id, kind, token, expires_at, lease_expires_at, page_id, payload, notification_id`.execute(deps.db)
    if (!token) continue
    const n = token.notification_id === null ? undefined : await getNotificationRow(deps.db, token.notification_id)
    if (!n || n.status !== 'pending') {
      await settleOrphan(deps, token.id, n)
    } else {
      const final = await resumeWithToken(deps, n, token, { mayHaveBeenSent: n.attempts > 0, defer: n.attempts < RECOVERY_ATTEMPTS_CAP })
      if (final.status === 'pending') {
        deps.log?.info({ notification_id: n.id, token_id: token.id, attempts: final.attempts }, 'lease recovery: Graph API unavailable; trying again next period')
        continue
      }
      deps.log?.info({ notification_id: n.id, token_id: token.id, status: final.status }, 'lease recovery: reservation resolved')
    }
    resolved++
  }

  const stale = await deps.db.selectFrom('notifications as n').select('n.id')
    .where('n.completed_at', 'is', null).where('n.status', '=', 'pending').where('n.broadcast_id', 'is', null)
    .where('n.updated_at', '<', sql<Date>`now() - ${lease}`)
    .where(({ not, exists, selectFrom }) => not(exists(selectFrom('optin_tokens as t').select('t.id')
      .where('t.state', '=', 'reserved').whereRef('t.notification_id', '=', 'n.id'))))
    .orderBy('n.updated_at').limit(batchSize).execute()
  for (const { id } of stale) {
    const n = await deps.db.updateTable('notifications').set({ updated_at: sql`now()` })
      .where('id', '=', id).where('status', '=', 'pending').where('updated_at', '<', sql<Date>`now() - ${lease}`)
      .returningAll().executeTakeFirst()
    if (!n) continue
    const final = await resumeFromStart(deps, n)
    deps.log?.info({ notification_id: n.id, status: final.status }, 'lease recovery: interrupted notification resolved')
    resolved++
  }
  return resolved
}

/** A reservation whose notification is gone or already final: its outcome decides the token's. */
async function settleOrphan (deps: SendDeps, tokenId: string, n: Notification | undefined): Promise<void> {
  await deps.db.updateTable('optin_tokens')
    .set({ state: n?.status === 'sent' ? 'used' : 'unconfirmed', lease_expires_at: null, updated_at: sql`now()` })
    .where('id', '=', tokenId).where('state', '=', 'reserved').execute()
}
