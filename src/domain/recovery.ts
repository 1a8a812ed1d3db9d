/**
 * Lease recovery: finishes the sends a dead process left, so that no token stays held and no
 * notification stays pending forever. It never gates start-up (it runs in the background, see
 * maintenance.ts), works through any backlog in batches with a bounded number of sends at once,
 * and every instance may help: each item is first taken over with a guarded update, so instances
 * sweeping together resolve each once.
 *
 * 1. Tokens held past their lease: the same token is sent again for the same notification (Meta
 *    accepts a token once, so this cannot deliver twice). If the notification had made no attempt,
 *    nothing ever left and the token is handled like a fresh claim. Otherwise it may already have
 *    been delivered: the outcome is `sent` or `unconfirmed`, never a release; while Meta does not
 *    answer, fails or throttles, the hold waits for the next sweep, up to RECOVERY_ATTEMPTS_CAP
 *    attempts on the notification, then it is unconfirmed.
 * 2. Pending notifications holding no token, untouched for a lease: an interrupted window send
 *    becomes `unconfirmed` (a standard message cannot be safely repeated); any other is run again.
 *    Broadcast rows are left to the broadcast worker, which owns their pace.
 */
import { sql } from 'kysely'
import type { Notification } from '../db/types.js'
import { getNotificationRow, type NotificationRef } from './send-steps.js'
import { resumeFromStart, resumeWithToken, type SendDeps } from './send.js'
import { expiredHolds, holdsNoToken, settleOrphan, takeOverHold } from './token-store.js'

/** A hold that may already be spent is re-sent once per sweep; at this many attempts it is recorded unconfirmed. */
export const RECOVERY_ATTEMPTS_CAP = 10

export interface RecoveryOptions {
  /** Items read per query. */
  batchSize?: number
  /** Sends in flight at once (bounded by the Graph connection budget). */
  concurrency?: number
  /** Told after each batch: what was resolved, and what is left waiting for a later sweep. */
  progress?: (p: RecoveryProgress) => void
}

export interface RecoveryProgress {
  /** Holds and notifications brought to an outcome so far in this sweep. */
  resolved: number
  /** Holds kept for the next sweep (Meta still unavailable). */
  deferred: number
}

/** Runs `work` over `items` with at most `concurrency` at once. */
async function inParallel<T> (items: T[], concurrency: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  const worker = async () => {
    while (next < items.length) await work(items[next++])
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, items.length)) }, worker))
}

/** One sweep: every hold past its lease and every stale notification, batch after batch, until none is left. */
export async function recoverLeases (deps: SendDeps, opts: RecoveryOptions = {}): Promise<number> {
  const batchSize = opts.batchSize ?? 200
  const concurrency = opts.concurrency ?? 16
  const progress: RecoveryProgress = { resolved: 0, deferred: 0 }
  const lease = deps.config.TOKEN_LEASE_SECONDS

  // A deferred hold gets a fresh lease, so the next query does not see it again: the loop ends.
  for (;;) {
    const ids = await expiredHolds(deps.db, batchSize)
    if (ids.length === 0) break
    await inParallel(ids, concurrency, async (id) => {
      const token = await takeOverHold(deps.db, id, lease)
      if (!token) return
      const n = await getNotificationRow(deps.db, token.notification_id, token.page_id)
      if (!n || n.status !== 'pending') {
        await settleOrphan(deps.db, { page_id: token.page_id, token_id: token.id, notification_id: token.notification_id, kind: token.kind }, n?.status === 'sent')
        progress.resolved++
        return
      }
      const final = await resumeWithToken(deps, n, token, { mayHaveBeenSent: n.attempts > 0, recovering: n.attempts < RECOVERY_ATTEMPTS_CAP })
      if (final.status === 'pending') {
        progress.deferred++
        deps.log?.info({ notification_id: n.id, token_id: token.id, attempts: final.attempts }, 'lease recovery: Graph API unavailable; trying again next sweep')
        return
      }
      progress.resolved++
      deps.log?.info({ notification_id: n.id, token_id: token.id, status: final.status }, 'lease recovery: hold resolved')
    })
    opts.progress?.({ ...progress })
    if (ids.length < batchSize) break
  }

  for (;;) {
    const stale = await deps.db.selectFrom('notifications as n').select(['n.page_id', 'n.id'])
      .where('n.completed_at', 'is', null).where('n.status', '=', 'pending').where('n.broadcast_id', 'is', null)
      .where('n.updated_at', '<', sql<Date>`now() - make_interval(secs => ${lease})`)
      .where(holdsNoToken('n'))
      .orderBy('n.updated_at').limit(batchSize).execute()
    if (stale.length === 0) break
    await inParallel(stale, concurrency, async (ref) => {
      const n = await takeOverStale(deps, ref, lease)
      if (!n) return
      const final = await resumeFromStart(deps, n)
      progress.resolved++
      deps.log?.info({ notification_id: n.id, status: final.status }, 'lease recovery: interrupted notification resolved')
    })
    opts.progress?.({ ...progress })
    if (stale.length < batchSize) break
  }
  return progress.resolved
}

/** Takes over a pending notification untouched for a lease (guarded: one instance gets it). */
export async function takeOverStale (deps: Pick<SendDeps, 'db'>, n: NotificationRef, leaseSeconds: number): Promise<Notification | undefined> {
  return deps.db.updateTable('notifications').set({ updated_at: sql`now()` })
    .where('page_id', '=', n.page_id).where('id', '=', n.id).where('status', '=', 'pending').where('updated_at', '<', sql<Date>`now() - make_interval(secs => ${leaseSeconds})`)
    .returningAll().executeTakeFirst()
}
