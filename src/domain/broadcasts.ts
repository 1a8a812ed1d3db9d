import { randomUUID } from 'node:crypto'
import { sql } from 'kysely'
import type { Database } from '../db/database.js'
import type { Broadcast, BroadcastOutcome, BroadcastState, Notification } from '../db/types.js'
import { audienceOf, audienceQuery, estimateOf, WINDOW_SECONDS, type AudienceFilter } from './audience.js'
import { DomainError, notFound } from './errors.js'
import { keyRace, replayOf, requestHash as hashOf } from './idempotency.js'
import { retryOf } from './lifecycle.js'
import { checkLabelling, labellingOf, type Labelling, type NotificationType } from './notifications.js'
import { afterCursor, PAGE_SIZE, pageOf } from './pagination.js'
import { recoverLeases, takeOverStale } from './recovery.js'
import { getNotificationRow, notificationByKey, type NotificationProblem } from './send-steps.js'
import { resumeFromStart, type Sender, type SendDeps } from './send.js'
import { audiencePage, holdLeaseSeconds, noTokenReason } from './token-store.js'

export interface BroadcastInput extends Labelling {
  topic_id: string
  message: Record<string, unknown>
  notification_type?: NotificationType
  /** ISO time; absent or past: now. */
  send_at?: string
  use_window?: boolean
  /** Wait for people whose recurring token is cooling down (true), or skip them as `cooldown` (false, the default). */
  defer_cooldown?: boolean
  /** An explicit audience instead of everyone holding a usable token on the topic. */
  psids?: string[]
  /** Filters of the topic audience (src/domain/audience.ts). */
  audience?: AudienceFilter
}

export interface Progress {
  total: number
  sent_window: number
  sent_token: number
  /** Sent with a recurring token. */
  sent_recurring: number
  no_token: number
  /** no_token by why the person held no usable token when their turn came (token-store's NoTokenReason). */
  no_token_by_reason: Record<string, number>
  /** Skipped: their recurring token was cooling down (the broadcast does not wait: defer_cooldown false). */
  cooldown: number
  failed: Record<string, number>
  unconfirmed: number
  cancelled: number
  remaining: number
  /** People brought to an outcome per second over the last RATE_WINDOW_SECONDS. */
  rate_per_second: number
  /** remaining ÷ rate_per_second, while it runs and moves; null otherwise. */
  eta_seconds: number | null
}

const RATE_WINDOW_SECONDS = 10

export interface BroadcastView {
  id: string
  topic_id: string
  page_id: string
  state: BroadcastState
  audience: 'topic' | 'explicit'
  audience_estimate: number
  audience_filter: AudienceFilter | null
  /** People listed when planning ended (null until then), and how many more (or fewer) than estimated at creation. */
  audience_final: number | null
  audience_change: number | null
  message: Record<string, unknown>
  notification_type: string
  use_window: boolean
  defer_cooldown: boolean
  messaging_type?: string
  tag?: string
  send_at: string
  idempotency_key?: string
  progress: Progress
  created_at: string
  started_at: string | null
  planned_at: string | null
  completed_at: string | null
  cancelled_at: string | null
  /** When it stopped: completed or cancelled. */
  finished_at: string | null
}

const iso = (d: Date | null): string | null => d ? d.toISOString() : null

function broadcastView (b: Broadcast, progress: Progress): BroadcastView {
  return {
    id: b.id,
    topic_id: b.topic_id,
    page_id: b.page_id,
    state: b.state,
    audience: b.audience,
    audience_estimate: b.audience_estimate,
    audience_filter: b.audience_filter,
    audience_final: b.audience_final,
    audience_change: b.audience_final === null ? null : b.audience_final - b.audience_estimate,
    message: b.message,
    notification_type: b.notification_type,
    use_window: b.use_window,
    defer_cooldown: b.defer_cooldown,
    ...(b.messaging_type !== null ? { messaging_type: b.messaging_type } : {}),
    ...(b.tag !== null ? { tag: b.tag } : {}),
    send_at: b.send_at.toISOString(),
    ...(b.idempotency_key !== null ? { idempotency_key: b.idempotency_key } : {}),
    progress,
    created_at: b.created_at.toISOString(),
    started_at: iso(b.started_at),
    planned_at: iso(b.planned_at),
    completed_at: iso(b.completed_at),
    cancelled_at: iso(b.cancelled_at),
    finished_at: iso(b.completed_at ?? b.cancelled_at),
  }
}

const emptyProgress = (): Progress => ({
  total: 0, sent_window: 0, sent_token: 0, sent_recurring: 0, no_token: 0, no_token_by_reason: {}, cooldown: 0, failed: {}, unconfirmed: 0, cancelled: 0, remaining: 0, rate_per_second: 0, eta_seconds: null,
})

/** A broadcast by its key. */
export type BroadcastRef = Pick<Broadcast, 'id' | 'page_id'>

/** Progress of each broadcast, counted from its recipient rows in one grouped query. */
async function progressOf (db: Database, broadcasts: BroadcastRef[]): Promise<Map<string, Progress>> {
  const out = new Map(broadcasts.map((b) => [b.id, emptyProgress()]))
  if (broadcasts.length === 0) return out
  const rows = await db.selectFrom('broadcast_recipients')
    .select(['broadcast_id', 'state', 'outcome', 'error_code', (eb) => eb.fn.countAll<string>().as('n')])
    .select(sql<string>`count(*) filter (where completed_at > now() - make_interval(secs => ${RATE_WINDOW_SECONDS}))`.as('recent'))
    .where('page_id', 'in', [...new Set(broadcasts.map((b) => b.page_id))])
    .where('broadcast_id', 'in', broadcasts.map((b) => b.id))
    .groupBy(['broadcast_id', 'state', 'outcome', 'error_code'])
    .execute()
  for (const r of rows) {
    const p = out.get(r.broadcast_id)!
    const n = Number(r.n)
    p.rate_per_second += Number(r.recent) / RATE_WINDOW_SECONDS
    p.total += n
    if (r.state === 'pending') p.remaining += n
    else if (r.state === 'cancelled') p.cancelled += n
    else if (r.outcome === 'failed') p.failed[r.error_code ?? 'failed'] = (p.failed[r.error_code ?? 'failed'] ?? 0) + n
    else if (r.outcome !== null) p[r.outcome] += n
    if (r.outcome === 'no_token' && r.error_code !== null) p.no_token_by_reason[r.error_code] = (p.no_token_by_reason[r.error_code] ?? 0) + n
  }
  for (const p of out.values()) {
    p.rate_per_second = Math.round(p.rate_per_second * 10) / 10
    p.eta_seconds = p.remaining > 0 && p.rate_per_second > 0 ? Math.ceil(p.remaining / p.rate_per_second) : null
  }
  return out
}

function requestHash (input: BroadcastInput, psids: string[] | undefined, filter: AudienceFilter | undefined): string {
  return hashOf({
    topic_id: input.topic_id,
    message: input.message,
    notification_type: input.notification_type ?? 'REGULAR',
    use_window: input.use_window ?? true,
    ...(input.defer_cooldown ? { defer_cooldown: true } : {}),
    send_at: input.send_at === undefined ? null : new Date(input.send_at).toISOString(),
    psids: psids ?? null,
    ...(filter ? { audience: filter } : {}),
    ...labellingOf(input),
  })
}

export interface CreateOptions {
  idempotencyKey?: string
  batchSize: number
  /** Runs inside the creating transaction, so the broadcast and its first job exist together or not at all. */
  enqueue: (trx: Database, broadcast: Broadcast) => Promise<void>
}

/**
 * Records a broadcast (and, for an explicit audience, its recipients) and hands it to the job
 * queue in the same transaction. Same Idempotency-Key and body: the broadcast made the first time.
 */
export async function createBroadcast (db: Database, input: BroadcastInput, opts: CreateOptions): Promise<{ broadcast: Broadcast, replayed: boolean }> {
  checkLabelling(input)
  const { psids, filter } = audienceOf(input)
  const hash = requestHash(input, psids, filter)
  // A broadcast's Page is its topic's; an Idempotency-Key is unique per Page.
  const topic = await db.selectFrom('topics').select(['id', 'page_id', 'payload']).where('id', '=', input.topic_id).executeTakeFirst()
  if (opts.idempotencyKey !== undefined && topic) {
    const existing = await byKey(db, topic.page_id, opts.idempotencyKey)
    if (existing) return { broadcast: replayable(existing, hash), replayed: true }
  }
  if (!topic) throw notFound('topic', input.topic_id)
  const page = await db.selectFrom('pages').select(['id', 'access_token']).where('id', '=', topic.page_id).executeTakeFirst()
  if (!page) throw notFound('page', topic.page_id)
  if (page.access_token === null) {
    throw new DomainError('page_without_access_token',
      `Page ${page.id} has no access token; PUT /v1/pages/${page.id} with one first.`)
  }

  const now = new Date()
  const sendAt = input.send_at === undefined ? now : new Date(input.send_at)
  const scheduled = sendAt.getTime() > now.getTime()
  const estimate = psids ? psids.length : (await estimateOf(db, await audienceQuery(db, topic, filter, true), input.use_window ?? true)).audience

  const created = await db.transaction().execute(async (trx) => {
    const b = await trx.insertInto('broadcasts').values({
      page_id: topic.page_id,
      topic_id: topic.id,
      message: JSON.stringify(input.message),
      notification_type: input.notification_type ?? 'REGULAR',
      use_window: input.use_window ?? true,
      defer_cooldown: input.defer_cooldown ?? false,
      messaging_type: input.messaging_type ?? 'UPDATE',
      tag: input.tag ?? null,
      audience: psids ? 'explicit' : 'topic',
      audience_estimate: estimate,
      audience_filter: filter ? JSON.stringify(filter) : null,
      audience_final: psids ? psids.length : null,
      state: scheduled ? 'scheduled' : 'running',
      send_at: scheduled ? sendAt : now,
      started_at: scheduled ? null : now,
      planned_at: psids ? now : null,
      idempotency_key: opts.idempotencyKey ?? null,
      request_hash: hash,
    }).onConflict((oc) => oc.columns(['page_id', 'idempotency_key']).doNothing())
      .returningAll().executeTakeFirst()
    if (!b) return undefined
    if (psids) {
      for (let i = 0; i < psids.length; i += 1000) {
        await trx.insertInto('broadcast_recipients')
          .values(psids.slice(i, i + 1000).map((psid, j) => ({ page_id: b.page_id, broadcast_id: b.id, psid, batch: Math.floor((i + j) / opts.batchSize) })))
          .execute()
      }
    }
    await opts.enqueue(trx, b)
    return b
  })
  if (created) return { broadcast: created, replayed: false }
  // Another request with this key won the insert a moment ago.
  const winner = await byKey(db, topic.page_id, opts.idempotencyKey!)
  if (!winner) throw keyRace()
  return { broadcast: replayable(winner, hash), replayed: true }
}

async function byKey (db: Database, pageId: string, key: string): Promise<Broadcast | undefined> {
  return db.selectFrom('broadcasts').selectAll().where('page_id', '=', pageId).where('idempotency_key', '=', key).executeTakeFirst()
}

/** A broadcast is created whole in one transaction: one under a key is never in flight. */
function replayable (existing: Broadcast, hash: string): Broadcast {
  return replayOf(existing, hash, 'broadcast')
}

/**
 * A broadcast by id, on its Page when the caller knows it. Without a Page (GET
 * /v1/broadcasts/{id}) it is a lookup on every shard once sharded (docs/SCALING.md).
 */
export async function getBroadcastRow (db: Database, id: string, pageId?: string): Promise<Broadcast | undefined> {
  let q = db.selectFrom('broadcasts').selectAll().where('id', '=', id)
  if (pageId !== undefined) q = q.where('page_id', '=', pageId)
  return q.executeTakeFirst()
}

export async function getBroadcast (db: Database, id: string): Promise<BroadcastView> {
  const b = await getBroadcastRow(db, id)
  if (!b) throw notFound('broadcast', id)
  return withProgress(db, b)
}

export async function withProgress (db: Database, b: Broadcast): Promise<BroadcastView> {
  const progress = await progressOf(db, [b])
  return broadcastView(b, progress.get(b.id)!)
}

export interface BroadcastFilter {
  topic_id?: string
  state?: BroadcastState
  limit?: number
  cursor?: string
}

/** Oldest first, keyset-paginated like every list. */
export async function listBroadcasts (db: Database, f: BroadcastFilter): Promise<{ items: BroadcastView[], next_cursor: string | null }> {
  let q = db.selectFrom('broadcasts').selectAll().where(afterCursor('broadcasts', f.cursor))
  if (f.topic_id !== undefined) q = q.where('topic_id', '=', f.topic_id)
  if (f.state !== undefined) q = q.where('state', '=', f.state)
  const limit = f.limit ?? PAGE_SIZE
  const rows = await q.orderBy('created_at').orderBy('id').limit(limit + 1).execute()
  const { items, next_cursor } = pageOf(rows, limit)
  const progress = await progressOf(db, items)
  return { items: items.map((b) => broadcastView(b, progress.get(b.id)!)), next_cursor }
}

/** The idempotency key of a recipient's current send; a retry after "nothing was sent" gets the next one. */
export function recipientKey (broadcastId: string, psid: string, retries: number): string {
  return retries === 0 ? `broadcast:${broadcastId}:${psid}` : `broadcast:${broadcastId}:${psid}:retry${retries}`
}

const recipientKeySql = sql`'broadcast:' || r.broadcast_id || ':' || r.psid || case when r.retries > 0 then ':retry' || r.retries else '' end`
/** The notification of recipient `r`'s current send exists (on the broadcast's Page, where its key is unique). */
const recipientStarted = sql`exists (select 1 from notifications n where n.page_id = r.page_id and n.idempotency_key = ${recipientKeySql})`

/**
 * Pending recipients nobody is sending to (no live lease) and whose current send never started
 * become cancelled. The others are in flight: their worker records what happened to them. The
 * lease id stays, so that a holder that stalled past its lease still records a send it made.
 */
export async function cancelPendingRecipients (db: Database, b: BroadcastRef): Promise<number> {
  const result = await sql`
    update broadcast_recipients r
       set state = 'cancelled', next_attempt_at = null, updated_at = now(), completed_at = now()
     where r.page_id = ${b.page_id} and r.broadcast_id = ${b.id} and r.state = 'pending'
       and (r.lease_id is null or r.next_attempt_at <= now())
       and not ${recipientStarted}`.execute(db)
  return Number(result.numAffectedRows ?? 0n)
}

/** Stops a scheduled or running broadcast; what was sent stays sent. Cancelling twice is harmless. */
export async function cancelBroadcast (db: Database, id: string): Promise<BroadcastView> {
  const b = await db.updateTable('broadcasts')
    .set({ state: 'cancelled', cancelled_at: sql`now()`, updated_at: sql`now()` })
    .where('id', '=', id).where('state', 'in', ['scheduled', 'running'])
    .returningAll().executeTakeFirst()
  const existing = b ?? await getBroadcastRow(db, id)
  if (!existing) throw notFound('broadcast', id)
  if (!b && existing.state === 'completed') {
    throw new DomainError('broadcast_completed', `Broadcast ${id} has already completed; there is nothing left to cancel.`)
  }
  await cancelPendingRecipients(db, existing)
  const now = await getBroadcastRow(db, id, existing.page_id)
  return withProgress(db, now!)
}

// ---- execution (used by the job worker) ----

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
