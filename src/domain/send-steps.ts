/**
 * The statements of a send, and the one interface through which every send path writes them
 * (SendSteps). A send is two statements, each one round trip and one commit: `start` before Meta
 * is called (the notification inserted, its token claimed), `finish` after Meta answered (the
 * outcome and the token's move). Batched, as built in buildApp, the starts (and the outcomes) that
 * arrive while a statement runs share the next one (GroupCommit).
 */
import { sql } from 'kysely'
import type { Database } from '../db/database.js'
import { GroupCommit } from '../db/group-commit.js'
import type { Notification } from '../db/types.js'
import type { GraphError } from '../graph/errors.js'
import { DEFAULT_COOLDOWN_SECONDS, decide, type NotificationStatus, type Route, type TokenOutcome } from './lifecycle.js'
import type { NotificationInput } from './notifications.js'
import { carryPacing, claimForStarts, holdInput, settledOf, settleHolds, type ClaimedToken, type Hold } from './token-store.js'
import { WINDOW_MS } from './window.js'
import { sendHistory, tokenHistory } from './consent-history.js'

/** What the caller is told when a send did not end `sent`; stored with the notification. */
export interface NotificationProblem {
  code: string
  detail: string
  graph?: GraphError
  retry_after_seconds?: number
  /** recurring_cooldown: when the person's recurring token may send again (ISO). */
  next_send_at?: string
}

/**
 * One send to start: the request, its hash and the id its notification will have. `lastTry`: when
 * the person's token is busy (locked for a moment by another statement), record the notification
 * final as `token_busy`; otherwise nothing is written and the start answers `busy`, to be tried again.
 */
export interface Starting { id: string, input: NotificationInput, hash: string, lastTry?: boolean }

export interface SendContext {
  topic_id: string
  page_id: string
  payload: string
  /** As stored (encrypted): decrypted by the send that uses it, so that one unreadable token fails only its own sends, not the batch's. */
  access_token: string | null
  /** An earlier notification with the same Idempotency-Key. */
  existing_id: string | null
}

export interface Started {
  /** Undefined: no such topic. */
  context?: SendContext
  /** Undefined when nothing was inserted: an earlier request has the key, or the Page cannot send. */
  n?: Notification
  token?: ClaimedToken
  /** Nothing was written: the person's token is busy (Starting's `lastTry`); start again shortly. */
  busy?: true
}

/** An outcome to record, with the held token's move when there is one. */
export interface Finishing {
  id: string
  page_id: string
  status: Exclude<NotificationStatus, 'pending'>
  route: Route
  problem?: NotificationProblem
  graphMessageId?: string | null
  tokenId?: string
  tokenState?: TokenOutcome
  tokensRefused?: number
  /** The attempt the start counted made no request to Meta (its token could not be read): it is taken back. */
  noRequest?: boolean
  move?: { hold: Hold, to: TokenOutcome }
}

/** Where every send path writes its two steps: batched (group commit) or one statement each. */
export interface SendSteps {
  start (item: Starting): Promise<Started>
  /** The notification as written; undefined when nothing was (recovery took the send over). */
  finish (item: Finishing): Promise<Notification | undefined>
}

const NO_TOKEN: NotificationProblem = { code: 'no_token', detail: 'This person holds no usable token for this topic.' }
/** The lifecycle's answer when the only way to the person is a recurring token that may not send yet. */
const COOLING = decide({ kind: 'notification_messages', route: 'recurring', ambiguous: false, exhausted: false, recovering: false }, { kind: 'cooling' }) as
  { code: string, detail: string }
/** The lifecycle's answer when the person's token stayed locked through a send's last try. */
const BUSY = decide({ kind: 'one_time_notif', route: 'token', ambiguous: false, exhausted: true, recovering: false }, { kind: 'busy' })
const TOKEN_BUSY: NotificationProblem = { code: BUSY.code!, detail: BUSY.detail!, retry_after_seconds: BUSY.retryAfterSeconds }

/**
 * The first statement of any number of sends. For each, it reads the topic, its Page, the person's
 * window and any earlier request with the Idempotency-Key; then, only when there is none and the
 * Page can send, it inserts the notification: on the window route `pending` with its first attempt
 * counted; on the token route with the person's soonest-expiring token claimed for it in the same
 * statement (`pending`, first attempt counted), or final as `no_token` when they hold none (or
 * `recurring_cooldown`, or nothing yet when their token is busy: Starting's `lastTry`). The
 * notification's id is the caller's, so that the claim can name it. An Idempotency-Key is unique per
 * Page (the topic's). A concurrent request with the same key on the same Page makes the insert fail
 * on the key's unique index: the whole statement, claims included,
 * is undone.
 *
 * Two sends of one statement must not share a person's topic or an Idempotency-Key: both would see
 * the same token (a statement does not skip its own locks) or the same absent key (batchedSteps
 * keeps such sends for the next statement).
 *
 * `limit <the batch's size>` keeps every row and tells the planner how many there are (an unnest
 * of a parameter is otherwise estimated at ten rows).
 */
export async function startSends (db: Database, leaseSeconds: number, items: Starting[], cooldownSeconds = DEFAULT_COOLDOWN_SECONDS): Promise<Started[]> {
  const col = <T>(f: (i: Starting) => T) => items.map(f)
  const { rows } = await sql<StartRow>`
    with input as (
      select * from unnest(
        ${col((i) => i.id)}::uuid[], ${col((i) => i.input.topic_id)}::uuid[], ${col((i) => i.input.psid)}::text[],
        ${col((i) => JSON.stringify(i.input.message))}::jsonb[], ${col((i) => i.input.notification_type ?? 'REGULAR')}::text[],
        ${col((i) => i.input.use_window ?? true)}::boolean[], ${col((i) => i.input.idempotency_key ?? null)}::text[],
        ${col((i) => i.hash)}::text[], ${col((i) => i.input.broadcast_id ?? null)}::uuid[],
        ${col((i) => i.input.messaging_type ?? 'UPDATE')}::text[], ${col((i) => i.input.tag ?? null)}::text[],
        ${col((i) => i.input.token_kind ?? null)}::text[], ${col((i) => i.input.created_by ?? null)}::text[],
        ${col((i) => i.input.pages ? i.input.pages.join(',') : null)}::text[], ${col((i) => i.lastTry ?? false)}::boolean[]
      ) with ordinality as r(id, topic_id, psid, message, notification_type, use_window, idempotency_key, request_hash, broadcast_id,
                             messaging_type, tag, token_kind, created_by, pages, last_try, ord)
      limit ${items.length} -- every row (why: startSends)
    ), ctx as (
      select r.id, r.psid, r.token_kind, t.id as topic_id, t.page_id, t.payload, p.access_token,
             r.use_window and coalesce(s.last_interaction_at > now() - make_interval(secs => ${WINDOW_MS / 1000}), false) as window_open,
             (select n.id from notifications n where n.page_id = t.page_id and n.idempotency_key = r.idempotency_key) as existing_id
        from input r
        join topics t on t.id = r.topic_id and (r.pages is null or t.page_id = any (string_to_array(r.pages, ',')))
        join pages p on p.id = t.page_id
        left join subscribers s on s.page_id = t.page_id and s.psid = r.psid
    ), go as (
      select * from ctx where existing_id is null and access_token is not null
    ), ${claimForStarts('go', leaseSeconds, cooldownSeconds)}, inserted as (
      insert into notifications (id, page_id, topic_id, psid, message, notification_type, use_window, idempotency_key, request_hash,
                                 broadcast_id, messaging_type, tag, token_kind, created_by, route, attempts, token_id, status, error, completed_at)
      select r.id, go.page_id, go.topic_id, r.psid, r.message, r.notification_type, r.use_window, r.idempotency_key, r.request_hash,
             r.broadcast_id, r.messaging_type, r.tag, r.token_kind, r.created_by,
             case when go.window_open then 'window' when c.kind = 'notification_messages' or cl.until is not null then 'recurring' else 'token' end,
             case when go.window_open or c.id is not null then 1 else 0 end,
             c.id,
             case when go.window_open or c.id is not null then 'pending' when b.notification_id is not null or cl.until is not null then 'failed' else 'no_token' end,
             case when go.window_open or c.id is not null then null
                  when b.notification_id is not null then ${JSON.stringify(TOKEN_BUSY)}::jsonb
                  when cl.until is not null then jsonb_build_object(
                    'code', ${COOLING.code}::text, 'detail', ${COOLING.detail}::text,
                    'next_send_at', to_char(cl.until at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                    'retry_after_seconds', greatest(1, ceil(extract(epoch from cl.until - now())))::int)
                  else ${JSON.stringify(NO_TOKEN)}::jsonb end,
             case when go.window_open or c.id is not null then null else now() end
        from go join input r on r.id = go.id left join claim c on c.notification_id = go.id
        left join cooling cl on cl.notification_id = go.id left join busy b on b.notification_id = go.id
       where b.notification_id is null or r.last_try
      returning *
    ), history as (${sendHistory('inserted', null)}
    )
    select r.ord, ctx.topic_id as ctx_topic_id, ctx.page_id as ctx_page_id, ctx.payload as ctx_payload,
           ctx.access_token as ctx_access_token, ctx.existing_id as ctx_existing_id, i.*, c.kind as claim_kind, c.token as claim_token,
           c.expires_at as claim_expires_at, c.lease_expires_at as claim_lease_expires_at, b.notification_id is not null as busy
      from input r left join ctx on ctx.id = r.id left join inserted i on i.id = r.id left join claim c on c.notification_id = r.id
      left join busy b on b.notification_id = r.id`.execute(db)
  const started: Started[] = new Array(items.length)
  for (const row of rows) started[Number(row.ord) - 1] = startedOf(row)
  return started
}

/** One answer row of startSends: the notification's columns (null when none was written) and the rest. */
type StartRow = Partial<Notification> & {
  ord: string
  ctx_topic_id: string | null, ctx_page_id: string | null, ctx_payload: string | null, ctx_access_token: string | null, ctx_existing_id: string | null
  claim_kind: ClaimedToken['kind'] | null, claim_token: string | null, claim_expires_at: Date | null, claim_lease_expires_at: Date | null
  busy: boolean
}

function startedOf (row: StartRow): Started {
  const {
    ord: _ord, ctx_topic_id: topicId, ctx_page_id: pageId, ctx_payload: payload, ctx_access_token: accessToken, ctx_existing_id: existingId,
    claim_kind: kind, claim_token: token, claim_expires_at: expires, claim_lease_expires_at: lease, busy, ...inserted
  } = row
  if (topicId === null) return {}
  const context: SendContext = { topic_id: topicId, page_id: pageId!, payload: payload!, access_token: accessToken, existing_id: existingId }
  if (inserted.id == null) return busy ? { context, busy } : { context }
  const n = inserted as Notification
  if (n.status !== 'pending' || token === null) return { context, n }
  return { context, n, token: { id: n.token_id!, kind: kind!, token, expires_at: expires!, lease_expires_at: lease! } }
}

/**
 * Records outcomes, each with its token's move, in one statement for any number of them. Each is
 * written only if its notification is still `pending` and, when it moves a token, only if that
 * token is still held for it; otherwise nothing of it is written (recovery took it over, and what
 * recovery records stands). Answers, per item in order, the notification as written, or undefined.
 * The items are written in the order of their ids, so that two statements cannot deadlock.
 */
export async function recordOutcomes (db: Database, items: Finishing[], cooldownSeconds = DEFAULT_COOLDOWN_SECONDS): Promise<Array<Notification | undefined>> {
  const sorted = [...items].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
  const col = <T>(f: (i: Finishing) => T) => sorted.map(f)
  const settled = (i: Finishing) => (i.move ? settledOf(i.move.hold, i.move.to) : undefined)
  // Only a recurring token's send moves pacing: a batch of one-time sends plans without it.
  const pacing = sorted.some((i) => settled(i)?.paces !== undefined || settled(i)?.stops === true)
  const { rows } = await sql<Notification>`
    with outcome_input as (
      select * from unnest(
        ${col((i) => i.id)}::uuid[], ${col((i) => i.page_id)}::text[], ${col((i) => i.status)}::text[], ${col((i) => i.route)}::text[],
        ${col((i) => (i.problem ? JSON.stringify(i.problem) : null))}::jsonb[],
        ${col((i) => i.graphMessageId ?? null)}::text[],
        ${col((i) => i.tokenId !== undefined)}::boolean[], ${col((i) => i.tokenId ?? null)}::bigint[],
        ${col((i) => i.tokenState ?? null)}::text[],
        ${col((i) => i.tokensRefused !== undefined)}::boolean[], ${col((i) => i.tokensRefused ?? null)}::int[],
        ${col((i) => i.move?.hold.page_id ?? null)}::text[], ${col((i) => i.move?.hold.token_id ?? null)}::bigint[],
        ${col((i) => i.move?.hold.notification_id ?? null)}::uuid[],
        ${col((i) => settled(i)?.state ?? null)}::text[], ${col((i) => settled(i)?.stops ?? false)}::boolean[],
        ${col((i) => settled(i)?.paces ?? null)}::text[], ${col((i) => i.noRequest ?? false)}::boolean[]
      ) as i(id, page_id, status, route, error, graph_message_id, set_token_id, token_id, token_state,
             set_tokens_refused, tokens_refused, held_page_id, held_token_id, held_by, state_to, stops, paces, no_request)
      limit ${sorted.length} -- every row (why: startSends)
    ), moved as (${settleHolds('outcome_input', cooldownSeconds, pacing)}
    )${pacing ? sql`, paced as (${carryPacing('moved')})` : sql``}, written as (
    update notifications n
       set status = i.status, route = i.route, error = i.error,
           graph_message_id = i.graph_message_id,
           token_id = case when i.set_token_id then i.token_id else n.token_id end,
           token_state = i.token_state,
           tokens_refused = case when i.set_tokens_refused then i.tokens_refused else n.tokens_refused end,
           attempts = case when i.no_request then greatest(n.attempts - 1, 0) else n.attempts end,
           completed_at = now(), updated_at = now()
      from outcome_input i
     where n.page_id = i.page_id and n.id = i.id and n.status = 'pending'
       and (i.held_token_id is null or exists (select 1 from moved m where m.held_by = i.id))
    returning n.*
    ), history as (${sendHistory('written', 'moved')})
    select * from written`.execute(db)
  const written = new Map(rows.map((n) => [n.id, n]))
  return items.map((f) => written.get(f.id))
}

/** One statement each, as they come (tests, tools). */
export function directSteps (db: Database, leaseSeconds: number, cooldownSeconds = DEFAULT_COOLDOWN_SECONDS): SendSteps {
  return {
    start: async (item) => (await startSends(db, leaseSeconds, [item], cooldownSeconds))[0],
    finish: async (item) => (await recordOutcomes(db, [item], cooldownSeconds))[0],
  }
}

/**
 * The group commit of both statements (see GroupCommit), shared by every send of the process: the
 * starts, and the outcomes, that arrive while a statement runs go together into the next one, so
 * that under load one statement and one commit carry several sends. Two starts for the same
 * person's topic or with the same Idempotency-Key never share a statement (see startSends). Each
 * caller still waits until its own step is committed: a token goes to Meta only after its claim
 * is, and a caller is answered only after its outcome is.
 */
export function batchedSteps (db: Database, leaseSeconds: number, maxBatch = 100, maxInFlight = 2, cooldownSeconds = DEFAULT_COOLDOWN_SECONDS): SendSteps {
  const starts = new GroupCommit<Starting, Started>((items) => startSends(db, leaseSeconds, items, cooldownSeconds), maxBatch, maxInFlight, ({ input }) =>
    [`p:${input.topic_id}:${input.psid}`, ...(input.idempotency_key === undefined ? [] : [`k:${input.idempotency_key}`])])
  const outcomes = new GroupCommit<Finishing, Notification | undefined>((items) => recordOutcomes(db, items, cooldownSeconds), maxBatch, maxInFlight)
  return { start: (item) => starts.submit(item), finish: (item) => outcomes.submit(item) }
}

// ---- the send path's smaller statements ----

/**
 * Counts an attempt before it is made (so recovery knows whether anything may have left) and keeps
 * the row fresh for the stale-notification sweep. False when the row is no longer this send's.
 */
export async function beginAttempt (db: Database, n: NotificationRef, route: Route, tokenId?: string): Promise<boolean> {
  const row = await db.updateTable('notifications')
    .set((eb) => ({ attempts: eb('attempts', '+', 1), route, token_id: tokenId ?? null, updated_at: sql`now()` }))
    .where('page_id', '=', n.page_id).where('id', '=', n.id).where('status', '=', 'pending')
    .returning('id').executeTakeFirst()
  return row !== undefined
}

/**
 * Meta refused the held token itself: it becomes `invalid` and the notification counts the refusal,
 * together; nothing moves when recovery took the send over. False then.
 */
export async function refuseHeldToken (db: Database, hold: Hold, refused: number): Promise<boolean> {
  const { rows } = await sql<{ id: string }>`
    with input as (${holdInput(hold, 'invalid')}), moved as (${settleHolds('input', DEFAULT_COOLDOWN_SECONDS, false)}),
    history as (${tokenHistory('moved', 'token_invalid')})
    update notifications set tokens_refused = ${refused}, updated_at = now()
     where page_id = ${hold.page_id} and id = ${hold.notification_id} and status = 'pending' and exists (select 1 from moved)
    returning id`.execute(db)
  return rows.length > 0
}

/** The window was closed after all: the row now reads as a token send, nothing having been delivered. */
export async function switchToTokenRoute (db: Database, n: NotificationRef): Promise<void> {
  await db.updateTable('notifications').set({ route: 'token', updated_at: sql`now()` })
    .where('page_id', '=', n.page_id).where('id', '=', n.id).where('status', '=', 'pending').execute()
}

/** A notification by its key. */
export interface NotificationRef { page_id: string, id: string }

/**
 * A notification by id, on its Page when the caller knows it. Without a Page (GET
 * /v1/notifications/{id}) it is a lookup on every shard once sharded (docs/SCALING.md).
 */
export async function getNotificationRow (db: Database, id: string, pageId?: string): Promise<Notification | undefined> {
  let q = db.selectFrom('notifications').selectAll().where('id', '=', id)
  if (pageId !== undefined) q = q.where('page_id', '=', pageId)
  return q.executeTakeFirst()
}

/** The notification under an Idempotency-Key, which is unique per Page. */
export async function notificationByKey (db: Database, pageId: string, key: string): Promise<Notification | undefined> {
  return db.selectFrom('notifications').selectAll().where('page_id', '=', pageId).where('idempotency_key', '=', key).executeTakeFirst()
}
