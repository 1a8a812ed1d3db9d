import { sql } from 'kysely'
import type { Database } from '../db/database.js'
import type { Broadcast, BroadcastState } from '../db/types.js'
import { audienceOf, audienceQuery, estimateOf, type AudienceFilter } from './audience.js'
import { DomainError, notFound } from './errors.js'
import { keyRace, replayOf, requestHash as hashOf } from './idempotency.js'
import { checkLabelling, labellingOf, type Labelling, type NotificationType } from './notifications.js'
import { afterCursor, PAGE_SIZE, pageOf } from './pagination.js'

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
  /** The name of the API key creating it (also on each of its notifications). */
  createdBy?: string
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
      created_by: opts.createdBy ?? null,
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
  /** Only broadcasts of these Pages (a key's); null or undefined: all. */
  pages?: readonly string[] | null
}

/** Oldest first, keyset-paginated like every list. */
export async function listBroadcasts (db: Database, f: BroadcastFilter): Promise<{ items: BroadcastView[], next_cursor: string | null }> {
  let q = db.selectFrom('broadcasts').selectAll().where(afterCursor('broadcasts', f.cursor))
  if (f.pages) q = q.where('page_id', 'in', f.pages.length > 0 ? [...f.pages] : [''])
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
export const recipientStarted = sql`exists (select 1 from notifications n where n.page_id = r.page_id and n.idempotency_key = ${recipientKeySql})`

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
