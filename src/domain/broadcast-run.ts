/**
 * A broadcast's run, used by the job worker (src/jobs/broadcast-worker.ts): it starts, its audience
 * is planned in batches of recipients, each recipient is claimed under a lease, sent through the one
 * send path and recorded, and the broadcast completes when nothing is left. Creating, reading and
 * cancelling broadcasts (the API's side) is broadcasts.ts.
 */
import { randomUUID } from 'node:crypto'
import { sql } from 'kysely'
import type { Database } from '../db/database.js'
import type { Broadcast, BroadcastOutcome, BroadcastState, Notification } from '../db/types.js'
import { audienceQuery, WINDOW_SECONDS } from './audience.js'
import { getBroadcastRow, recipientKey, recipientStarted, type BroadcastRef } from './broadcasts.js'
import { DomainError } from './errors.js'
import { retryOf } from './lifecycle.js'
import type { NotificationType } from './notifications.js'
import { recoverLeases, takeOverStale } from './recovery.js'
import { getNotificationRow, notificationByKey, type NotificationProblem } from './send-steps.js'
import { resumeFromStart, type Sender, type SendDeps } from './send.js'
import { audiencePage, holdLeaseSeconds, noTokenReason } from './token-store.js'

/** The broadcast begins at its send time: scheduled becomes running. */
export async function startBroadcast (db: Database, b: BroadcastRef): Promise<Broadcast | undefined> {
  await db.updateTable('broadcasts')
    .set({ state: 'running', started_at: sql`coalesce(started_at, now())`, updated_at: sql`now()` })
    .where('page_id', '=', b.page_id).where('id', '=', b.id).where('state', '=', 'scheduled').execute()
  return getBroadcastRow(db, b.id, b.page_id)
}

/**
 * Lists the next page of a topic audience after the people already listed and records it as one
 * batch, in one statement (a crash leaves whole pages). Two planners racing list the same page
 * under the same batch number and insert it once. Undefined when the audience is exhausted.
 */
export async function planNextBatch (db: Database, b: Broadcast, batchSize: number): Promise<{ batch: number, inserted: number } | undefined> {
  const topic = await db.selectFrom('topics').select(['page_id', 'payload'])
    .where('page_id', '=', b.page_id).where('id', '=', b.topic_id).executeTakeFirst()
  if (!topic) return undefined
  const last = await db.selectFrom('broadcast_recipients').select(['psid', 'batch'])
    .where('page_id', '=', b.page_id).where('broadcast_id', '=', b.id).orderBy('psid', 'desc').limit(1).executeTakeFirst()
  const batch = last ? last.batch + 1 : 0
  const q = await audienceQuery(db, topic, b.audience_filter ?? undefined, false)
  const { rows: [row] } = await sql<{ listed: number, inserted: number }>`
    with audience as (${audiencePage(q, WINDOW_SECONDS, last?.psid, batchSize)}),
    added as (
      insert into broadcast_recipients (page_id, broadcast_id, psid, batch)
      select ${b.page_id}, ${b.id}, psid, ${batch} from audience
      on conflict do nothing
      returning psid)
    select (select count(*) from audience)::int as listed, (select count(*) from added)::int as inserted`.execute(db)
  return row.listed > 0 ? { batch, inserted: row.inserted } : undefined
}

/** Planning ended: the audience is frozen, and its size recorded beside the estimate. */
export async function markPlanned (db: Database, b: BroadcastRef): Promise<void> {
  const listed = sql<number>`(select count(*)::int from broadcast_recipients r where r.page_id = ${b.page_id} and r.broadcast_id = ${b.id})`
  await db.updateTable('broadcasts').set({ planned_at: sql`now()`, audience_final: listed, updated_at: sql`now()` })
    .where('page_id', '=', b.page_id).where('id', '=', b.id).where('planned_at', 'is', null).execute()
}

/** Batches of a broadcast that still have someone pending. */
export async function pendingBatches (db: Database, b: BroadcastRef): Promise<number[]> {
  const rows = await db.selectFrom('broadcast_recipients').select('batch').distinct()
    .where('page_id', '=', b.page_id).where('broadcast_id', '=', b.id).where('state', '=', 'pending').orderBy('batch').execute()
  return rows.map((r) => r.batch)
}

/** A running, fully listed broadcast with nobody pending is completed. */
export async function completeIfDone (db: Database, b: BroadcastRef): Promise<boolean> {
  const result = await db.updateTable('broadcasts')
    .set({ state: 'completed', completed_at: sql`now()`, updated_at: sql`now()` })
    .where('page_id', '=', b.page_id).where('id', '=', b.id).where('state', '=', 'running').where('planned_at', 'is not', null)
    .where(({ not, exists, selectFrom }) => not(exists(selectFrom('broadcast_recipients').select('psid')
      .where('page_id', '=', b.page_id).where('broadcast_id', '=', b.id).where('state', '=', 'pending'))))
    .executeTakeFirst()
  return result.numUpdatedRows > 0n
}

export interface ClaimedRecipient {
  page_id: string
  broadcast_id: string
  psid: string
  retries: number
  lease_id: string
  /** The broadcast's state as of the claim: a cancel is seen before every send. */
  broadcast_state: BroadcastState
  /** A notification exists under the current key: an earlier claim got as far as sending. */
  started: boolean
}

/** Takes up to `count` pending people of a batch at once (one lease for them all), in PSID order; SKIP LOCKED lets workers share a batch. */
export async function claimRecipients (db: Database, b: BroadcastRef, batch: number, count: number, leaseSeconds: number): Promise<ClaimedRecipient[]> {
  const { rows } = await sql<ClaimedRecipient>`
    update broadcast_recipients r
       set lease_id = ${randomUUID()}, next_attempt_at = now() + make_interval(secs => ${leaseSeconds}), updated_at = now()
     where r.page_id = ${b.page_id} and r.broadcast_id = ${b.id} and r.psid in (
       select psid from broadcast_recipients
        where page_id = ${b.page_id} and broadcast_id = ${b.id} and batch = ${batch} and state = 'pending'
          and (next_attempt_at is null or next_attempt_at <= now())
        order by psid
        limit ${count}
        for update skip locked)
       and r.state = 'pending'
    returning r.page_id, r.broadcast_id, r.psid, r.retries, r.lease_id,
      (select b.state from broadcasts b where b.page_id = r.page_id and b.id = r.broadcast_id) as broadcast_state,
      ${recipientStarted} as started`.execute(db)
  return rows.sort((a, b) => (a.psid < b.psid ? -1 : a.psid > b.psid ? 1 : 0))
}

/** Seconds until someone of the batch may be tried (0: now), or undefined when nobody is pending. */
export async function batchWaitSeconds (db: Database, b: BroadcastRef, batch: number): Promise<number | undefined> {
  const { rows: [row] } = await sql<{ pending: number, wait: number | null }>`
    select count(*)::int as pending,
           extract(epoch from (min(coalesce(next_attempt_at, now())) - now()))::float8 as wait
      from broadcast_recipients
     where page_id = ${b.page_id} and broadcast_id = ${b.id} and batch = ${batch} and state = 'pending'`.execute(db)
  return row.pending === 0 ? undefined : Math.max(0, row.wait ?? 0)
}

/** People still pending in each running broadcast, for the metrics (from the partial index on pending people). */
export async function runningBroadcasts (db: Database): Promise<Array<{ id: string, page_id: string, remaining: number }>> {
  const { rows } = await sql<{ id: string, page_id: string, remaining: number }>`
    select b.id, b.page_id,
           (select count(*) from broadcast_recipients r where r.page_id = b.page_id and r.broadcast_id = b.id and r.state = 'pending')::float8 as remaining
      from broadcasts b where b.state = 'running'`.execute(db)
  return rows
}

export interface RecipientDeps {
  sender: Sender
  maxAttempts: number
  backoffSeconds: number
}

/** What became of one claimed person; recorded only while the claim is still this worker's. */
export type RecipientResult =
  | { kind: 'done', outcome: BroadcastOutcome, error_code: string | null, notification_id: string | null }
  | { kind: 'retry', afterSeconds: number, pausePageSeconds?: number }
  | { kind: 'wait', seconds: number }
  | { kind: 'cancelled' }

const LEFT_BEFORE_SEND = new Set(['topic_not_found', 'page_not_found', 'page_without_access_token', 'idempotency_conflict'])

/**
 * One person of a broadcast, through the notifications send path under an idempotency key
 * derived from (broadcast, person, retry): a resumed or duplicated job replays the recorded
 * outcome instead of sending again. A send that a dead process left pending is resolved first.
 */
export async function sendToRecipient (deps: RecipientDeps, b: Broadcast, r: ClaimedRecipient): Promise<RecipientResult> {
  const key = recipientKey(b.id, r.psid, r.retries)
  const send = deps.sender.deps
  const existing = r.started ? await notificationByKey(send.db, b.page_id, key) : undefined
  if (existing && existing.broadcast_id !== b.id) {
    // A caller of POST /v1/notifications chose this very key: never send under someone else's record.
    return { kind: 'done', outcome: 'failed', error_code: 'idempotency_conflict', notification_id: null }
  }
  if (existing) {
    const n = existing.status === 'pending' ? await resolveInterrupted(send, existing) : existing
    return 'wait' in n ? { kind: 'wait', seconds: n.wait } : withReason(send.db, b, r, resultOf(deps, b, n, r))
  }
  if (r.broadcast_state === 'cancelled') return { kind: 'cancelled' }
  if (r.broadcast_state !== 'running') return { kind: 'wait', seconds: Math.max(1, (b.send_at.getTime() - Date.now()) / 1000) }
  try {
    const result = await deps.sender.send({
      topic_id: b.topic_id,
      psid: r.psid,
      message: b.message,
      notification_type: b.notification_type as NotificationType,
      use_window: b.use_window,
      ...(b.messaging_type !== null ? { messaging_type: b.messaging_type } : {}),
      ...(b.tag !== null ? { tag: b.tag } : {}),
      idempotency_key: key,
      broadcast_id: b.id,
      created_by: b.created_by,
      ...(b.audience_filter?.token_kind !== undefined && b.audience_filter.token_kind !== 'any' ? { token_kind: b.audience_filter.token_kind } : {}),
    })
    return await withReason(send.db, b, r, resultOf(deps, b, result.notification, r))
  } catch (error) {
    if (!(error instanceof DomainError)) throw error
    if (error.code === 'idempotency_in_progress') return { kind: 'wait', seconds: 1 }
    if (LEFT_BEFORE_SEND.has(error.code)) return { kind: 'done', outcome: 'failed', error_code: error.code, notification_id: null }
    throw error
  }
}

/** A person the send found without a usable token is recorded with why (the audience was frozen at planning). */
async function withReason (db: Database, b: Broadcast, r: ClaimedRecipient, result: RecipientResult): Promise<RecipientResult> {
  if (result.kind !== 'done' || result.outcome !== 'no_token') return result
  return { ...result, error_code: await noTokenReason(db, { page_id: b.page_id, topic_id: b.topic_id, psid: r.psid }) }
}

function resultOf (deps: RecipientDeps, b: Broadcast, n: Notification, r: ClaimedRecipient): RecipientResult {
  const done = (outcome: BroadcastOutcome, code: string | null = null): RecipientResult =>
    ({ kind: 'done', outcome, error_code: code, notification_id: n.id })
  switch (n.status) {
    case 'sent': return done(n.route === 'window' ? 'sent_window' : n.route === 'recurring' ? 'sent_recurring' : 'sent_token')
    case 'no_token': return done('no_token')
    case 'unconfirmed': return done('unconfirmed')
    case 'pending': return { kind: 'wait', seconds: 1 }
    case 'failed': {
      const problem = n.error as unknown as NotificationProblem | null
      if (problem?.code === 'recurring_cooldown') {
        // The person's recurring token may send later: skip them, or wait for it under the next key (not
        // counted against maxAttempts: the wait is the token's pacing, not a failure).
        if (!b.defer_cooldown) return done('cooldown', problem.code)
        const until = problem.next_send_at !== undefined ? Date.parse(problem.next_send_at) : Date.now() + (problem.retry_after_seconds ?? 60) * 1000
        return { kind: 'retry', afterSeconds: Math.max(1, Math.ceil((until - Date.now()) / 1000)) }
      }
      // A refusal with a Retry-After spent nothing and kept the token: the person may be tried again.
      const retry = problem ? retryOf(problem.code, problem.retry_after_seconds) : undefined
      if (retry && r.retries + 1 < deps.maxAttempts) {
        const after = Math.min(retry.afterSeconds, deps.backoffSeconds)
        return { kind: 'retry', afterSeconds: after, ...(retry.pausesPage ? { pausePageSeconds: after } : {}) }
      }
      return done('failed', problem?.code ?? 'failed')
    }
  }
}

/**
 * A pending notification under this person's key that nobody is working on any more (its worker
 * died). A held token is resolved by lease recovery once its lease ran out (re-sending the
 * same token, which Meta accepts at most once); without one, the send is taken over and resumed
 * once it went untouched for a lease. Until then: wait.
 */
async function resolveInterrupted (deps: SendDeps, n: Notification): Promise<Notification | { wait: number }> {
  const lease = deps.config.TOKEN_LEASE_SECONDS
  const wait = await holdLeaseSeconds(deps.db, n)
  if (wait !== undefined) {
    if (wait > 0) return { wait: Math.ceil(wait) }
    await recoverLeases(deps)
  } else {
    const taken = await takeOverStale(deps, n, lease)
    if (taken) {
      deps.log?.info({ notification_id: n.id, broadcast_id: n.broadcast_id }, 'broadcast: resuming an interrupted send')
      return resumeFromStart(deps, taken)
    }
  }
  const now = await getNotificationRow(deps.db, n.id, n.page_id)
  if (now && now.status !== 'pending') return now
  const age = now ? (Date.now() - now.updated_at.getTime()) / 1000 : 0
  return { wait: Math.max(1, Math.ceil(lease - age)) }
}

/** Records a result under the claim; false when the claim was lost (another worker took over). */
export async function recordResult (db: Database, r: ClaimedRecipient, result: RecipientResult): Promise<boolean> {
  const mine = db.updateTable('broadcast_recipients')
    .where('page_id', '=', r.page_id).where('broadcast_id', '=', r.broadcast_id).where('psid', '=', r.psid).where('lease_id', '=', r.lease_id)
  let changed: { numUpdatedRows: bigint }
  switch (result.kind) {
    case 'done':
      // Also over a cancel that came meanwhile: what was sent stays sent, and is counted.
      changed = await mine.set({
        state: 'done', outcome: result.outcome, error_code: result.error_code, notification_id: result.notification_id,
        lease_id: null, next_attempt_at: null, completed_at: sql`now()`, updated_at: sql`now()`,
      }).where('state', 'in', ['pending', 'cancelled']).executeTakeFirst()
      break
    case 'retry':
      changed = await mine.set((eb) => ({
        retries: eb('retries', '+', 1), lease_id: null,
        next_attempt_at: sql`now() + make_interval(secs => ${result.afterSeconds})`, updated_at: sql`now()`,
      })).where('state', '=', 'pending').executeTakeFirst()
      break
    case 'wait':
      changed = await mine.set({
        lease_id: null, next_attempt_at: sql`now() + make_interval(secs => ${result.seconds})`, updated_at: sql`now()`,
      }).where('state', '=', 'pending').executeTakeFirst()
      break
    case 'cancelled':
      changed = await mine.set({
        state: 'cancelled', lease_id: null, next_attempt_at: null, completed_at: sql`now()`, updated_at: sql`now()`,
      }).where('state', '=', 'pending').executeTakeFirst()
      break
  }
  return changed.numUpdatedRows > 0n
}

/** Work the queue may have lost (a job that ran out of retries, a crash between steps): what the sweep re-enqueues. */
export async function unfinishedWork (db: Database)
  : Promise<{ toPlan: BroadcastRef[], batches: Array<{ page_id: string, broadcast_id: string, batch: number }>, toComplete: BroadcastRef[] }> {
  const toPlan = await db.selectFrom('broadcasts').select(['page_id', 'id'])
    .where('state', 'in', ['scheduled', 'running']).where('planned_at', 'is', null)
    .where('send_at', '<=', sql<Date>`now()`).execute()
  const batches = await db.selectFrom('broadcast_recipients as r')
    .innerJoin('broadcasts as b', (j) => j.onRef('b.page_id', '=', 'r.page_id').onRef('b.id', '=', 'r.broadcast_id'))
    .select(['r.page_id', 'r.broadcast_id', 'r.batch']).distinct()
    .where('r.state', '=', 'pending').where('b.state', 'in', ['running', 'cancelled']).where('b.planned_at', 'is not', null)
    .execute()
  const toComplete = await db.selectFrom('broadcasts').select(['page_id', 'id'])
    .where('state', '=', 'running').where('planned_at', 'is not', null)
    .where(({ not, exists, selectFrom }) => not(exists(selectFrom('broadcast_recipients as r').select('r.psid')
      .whereRef('r.page_id', '=', 'broadcasts.page_id').whereRef('r.broadcast_id', '=', 'broadcasts.id').where('r.state', '=', 'pending'))))
    .execute()
  return { toPlan, batches, toComplete }
}
