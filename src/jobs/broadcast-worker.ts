import { setTimeout as sleep } from 'node:timers/promises'
import type PgBoss from 'pg-boss'
import type { Database } from '../db/database.js'
import type { Broadcast, BroadcastState } from '../db/types.js'
import {
  batchWaitSeconds, cancelPendingRecipients, claimRecipient, completeIfDone, getBroadcastRow, markPlanned,
  pausePage, pendingBatches, planNextBatch, recordResult, reservePacingSlot, sendToRecipient, startBroadcast,
  unfinishedWork, type RecipientDeps,
} from '../domain/broadcasts.js'
import { ensureQueue, inTransaction, type JobContext, type JobQueue } from './queue.js'

const PLAN_QUEUE = 'broadcast-plan'
const SEND_QUEUE = 'broadcast-send'
export const SWEEP_QUEUE = 'broadcast-sweep'

interface PlanJob { broadcast_id: string }
interface SendJob { broadcast_id: string, batch: number }

/** A handler works this long, then hands the rest to a fresh job, so no job nears its expiry. */
const JOB_BUDGET_MS = 120_000
/** Longer pacing waits (a Page paused after a rate limit) end the job and schedule the next one instead. */
const MAX_INLINE_WAIT_MS = 2_000

// short: a job waiting in the queue with the same singletonKey makes a second send a no-op, so
// re-enqueueing (sweeps, continuations, resumed plans) never piles up duplicates.
const queueOptions: Omit<PgBoss.Queue, 'name'> = {
  policy: 'short', retryLimit: 10, retryDelay: 5, retryBackoff: true, expireInSeconds: 900,
}

/** Sends the first job of a broadcast inside its creating transaction: planning starts at send_at. */
export async function enqueueBroadcast (boss: JobQueue, trx: Database, b: Broadcast): Promise<void> {
  await boss.send(PLAN_QUEUE, { broadcast_id: b.id } satisfies PlanJob,
    { singletonKey: b.id, startAfter: b.send_at, ...inTransaction(trx) })
}

/**
 * broadcast-plan lists the audience in pages (one batch each) and fans out broadcast-send jobs;
 * broadcast-send works through one batch, one person at a time, at the Page's pace;
 * broadcast-sweep (every minute, and at start) re-enqueues anything a lost job left behind.
 * Each instance runs BROADCAST_CONCURRENCY send workers; all instances share the queue.
 */
export async function broadcastWorkers (ctx: JobContext): Promise<void> {
  const { boss, config } = ctx
  for (const name of [PLAN_QUEUE, SEND_QUEUE]) await ensureQueue(boss, name, queueOptions)
  await ensureQueue(boss, SWEEP_QUEUE, { policy: 'short', retryLimit: 0, expireInSeconds: 300 })
  const polling = { pollingIntervalSeconds: config.JOB_POLL_INTERVAL_SECONDS }
  const sendWorkers: string[] = []
  const wake = () => { for (const id of sendWorkers) boss.notifyWorker(id) }
  const run = async <T> (what: string, data: T, handler: (data: T) => Promise<void>) => {
    try {
      await handler(data)
    } catch (err) {
      ctx.log.error({ err, job: what, data }, 'broadcast job failed; the queue retries it')
      throw err
    }
  }

  await boss.work<PlanJob>(PLAN_QUEUE, polling, ([job]) => run(PLAN_QUEUE, job.data, (d) => plan(ctx, d.broadcast_id, wake)))
  for (let i = 0; i < config.BROADCAST_CONCURRENCY; i++) {
    sendWorkers.push(await boss.work<SendJob>(SEND_QUEUE, polling, ([job]) => run(SEND_QUEUE, job.data, (d) => sendBatch(ctx, d))))
  }
  await boss.work(SWEEP_QUEUE, polling, () => run(SWEEP_QUEUE, {}, () => sweep(ctx, wake)))
  await boss.schedule(SWEEP_QUEUE, '* * * * *')
  // At start, pick up whatever a stopped or crashed instance left.
  await boss.send(SWEEP_QUEUE, {}, { singletonKey: 'sweep' })
}

async function enqueueSend (ctx: JobContext, broadcastId: string, batch: number, startAfter?: Date): Promise<void> {
  await ctx.boss.send(SEND_QUEUE, { broadcast_id: broadcastId, batch } satisfies SendJob, {
    singletonKey: `${broadcastId}:${batch}`,
    ...(startAfter ? { startAfter } : {}),
  })
}

async function enqueuePlan (ctx: JobContext, broadcastId: string): Promise<void> {
  await ctx.boss.send(PLAN_QUEUE, { broadcast_id: broadcastId } satisfies PlanJob, { singletonKey: broadcastId })
}

/**
 * Lists a topic audience page by page (never whole) from where the last run stopped, starting a
 * send job per page as it goes. Runs concurrently with itself safely: pages are keyed by their
 * first person and inserted with ON CONFLICT DO NOTHING.
 */
async function plan (ctx: JobContext, broadcastId: string, wake: () => void): Promise<void> {
  const { db, config } = ctx
  let b = await startBroadcast(db, broadcastId)
  if (!b || b.state === 'completed') return
  if (b.state === 'cancelled') {
    await cancelPendingRecipients(db, broadcastId)
    return
  }
  const deadline = Date.now() + JOB_BUDGET_MS
  const fresh = b.audience === 'topic' && b.planned_at === null &&
    !(await db.selectFrom('broadcast_recipients').select('psid').where('broadcast_id', '=', broadcastId).limit(1).executeTakeFirst())
  while (b.planned_at === null) {
    if (ctx.stopping() || Date.now() > deadline) {
      await enqueuePlan(ctx, broadcastId)
      return
    }
    const page = await planNextBatch(db, b, config.BROADCAST_BATCH_SIZE)
    if (!page) {
      await markPlanned(db, broadcastId)
    } else if (page.inserted > 0) {
      await enqueueSend(ctx, broadcastId, page.batch)
      wake()
    }
    b = (await getBroadcastRow(db, broadcastId))!
    if (b.state === 'cancelled') {
      await cancelPendingRecipients(db, broadcastId)
      return
    }
  }
  if (!fresh) {
    // An explicit audience, or a resumed plan: make sure every unfinished batch has its job.
    for (const batch of await pendingBatches(db, broadcastId)) await enqueueSend(ctx, broadcastId, batch)
    wake()
  }
  if (await completeIfDone(db, broadcastId)) ctx.log.info({ broadcast_id: broadcastId }, 'broadcast completed')
  else ctx.log.info({ broadcast_id: broadcastId }, 'broadcast audience listed')
}

/**
 * One batch, one person at a time: take the Page's next slot, claim the next pending person,
 * send through the notifications path, record the result under the claim. The broadcast's state
 * is read before every send, so a cancel stops the batch after at most the send in flight.
 */
async function sendBatch (ctx: JobContext, job: SendJob): Promise<void> {
  const { db, config } = ctx
  const deps: RecipientDeps = { sender: ctx.sender, maxAttempts: config.BROADCAST_MAX_ATTEMPTS, backoffSeconds: config.BROADCAST_BACKOFF_SECONDS }
  const b = await getBroadcastRow(db, job.broadcast_id)
  if (!b || b.state === 'completed') return
  let state: BroadcastState = b.state
  const deadline = Date.now() + JOB_BUDGET_MS
  for (;;) {
    if (ctx.stopping() || Date.now() > deadline) {
      await enqueueSend(ctx, job.broadcast_id, job.batch)
      return
    }
    if (state === 'running') {
      const waitMs = await reservePacingSlot(db, b.page_id, config.BROADCAST_RATE_PER_SECOND)
      if (waitMs > MAX_INLINE_WAIT_MS) {
        await enqueueSend(ctx, job.broadcast_id, job.batch, new Date(Date.now() + waitMs))
        return
      }
      if (waitMs > 0) await sleep(waitMs)
    }
    const r = await claimRecipient(db, job.broadcast_id, job.batch, config.TOKEN_LEASE_SECONDS)
    if (!r) {
      const wait = await batchWaitSeconds(db, job.broadcast_id, job.batch)
      if (wait === undefined) {
        if (await completeIfDone(db, job.broadcast_id)) ctx.log.info({ broadcast_id: job.broadcast_id }, 'broadcast completed')
        return
      }
      // Someone is in flight elsewhere or waiting out a back-off: look again when that ends.
      await enqueueSend(ctx, job.broadcast_id, job.batch, new Date(Date.now() + Math.max(wait, 0.5) * 1000))
      return
    }
    state = r.broadcast_state
    const result = await sendToRecipient(deps, b, r)
    if (result.kind === 'retry' && result.pausePageSeconds !== undefined) {
      ctx.log.warn({ broadcast_id: b.id, page_id: b.page_id, seconds: result.pausePageSeconds }, 'broadcast: Meta rate-limited the Page; pausing its sends')
      await pausePage(db, b.page_id, result.pausePageSeconds)
    }
    if (!(await recordResult(db, r, result))) {
      ctx.log.warn({ broadcast_id: b.id, psid: r.psid }, 'broadcast: claim lost before the result was recorded; its new holder records it')
    }
    if (result.kind === 'wait' && state === 'scheduled') return
  }
}

/** Re-enqueues work whose job was lost; every enqueue is deduplicated, so running it anywhere, any time, is safe. */
async function sweep (ctx: JobContext, wake: () => void): Promise<void> {
  const { toPlan, batches, toComplete } = await unfinishedWork(ctx.db)
  for (const id of toPlan) await enqueuePlan(ctx, id)
  for (const { broadcast_id, batch } of batches) await enqueueSend(ctx, broadcast_id, batch)
  for (const id of toComplete) await completeIfDone(ctx.db, id)
  if (batches.length > 0) wake()
}
