import { setTimeout as sleep } from 'node:timers/promises'
import type PgBoss from 'pg-boss'
import type { Database } from '../db/database.js'
import type { Broadcast, BroadcastState } from '../db/types.js'
import { broadcastRate, pausePage, reservePacingSlots } from '../domain/broadcast-pacing.js'
import {
  batchWaitSeconds, claimRecipients, completeIfDone, markPlanned, pendingBatches, planNextBatch, recordResult,
  sendToRecipient, startBroadcast, unfinishedWork, type ClaimedRecipient, type RecipientDeps, type RecipientResult,
} from '../domain/broadcast-run.js'
import { cancelPendingRecipients, getBroadcastRow, type BroadcastRef } from '../domain/broadcasts.js'
import { ensureQueue, inTransaction, type JobContext, type JobQueue } from './queue.js'

const PLAN_QUEUE = 'broadcast-plan'
const SEND_QUEUE = 'broadcast-send'
export const SWEEP_QUEUE = 'broadcast-sweep'

// page_id: the broadcast's Page, so that every statement of a job names its shard (docs/SCALING.md).
// Absent from jobs enqueued before migration 20261202120000: read from the broadcast then.
interface PlanJob { broadcast_id: string, page_id?: string }
interface SendJob { broadcast_id: string, page_id?: string, batch: number }

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
  await boss.send(PLAN_QUEUE, { broadcast_id: b.id, page_id: b.page_id } satisfies PlanJob,
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
  const window = new SendWindow(Math.max(1, Math.floor(config.GRAPH_API_CONNECTIONS / 2)), config.TOKEN_LEASE_SECONDS, () => ctx.sender.graphLatencySeconds())
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

  await boss.work<PlanJob>(PLAN_QUEUE, polling, ([job]) => run(PLAN_QUEUE, job.data, (d) => plan(ctx, d, wake)))
  for (let i = 0; i < config.BROADCAST_CONCURRENCY; i++) {
    sendWorkers.push(await boss.work<SendJob>(SEND_QUEUE, polling, ([job]) => run(SEND_QUEUE, job.data, (d) => sendBatch(ctx, d, window))))
  }
  await boss.work(SWEEP_QUEUE, polling, () => run(SWEEP_QUEUE, {}, () => sweep(ctx, wake)))
  await boss.schedule(SWEEP_QUEUE, '* * * * *')
  // At start, pick up whatever a stopped or crashed instance left.
  await boss.send(SWEEP_QUEUE, {}, { singletonKey: 'sweep' })
}

async function enqueueSend (ctx: JobContext, b: BroadcastRef, batch: number, startAfter?: Date): Promise<void> {
  await ctx.boss.send(SEND_QUEUE, { broadcast_id: b.id, page_id: b.page_id, batch } satisfies SendJob, {
    singletonKey: `${b.id}:${batch}`,
    ...(startAfter ? { startAfter } : {}),
  })
}

async function enqueuePlan (ctx: JobContext, b: BroadcastRef): Promise<void> {
  await ctx.boss.send(PLAN_QUEUE, { broadcast_id: b.id, page_id: b.page_id } satisfies PlanJob, { singletonKey: b.id })
}

/** The broadcast a job names, with its Page (read from the broadcast for a job enqueued without it). */
async function refOf (ctx: JobContext, job: PlanJob | SendJob): Promise<BroadcastRef | undefined> {
  if (job.page_id !== undefined) return { id: job.broadcast_id, page_id: job.page_id }
  return ctx.db.selectFrom('broadcasts').select(['id', 'page_id']).where('id', '=', job.broadcast_id).executeTakeFirst()
}

/**
 * Lists a topic audience page by page (never whole) from where the last run stopped, starting a
 * send job per page as it goes. Runs concurrently with itself safely: pages are keyed by their
 * first person and inserted with ON CONFLICT DO NOTHING.
 */
async function plan (ctx: JobContext, job: PlanJob, wake: () => void): Promise<void> {
  const { db, config } = ctx
  const ref = await refOf(ctx, job)
  if (!ref) return
  let b = await startBroadcast(db, ref)
  if (!b || b.state === 'completed') return
  if (b.state === 'cancelled') {
    await cancelPendingRecipients(db, ref)
    return
  }
  const deadline = Date.now() + JOB_BUDGET_MS
  const fresh = b.audience === 'topic' && b.planned_at === null &&
    !(await db.selectFrom('broadcast_recipients').select('psid')
      .where('page_id', '=', ref.page_id).where('broadcast_id', '=', ref.id).limit(1).executeTakeFirst())
  while (b.planned_at === null) {
    if (ctx.stopping() || Date.now() > deadline) {
      await enqueuePlan(ctx, ref)
      return
    }
    const page = await planNextBatch(db, b, config.BROADCAST_BATCH_SIZE)
    if (!page) {
      await markPlanned(db, ref)
    } else if (page.inserted > 0) {
      await enqueueSend(ctx, ref, page.batch)
      wake()
    }
    b = (await getBroadcastRow(db, ref.id, ref.page_id))!
    if (b.state === 'cancelled') {
      await cancelPendingRecipients(db, ref)
      return
    }
  }
  if (!fresh) {
    // An explicit audience, or a resumed plan: make sure every unfinished batch has its job.
    for (const batch of await pendingBatches(db, ref)) await enqueueSend(ctx, ref, batch)
    wake()
  }
  if (await completeIfDone(db, ref)) ctx.log.info({ broadcast_id: ref.id }, 'broadcast completed')
  else ctx.log.info({ broadcast_id: ref.id }, 'broadcast audience listed')
}

/** A send's own time besides Meta's answer (its two statements and the result's), in the window of sends in flight. */
const DATABASE_SECONDS_PER_SEND = 0.05
/** Sends a job starts with before it has seen any finish (and never goes below). */
const FIRST_WINDOW = 8
/** Completions over this many seconds make the job's observed throughput. */
const THROUGHPUT_SECONDS = 2
/** People taken per claim: small enough that a cancel is seen within a fraction of a second at 300/s. */
const CLAIM_CHUNK = 50

/**
 * One batch at the Page's pace. The rate, not a number of workers, sets how fast it goes: the job
 * keeps as many sends in flight as the rate needs at Meta's current latency (rate × latency,
 * measured as it goes), bounded by its share of GRAPH_API_CONNECTIONS. It claims people in small
 * chunks, takes the Page's next slots for them (shared by every worker of every instance), starts
 * each send at its slot through the one send path, and records each result under the claim. The
 * broadcast's state is read with every chunk, and before each send starts, so a cancel stops it
 * within the sends already on the wire. A rate limit from Meta pauses the Page for every worker
 * and halves the share of its rate (given back as sends succeed).
 */
/**
 * The broadcast sends one instance keeps in flight, shared by all its send jobs: as many as the
 * pace of the Pages broadcasting needs (Little's law: their rates × Meta's answer time), but never
 * more than the instance has been finishing within a tenth of a lease. When the database, not
 * Meta, is the bottleneck, more sends in flight would only wait longer, until their holds run out;
 * so the window grows only as sends finish (from FIRST_WINDOW), and never past half the Graph
 * connections, which the API's sends share.
 *
 * It pays: a 5,000-person broadcast with Meta answering in 200 ms ran at 17 people/s when four jobs
 * each sent one person after another, and at 218–240 on the same machine with the window
 * (`npm run bench`, broadcast scenario, 2026-12-02).
 */
class SendWindow {
  private inFlight = 0
  private readonly finished: number[] = []
  private readonly rates = new Map<string, { rate: number, jobs: number }>()
  private waiters: Array<() => void> = []

  constructor (private readonly cap: number, private readonly leaseSeconds: number, private readonly latency: () => number) {}

  /** A job of `pageId` sends at `rate` until it leaves. */
  join (pageId: string, rate: number): () => void {
    const r = this.rates.get(pageId) ?? { rate, jobs: 0 }
    r.rate = Math.max(r.rate, rate)
    r.jobs++
    this.rates.set(pageId, r)
    return () => {
      if (--r.jobs === 0) this.rates.delete(pageId)
    }
  }

  /** Sends that may start now. */
  room (): number {
    const since = Date.now() - THROUGHPUT_SECONDS * 1000
    while (this.finished.length > 0 && this.finished[0] < since) this.finished.shift()
    const throughput = this.finished.length / THROUGHPUT_SECONDS
    const rate = [...this.rates.values()].reduce((sum, r) => sum + r.rate, 0)
    const paced = Math.ceil(rate * (this.latency() + DATABASE_SECONDS_PER_SEND) * 1.25) + 1
    const size = Math.min(this.cap, paced, Math.max(FIRST_WINDOW, Math.ceil(throughput * this.leaseSeconds / 10)))
    return size - this.inFlight
  }

  take (n: number): void { this.inFlight += n }

  done (): void {
    this.inFlight--
    this.finished.push(Date.now())
    const waiters = this.waiters
    this.waiters = []
    for (const wake of waiters) wake()
  }

  /** Resolves when a send of the instance finishes (room may have come free). */
  changed (): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve))
  }
}

async function sendBatch (ctx: JobContext, job: SendJob, window: SendWindow): Promise<void> {
  const found = job.page_id !== undefined
    ? await getBroadcastRow(ctx.db, job.broadcast_id, job.page_id)
    : await getBroadcastRow(ctx.db, job.broadcast_id)
  if (!found || found.state === 'completed') return
  const page = await ctx.db.selectFrom('pages').select('broadcast_rate_per_second').where('id', '=', found.page_id).executeTakeFirst()
  const rate = broadcastRate(found.message, page?.broadcast_rate_per_second ?? null, ctx.config.BROADCAST_RATE_PER_SECOND)
  const leave = window.join(found.page_id, rate)
  try {
    await sendPaced(ctx, job, window, found, rate)
  } finally {
    leave()
  }
}

async function sendPaced (ctx: JobContext, job: SendJob, window: SendWindow, b: Broadcast, rate: number): Promise<void> {
  const { db, config } = ctx
  const deps: RecipientDeps = { sender: ctx.sender, maxAttempts: config.BROADCAST_MAX_ATTEMPTS, backoffSeconds: config.BROADCAST_BACKOFF_SECONDS }
  let state: BroadcastState = b.state
  let pausedUntil = 0
  const inFlight = new Set<Promise<void>>()
  const deadline = Date.now() + JOB_BUDGET_MS
  const drain = () => Promise.all(inFlight)

  /** One person, at its slot: sent unless the broadcast was cancelled or the Page paused meanwhile. */
  const one = async (r: ClaimedRecipient, atMs: number): Promise<void> => {
    if (atMs > Date.now()) await sleep(atMs - Date.now())
    let result: RecipientResult
    if (state === 'cancelled' && !r.started) result = { kind: 'cancelled' }
    else if (Date.now() < pausedUntil && !r.started) result = { kind: 'wait', seconds: Math.ceil((pausedUntil - Date.now()) / 1000) }
    else result = await sendToRecipient(deps, b, { ...r, broadcast_state: state })
    if (result.kind === 'retry' && result.pausePageSeconds !== undefined) {
      pausedUntil = Math.max(pausedUntil, Date.now() + result.pausePageSeconds * 1000)
      ctx.log.warn({ broadcast_id: b.id, page_id: b.page_id, seconds: result.pausePageSeconds }, 'broadcast: Meta rate-limited the Page; pausing its sends')
      await pausePage(db, b.page_id, result.pausePageSeconds)
    }
    if (!(await recordResult(db, r, result))) {
      ctx.log.warn({ broadcast_id: b.id, psid: r.psid }, 'broadcast: claim lost before the result was recorded; its new holder records it')
    }
  }

  for (;;) {
    if (ctx.stopping() || Date.now() > deadline) {
      await drain()
      await enqueueSend(ctx, b, job.batch)
      return
    }
    const room = window.room()
    if (room <= 0) {
      await Promise.race([window.changed(), ...inFlight])
      continue
    }
    const rs = await claimRecipients(db, b, job.batch, Math.min(room, CLAIM_CHUNK), config.TOKEN_LEASE_SECONDS)
    if (rs.length === 0) {
      if (inFlight.size > 0) {
        await Promise.race(inFlight)
        continue
      }
      const wait = await batchWaitSeconds(db, b, job.batch)
      if (wait === undefined) {
        if (await completeIfDone(db, b)) ctx.log.info({ broadcast_id: b.id }, 'broadcast completed')
        return
      }
      // Someone is in flight elsewhere or waiting out a back-off: look again when that ends.
      await enqueueSend(ctx, b, job.batch, new Date(Date.now() + Math.max(wait, 0.5) * 1000))
      return
    }
    state = rs[0].broadcast_state
    if (state === 'scheduled') {
      for (const r of rs) await recordResult(db, r, { kind: 'wait', seconds: Math.max(1, (b.send_at.getTime() - Date.now()) / 1000) })
      await drain()
      return
    }
    const slots = state === 'running' ? await reservePacingSlots(db, b.page_id, rate, rs.length, MAX_INLINE_WAIT_MS) : { waitMs: 0, stepMs: 0, taken: true }
    if (!slots.taken) {
      // The Page is paused (a rate limit): hand these people back, their slots untaken, and come back when it resumes.
      for (const r of rs) await recordResult(db, r, { kind: 'wait', seconds: Math.ceil(slots.waitMs / 1000) })
      await drain()
      await enqueueSend(ctx, b, job.batch, new Date(Date.now() + slots.waitMs))
      return
    }
    const now = Date.now()
    window.take(rs.length)
    rs.forEach((r, i) => {
      const p = one(r, now + slots.waitMs + i * slots.stepMs).catch((err: unknown) => {
        ctx.log.error({ err, broadcast_id: b.id, psid: r.psid }, 'broadcast: a send failed; its claim runs out and the person is tried again')
      }).finally(() => {
        inFlight.delete(p)
        window.done()
      })
      inFlight.add(p)
    })
  }
}

/** Re-enqueues work whose job was lost; every enqueue is deduplicated, so running it anywhere, any time, is safe. */
async function sweep (ctx: JobContext, wake: () => void): Promise<void> {
  const { toPlan, batches, toComplete } = await unfinishedWork(ctx.db)
  for (const b of toPlan) await enqueuePlan(ctx, b)
  for (const { page_id, broadcast_id, batch } of batches) await enqueueSend(ctx, { id: broadcast_id, page_id }, batch)
  for (const b of toComplete) await completeIfDone(ctx.db, b)
  if (batches.length > 0) wake()
}
