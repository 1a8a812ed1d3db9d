import { sql } from 'kysely'
import type { Notification } from '../db/types.js'
import { held, heldBy, type ClaimedToken } from './claims.js'
import { getNotificationRow, resumeFromStart, resumeWithToken, type SendDeps } from './notifications.js'

/**
 * A reservation that may already be spent is re-sent once per sweep while Meta times out, fails
 * or throttles; when the notification has made this many attempts, the sweep records it unconfirmed.
 */
export const RECOVERY_ATTEMPTS_CAP = 10

/**
 * Resolves work a dead process left behind, so that no token stays held and no notification
 * stays pending forever:
 *
 * 1. Tokens held past their lease (found from the open notifications holding them): the same
 *    token is sent again for the same notification (Meta accepts a token once, so this cannot
 *    deliver twice). If the notification had made no attempt yet, nothing ever left and the token
 *    is handled like a fresh claim (refused → next token, other refusal → released). Otherwise
 *    it may already have been delivered: the outcome is `sent` (Meta accepts) or `unconfirmed`
 *    (Meta refuses it as used), never a release; while Meta does not answer, fails or throttles,
 *    the token stays held and is re-sent once per sweep, up to RECOVERY_ATTEMPTS_CAP attempts on
 *    the notification, then it is unconfirmed.
 * 2. Pending notifications holding no token, untouched for a lease: an interrupted window send
 *    becomes `unconfirmed` (a standard message cannot be safely repeated); any other is run again.
 *    Broadcast rows are left to the broadcast worker, which owns their pace.
 *
 * Every step first takes the row over with a guarded update, so instances sweeping together
 * resolve each item once.
 */
export async function recoverLeases (deps: SendDeps, batchSize = 50): Promise<number> {
  let resolved = 0
  const lease = sql`make_interval(secs => ${deps.config.TOKEN_LEASE_SECONDS})`

  // Holds are found from the open notifications that hold them (notifications_open_idx), each among
  // its person's tokens (optin_tokens_subscriber_idx): no index names a hold (claims.ts).
  const expired = await deps.db.selectFrom('notifications as n')
    .innerJoin('optin_tokens as t', (join) => join.onRef('t.page_id', '=', 'n.page_id').onRef('t.psid', '=', 'n.psid'))
    .select('t.id')
    .where('n.completed_at', 'is', null).where(heldBy(sql.ref('n.id'), 't'))
    .where('t.lease_expires_at', '<', sql<Date>`now()`)
    .orderBy('t.lease_expires_at').limit(batchSize).execute()
  for (const { id } of expired) {
    const { rows: [token] } = await sql<ClaimedToken & { page_id: string, payload: string, notification_id: string }>`
      update optin_tokens set lease_expires_at = now() + ${lease}, updated_at = now()
       where id = ${id} and ${held()} and lease_expires_at < now()
      returning id, kind, token, expires_at, lease_expires_at, page_id, payload, notification_id`.execute(deps.db)
    if (!token) continue
    const n = await getNotificationRow(deps.db, token.notification_id)
    if (!n || n.status !== 'pending') {
      await settleOrphan(deps, token, n)
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
      .whereRef('t.page_id', '=', 'n.page_id').whereRef('t.psid', '=', 'n.psid')
      .where(heldBy(sql.ref('n.id'), 't')))))
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

/**
 * A hold whose notification is already final, which the statements that end a send never leave
 * (they end the hold and the notification together); kept for safety: its outcome decides the token's.
 */
async function settleOrphan (deps: SendDeps, token: { id: string, notification_id: string }, n: Notification | undefined): Promise<void> {
  await deps.db.updateTable('optin_tokens')
    .set({ state: n?.status === 'sent' ? 'used' : 'unconfirmed', lease_expires_at: null, updated_at: sql`now()` })
    .where('id', '=', token.id).where(heldBy(token.notification_id)).execute()
}
