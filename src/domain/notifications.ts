import { createHash, randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { sql, type RawBuilder } from 'kysely'
import type { Config } from '../config.js'
import { compiledOnce, type SlotOf } from '../db/compiled.js'
import type { Database } from '../db/database.js'
import { GroupCommit } from '../db/group-commit.js'
import type { GraphError, MessagingType, Notification, NotificationRoute, NotificationStatus, NotificationTokenState } from '../db/types.js'
import type { GraphClient, PageCredentials, SendOutcome } from '../graph/client.js'
import { classifyGraphError, TEMPORARY_RETRY_AFTER_SECONDS, verdictFor, type Verdict } from '../graph/errors.js'
import {
  claimToken, discardPersonTokens, extendLease, heldInput, settleHeld, usable,
  type ClaimedToken, type Reservation, type SettledState,
} from './claims.js'
import { DomainError, notFound, type ErrorKind } from './errors.js'
import { recordPageError } from './pages.js'
import { afterCursor, pageOf } from './pagination.js'
import { WINDOW_MS, windowIsOpen } from './window.js'

/** Tokens one notification may try when Meta refuses them one after another. */
const MAX_TOKENS_PER_NOTIFICATION = 5
/** Logged (warn) for every unanswered attempt of a token send, with its `reason`; the soak counts them by reason. */
export const NO_ANSWER_LOG = 'no answer from the Graph API for a token send'

export type NotificationType = 'REGULAR' | 'SILENT_PUSH' | 'NO_PUSH'

/** How a window send is labelled for Meta: a proactive UPDATE unless the caller says otherwise. */
export interface Labelling {
  messaging_type?: MessagingType
  /** Required with MESSAGE_TAG, refused otherwise. */
  tag?: string
}

/** Checks a caller's messaging_type and tag together (the schema checks each alone). */
export function checkLabelling (input: Labelling): void {
  if (input.messaging_type === 'MESSAGE_TAG' && input.tag === undefined) {
    throw new DomainError('invalid', 'tag_required', 'messaging_type MESSAGE_TAG needs a tag (for example HUMAN_AGENT).')
  }
  if (input.tag !== undefined && input.messaging_type !== 'MESSAGE_TAG') {
    throw new DomainError('invalid', 'tag_without_message_tag', 'A tag is sent only with messaging_type MESSAGE_TAG.')
  }
}

export interface NotificationInput extends Labelling {
  topic_id: string
  psid: string
  message: Record<string, unknown>
  notification_type?: NotificationType
  use_window?: boolean
  /** Same key and body: the stored result, nothing sent again. Same key, other body: 422. */
  idempotency_key?: string
  broadcast_id?: string
}

/** What the caller is told when the send did not end in 201; stored with the notification. */
export interface NotificationProblem {
  code: string
  detail: string
  graph?: GraphError
  retry_after_seconds?: number
}

export interface NotificationView {
  id: string
  topic_id: string | null
  page_id: string
  psid: string
  status: NotificationStatus
  route: NotificationRoute | null
  message: Record<string, unknown>
  notification_type: string
  use_window: boolean
  messaging_type?: MessagingType
  tag?: string
  idempotency_key?: string
  graph_message_id?: string
  error?: NotificationProblem
  http_status?: number
  token_state?: NotificationTokenState
  tokens_refused: number
  attempts: number
  broadcast_id?: string
  created_at: string
  updated_at: string
  completed_at: string | null
}

export function notificationView (n: Notification): NotificationView {
  return {
    id: n.id,
    topic_id: n.topic_id,
    page_id: n.page_id,
    psid: n.psid,
    status: n.status,
    route: n.route,
    message: n.message,
    notification_type: n.notification_type,
    use_window: n.use_window,
    ...(n.messaging_type !== null ? { messaging_type: n.messaging_type } : {}),
    ...(n.tag !== null ? { tag: n.tag } : {}),
    ...(n.idempotency_key !== null ? { idempotency_key: n.idempotency_key } : {}),
    ...(n.graph_message_id !== null ? { graph_message_id: n.graph_message_id } : {}),
    ...(n.error !== null ? { error: n.error as unknown as NotificationProblem } : {}),
    ...(n.http_status !== null ? { http_status: n.http_status } : {}),
    ...(n.token_state !== null ? { token_state: n.token_state } : {}),
    tokens_refused: n.tokens_refused,
    attempts: n.attempts,
    ...(n.broadcast_id !== null ? { broadcast_id: n.broadcast_id } : {}),
    created_at: n.created_at.toISOString(),
    updated_at: n.updated_at.toISOString(),
    completed_at: n.completed_at ? n.completed_at.toISOString() : null,
  }
}

export interface SendResult {
  notification: Notification
  /** 201 when sent; otherwise the status of `problem`. */
  httpStatus: number
  problem?: NotificationProblem
  /** An earlier request with the same Idempotency-Key produced this result. */
  replayed: boolean
}

export interface Logger {
  info (obj: object, msg?: string): void
  warn (obj: object, msg?: string): void
}

export interface SendDeps {
  db: Database
  graph: GraphClient
  config: Pick<Config, 'TOKEN_LEASE_SECONDS' | 'GRAPH_API_MAX_RETRIES' | 'GRAPH_API_TIMEOUT_MS'>
  log?: Logger
  /** Pause between re-sends after an unanswered attempt (tests may shorten it). */
  backoffMs?: (retry: number) => number
  /** The group commit of both statements of a send, shared by the sends of one process; without it each is its own statement. */
  steps?: SendWriter
  /** Told of every notification this process brings to a final status (the otn_notifications_total counter). */
  onFinal?: (n: Notification) => void
}

const kindOfStatus: Record<number, ErrorKind> = {
  400: 'invalid', 404: 'not_found', 409: 'conflict', 422: 'unprocessable', 429: 'throttled', 502: 'upstream', 503: 'unavailable', 504: 'timeout',
}

/** The DomainError a non-201 result is answered with; the recorded attempt rides along. */
export function problemOf (result: SendResult): DomainError {
  const p = result.problem ?? { code: 'notification_failed', detail: 'The notification was not sent.' }
  return new DomainError(kindOfStatus[result.httpStatus] ?? 'upstream', p.code, p.detail, {
    ...(p.graph ? { graph: p.graph } : {}),
    ...(p.retry_after_seconds !== undefined ? { retryAfterSeconds: p.retry_after_seconds } : {}),
    notification: notificationView(result.notification),
  })
}

function resultOf (n: Notification, replayed: boolean): SendResult {
  const httpStatus = n.http_status ?? (n.status === 'sent' ? 201 : 502)
  return {
    notification: n,
    httpStatus,
    ...(httpStatus !== 201 && n.error ? { problem: n.error as unknown as NotificationProblem } : {}),
    replayed,
  }
}

function canonical (value: unknown): unknown {
  if (Array.isArray(value)) return value.map(canonical)
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, canonical((value as Record<string, unknown>)[k])]))
  }
  return value
}

/**
 * Hash of the request as the service understands it (defaults applied, key order ignored). The
 * labelling counts only when it is not the default, so that keys hashed before it existed still match.
 */
export function requestHash (input: NotificationInput): string {
  const labelled = (input.messaging_type ?? 'UPDATE') !== 'UPDATE' || input.tag !== undefined
  const body = {
    topic_id: input.topic_id,
    psid: input.psid,
    message: input.message,
    notification_type: input.notification_type ?? 'REGULAR',
    use_window: input.use_window ?? true,
    ...(labelled ? { messaging_type: input.messaging_type ?? 'UPDATE', tag: input.tag ?? null } : {}),
  }
  return createHash('sha256').update(JSON.stringify(canonical(body))).digest('hex')
}

interface Target { page: PageCredentials, page_id: string, payload: string, topic_id: string | null }

/**
 * Sends one notification: through the 24-hour window when it is open (no token spent), else by
 * claiming and spending exactly one token. Every outcome is recorded on the notification row.
 *
 * The usual send is two statements, each one round trip and one commit: `startSend` (reads the
 * topic, Page and window, claims the token, inserts the notification with its first attempt
 * counted), then, after Meta answers, `finish` (the outcome with the token's transition).
 */
export async function sendNotification (deps: SendDeps, input: NotificationInput): Promise<SendResult> {
  const { db } = deps
  checkLabelling(input)
  const hash = requestHash(input)
  let started: Started | undefined
  try {
    started = await startSend(deps, input, hash)
  } catch (error) {
    if ((error as { code?: string }).code !== '23505' || input.idempotency_key === undefined) throw error
    // Another request with this key won the insert a moment ago (maybe on another instance); this
    // statement, claim included, was undone.
    const winner = await byKey(db, input.idempotency_key)
    if (!winner) throw new DomainError('conflict', 'idempotency_in_progress', 'Try again.', { retryAfterSeconds: 1 })
    return replay(deps, winner, hash)
  }
  const { context, n, token } = started
  if (!context) throw notFound('topic', input.topic_id)
  if (context.existing_id !== null) return replay(deps, await current(db, context.existing_id), hash)
  if (context.access_token === null || !n) {
    throw new DomainError('conflict', 'page_without_access_token',
      `Page ${context.page_id} has no access token; PUT /v1/pages/${context.page_id} with one first.`)
  }
  const target: Target = {
    page: { id: context.page_id, accessToken: context.access_token }, page_id: context.page_id, payload: context.payload, topic_id: context.topic_id,
  }
  let done: Notification
  if (n.status !== 'pending') done = n // no token: recorded final by the same statement
  else if (n.route === 'window') done = await sendThroughWindow(deps, n, target, true) ?? await tokenRoute(deps, n, target)
  else done = await tokenRoute(deps, n, target, { token: token!, ambiguous: false, defer: false, counted: true })
  return resultOf(done, false)
}

interface SendContext {
  topic_id: string
  page_id: string
  payload: string
  access_token: string | null
  existing_id: string | null
}

interface Started {
  /** Undefined: no such topic. */
  context?: SendContext
  /** Undefined when nothing was inserted: an earlier request has the key, or the Page cannot send. */
  n?: Notification
  token?: ClaimedToken
}

const NO_TOKEN: NotificationProblem = { code: 'no_token', detail: 'This person holds no usable token for this topic.' }

/** One send to start: the request, its hash and the id its notification will have. */
export interface Starting { id: string, input: NotificationInput, hash: string }

/** One answer row of writeSteps: a start's (with its context and claim) or an outcome's (the notification alone). */
type StepRow = Partial<Notification> & {
  step: 'start' | 'outcome', ord: string | null,
  ctx_topic_id: string | null, ctx_page_id: string | null, ctx_payload: string | null, access_token: string | null, existing_id: string | null,
  claim_kind: ClaimedToken['kind'] | null, claim_token: string | null, claim_expires_at: Date | null, claim_lease_expires_at: Date | null
}

/**
 * The first statement of a send, one round trip and one commit for any number of sends. For each,
 * it reads the topic, its Page, the person's window and any earlier request with the
 * Idempotency-Key; then, only when there is none and the Page can send, it inserts the
 * notification: on the window route `pending` with its first attempt counted; on the token route
 * with the person's soonest-expiring token claimed for it in the same statement (`pending`, first
 * attempt counted), or final as `no_token` when they hold none. The notification's id is chosen by
 * the caller so that the claim can name it. A concurrent request with the same key makes the insert
 * fail on the key's unique index: the whole statement, claims included, is undone.
 *
 * Two sends of one statement must not share a person's topic or an Idempotency-Key: both would
 * see the same token (a statement does not skip its own locks) or the same absent key. SendWriter
 * keeps such sends for the next statement.
 *
 * This statement and recordOutcomes' are prepared once per connection and should then run on
 * Postgres's generic plan. For the rows of `unnest` over a parameter a generic plan assumes 10,
 * where a custom plan knows the batch (usually a few), so Postgres judged the generic plan dearer
 * and planned recordOutcomes afresh on every execution (a sixth of Postgres's CPU per send).
 * `limit <the batch's size>` keeps every row but makes the generic plan assume one, so that it
 * (index lookups per row, right for 1 to 100) is chosen after the first five runs.
 * test/domain/plan-cache.test.ts holds both statements to it.
 */
export async function startSends (db: Database, leaseSeconds: number, items: Starting[]): Promise<Started[]> {
  return (await writeSteps(db, leaseSeconds, items, [])).started
}

/** startSends' statement as CTEs (its rows in `input` ... `inserted`) and the select of its answer rows. */
function startParts (slot: SlotOf<StepInput>) {
  const col = <T>(f: (i: Starting) => T) => slot((s) => s.starts.map(f))
  const ctes = sql`
    input as (
      select * from unnest(
        ${col((i) => i.id)}::uuid[], ${col((i) => i.input.topic_id)}::uuid[], ${col((i) => i.input.psid)}::text[],
        ${col((i) => JSON.stringify(i.input.message))}::jsonb[], ${col((i) => i.input.notification_type ?? 'REGULAR')}::text[],
        ${col((i) => i.input.use_window ?? true)}::boolean[], ${col((i) => i.input.idempotency_key ?? null)}::text[],
        ${col((i) => i.hash)}::text[], ${col((i) => i.input.broadcast_id ?? null)}::uuid[],
        ${col((i) => i.input.messaging_type ?? 'UPDATE')}::text[], ${col((i) => i.input.tag ?? null)}::text[]
      ) with ordinality as r(id, topic_id, psid, message, notification_type, use_window, idempotency_key, request_hash, broadcast_id,
                             messaging_type, tag, ord)
      limit ${slot((s) => s.starts.length)} -- every row (why: startSends)
    ), ctx as (
      select r.id, r.psid, t.id as topic_id, t.page_id, t.payload, p.access_token,
             r.use_window and coalesce(s.last_interaction_at > now() - make_interval(secs => ${WINDOW_MS / 1000}), false) as window_open,
             (select n.id from notifications n where n.idempotency_key = r.idempotency_key) as existing_id
        from input r
        join topics t on t.id = r.topic_id
        join pages p on p.id = t.page_id
        left join subscribers s on s.page_id = t.page_id and s.psid = r.psid
    ), go as (
      select * from ctx where existing_id is null and access_token is not null
    ), pick as (
      select go.id as notification_id, o.id
        from go cross join lateral (
          select o.id from optin_tokens o
           where not go.window_open
             and o.page_id = go.page_id and o.payload = go.payload and o.psid = go.psid
             and o.kind = 'one_time_notif' and ${usable('o')} and o.expires_at > now()
           order by o.expires_at
           limit 1
           for update of o skip locked) o
    ), claim as (
      update optin_tokens o
         set lease_expires_at = now() + make_interval(secs => ${slot((s) => s.leaseSeconds)}),
             notification_id = pick.notification_id,
             updated_at = now()
        from pick
       where o.id = pick.id
      returning o.id, o.notification_id, o.kind, o.token, o.expires_at, o.lease_expires_at
    ), inserted as (
      insert into notifications (id, page_id, topic_id, psid, message, notification_type, use_window, idempotency_key, request_hash,
                                 broadcast_id, messaging_type, tag, route, attempts, token_id, status, http_status, error, completed_at)
      select r.id, go.page_id, go.topic_id, r.psid, r.message, r.notification_type, r.use_window, r.idempotency_key, r.request_hash,
             r.broadcast_id, r.messaging_type, r.tag,
             case when go.window_open then 'window' else 'token' end,
             case when go.window_open or c.id is not null then 1 else 0 end,
             c.id,
             case when go.window_open or c.id is not null then 'pending' else 'no_token' end,
             case when go.window_open or c.id is not null then null else 409 end,
             case when go.window_open or c.id is not null then null else ${JSON.stringify(NO_TOKEN)}::jsonb end,
             case when go.window_open or c.id is not null then null else now() end
        from go join input r on r.id = go.id left join claim c on c.notification_id = go.id
      returning *
    )`
  const select = sql`
    select 'start' as step, r.ord, ctx.topic_id as ctx_topic_id, ctx.page_id as ctx_page_id, ctx.payload as ctx_payload,
           ctx.access_token, ctx.existing_id, i.*, c.kind as claim_kind, c.token as claim_token,
           c.expires_at as claim_expires_at, c.lease_expires_at as claim_lease_expires_at
      from input r left join ctx on ctx.id = r.id left join inserted i on i.id = r.id left join claim c on c.notification_id = r.id`
  return { ctes, select }
}

/** The row's own part (a notification's columns, all null when none was written) and the rest. */
function split (row: StepRow) {
  const {
    step: _step, ord: _ord, ctx_topic_id: topicId, ctx_page_id: pageId, ctx_payload: payload, access_token: accessToken, existing_id: existingId,
    claim_kind: kind, claim_token: token, claim_expires_at: expires, claim_lease_expires_at: lease, ...inserted
  } = row
  return { topicId, pageId, payload, accessToken, existingId, kind, token, expires, lease, inserted }
}

function startedOf (row: StepRow): Started {
  const { topicId, pageId, payload, accessToken, existingId, kind, token, expires, lease, inserted } = split(row)
  if (topicId === null) return {}
  const context: SendContext = { topic_id: topicId, page_id: pageId!, payload: payload!, access_token: accessToken, existing_id: existingId }
  if (inserted.id == null) return { context }
  const n = inserted as Notification
  if (n.status !== 'pending' || token === null) return { context, n }
  return { context, n, token: { id: n.token_id!, kind: kind!, token, expires_at: expires!, lease_expires_at: lease! } }
}

async function startSend (deps: SendDeps, input: NotificationInput, hash: string): Promise<Started> {
  const item: Starting = { id: randomUUID(), input, hash }
  const started = deps.steps ? await deps.steps.start(item) : (await startSends(deps.db, deps.config.TOKEN_LEASE_SECONDS, [item]))[0]
  const n = started.n
  if (n && n.status !== 'pending') {
    deps.onFinal?.(n)
    deps.log?.info({ notification_id: n.id, status: n.status, route: n.route, attempts: n.attempts }, `notification ${n.status}`)
  }
  return started
}

async function byKey (db: Database, key: string): Promise<Notification | undefined> {
  return db.selectFrom('notifications').selectAll().where('idempotency_key', '=', key).executeTakeFirst()
}

async function replay (deps: SendDeps, existing: Notification, hash: string): Promise<SendResult> {
  if (existing.request_hash !== hash) {
    throw new DomainError('unprocessable', 'idempotency_conflict',
      'This Idempotency-Key was used with a different request body; use a new key for a new notification.',
      { notification: notificationView(existing) })
  }
  let current = existing
  // The first request is still sending: wait for its outcome rather than send again.
  const { GRAPH_API_TIMEOUT_MS: timeout, GRAPH_API_MAX_RETRIES: retries } = deps.config
  const deadline = Date.now() + Math.min(60_000, (retries + 1) * (timeout + 2_000) + 1_000)
  let pause = 20
  while (current.status === 'pending' && Date.now() < deadline) {
    await sleep(pause)
    pause = Math.min(250, pause * 2)
    current = await getNotificationRow(deps.db, existing.id) ?? current
  }
  if (current.status === 'pending') {
    throw new DomainError('conflict', 'idempotency_in_progress',
      'A request with this Idempotency-Key is still being sent; ask again shortly for its outcome.',
      { retryAfterSeconds: 1, notification: notificationView(current) })
  }
  return resultOf(current, true)
}

/** The window route first when it applies, then the token route; returns the final row. */
async function deliver (deps: SendDeps, n: Notification, target: Target): Promise<Notification> {
  if (n.use_window) {
    const subscriber = await deps.db.selectFrom('subscribers').select('last_interaction_at')
      .where('page_id', '=', n.page_id).where('psid', '=', n.psid).executeTakeFirst()
    if (windowIsOpen(subscriber?.last_interaction_at ?? null)) {
      const finished = await sendThroughWindow(deps, n, target)
      if (finished) return finished
    }
  }
  return tokenRoute(deps, n, target)
}

/**
 * Undefined when Meta says the window is closed after all (clock skew): the token route follows.
 * `counted`: the row was inserted with its first attempt already counted.
 */
async function sendThroughWindow (deps: SendDeps, n: Notification, target: Target, counted = false): Promise<Notification | undefined> {
  const body = {
    recipient: { id: n.psid },
    messaging_type: n.messaging_type ?? 'UPDATE',
    ...(n.tag !== null ? { tag: n.tag } : {}),
    notification_type: n.notification_type,
    message: n.message,
  }
  // A standard message has no token to make Meta refuse a second delivery, so only a request that
  // never left (connection refused) is sent again; a lost answer is recorded as unconfirmed.
  for (let attempt = 0; ; attempt++) {
    if (attempt > 0) await pause(deps, attempt)
    if (!(attempt === 0 && counted) && !(await beginAttempt(deps, n.id, 'window'))) return current(deps.db, n.id)
    const outcome = await deps.graph.sendMessage(target.page, body)
    if (outcome.kind === 'ok') {
      return finish(deps, n.id, { status: 'sent', route: 'window', httpStatus: 201, graphMessageId: outcome.messageId })
    }
    if (outcome.kind === 'graph_error') {
      const verdict = verdictFor(classifyGraphError(outcome.httpStatus, outcome.error), 'window')
      if (verdict.action === 'fallback') {
        deps.log?.info({ notification_id: n.id, graph_code: outcome.error.code, graph_subcode: outcome.error.subcode },
          'window closed at Meta; falling back to a token')
        // Nothing was delivered: the row must not read as an interrupted window send.
        await deps.db.updateTable('notifications').set({ route: 'token', updated_at: sql`now()` })
          .where('id', '=', n.id).where('status', '=', 'pending').execute()
        return undefined
      }
      if (verdict.pageUnhealthy) await recordPageError(deps.db, n.page_id, outcome.error)
      return finish(deps, n.id, { status: 'failed', route: 'window', ...refusal(verdict, outcome.error) })
    }
    if (outcome.sent) {
      return finish(deps, n.id, { status: 'unconfirmed', route: 'window', ...unconfirmed(outcome) })
    }
    if (attempt >= deps.config.GRAPH_API_MAX_RETRIES) {
      return finish(deps, n.id, { status: 'failed', route: 'window', ...unreachable(outcome, 'window') })
    }
  }
}

/** Outcome of spending one claimed token (with its re-sends). */
type TokenOutcome =
  | { kind: 'sent', messageId: string | null }
  | { kind: 'refused', verdict: Verdict, error: GraphError }
  | { kind: 'unconfirmed', outcome: SendOutcome }
  | { kind: 'unreachable', outcome: SendOutcome & { kind: 'no_answer' } }
  | { kind: 'lost' }
  | { kind: 'deferred' }

interface Resumed {
  token: ClaimedToken
  /** An earlier attempt of this notification may have delivered it. */
  ambiguous: boolean
  /** Lease recovery: one send now, and a still-ambiguous transient outcome waits for the next sweep. */
  defer: boolean
  /** The claim counted the first attempt already (sendNotification's insert). */
  counted?: boolean
}

async function tokenRoute (deps: SendDeps, n: Notification, target: Target, resumed?: Resumed): Promise<Notification> {
  let refused = n.tokens_refused // a recovered send goes on counting from its earlier refusals
  let lastRefusal: GraphError | undefined
  let next = resumed
  for (let i = 0; i < MAX_TOKENS_PER_NOTIFICATION; i++) {
    const claimed = next?.token ?? await claimToken(deps.db, {
      page_id: target.page_id, payload: target.payload, psid: n.psid, notification_id: n.id, leaseSeconds: deps.config.TOKEN_LEASE_SECONDS,
    })
    const spend: SpendOptions = next
      ? { ambiguous: next.ambiguous, sends: next.defer ? 1 : deps.config.GRAPH_API_MAX_RETRIES + 1, defer: next.defer, counted: next.counted ?? false }
      : { ambiguous: false, sends: deps.config.GRAPH_API_MAX_RETRIES + 1, defer: false, counted: false }
    next = undefined
    if (!claimed) {
      return finish(deps, n.id, {
        status: 'no_token', route: 'token', httpStatus: 409, tokensRefused: refused,
        problem: {
          code: 'no_token',
          detail: refused > 0
            ? `Meta refused ${refused} token(s) this person held for the topic; none is left.`
            : 'This person holds no usable token for this topic.',
          ...(lastRefusal ? { graph: lastRefusal } : {}),
        },
      })
    }
    const reservation = { token_id: claimed.id, notification_id: n.id }
    const outcome = await spendToken(deps, n, target, claimed, spend)
    switch (outcome.kind) {
      case 'lost':
      case 'deferred':
        return current(deps.db, n.id)
      case 'sent':
        return finish(deps, n.id, {
          status: 'sent', route: 'token', httpStatus: 201, graphMessageId: outcome.messageId, tokenId: claimed.id,
          tokenState: 'used', tokensRefused: refused,
        }, { reservation, to: 'used' })
      case 'unconfirmed':
        return finish(deps, n.id, {
          status: 'unconfirmed', route: 'token', tokenId: claimed.id, tokenState: 'unconfirmed', tokensRefused: refused,
          ...unconfirmed(outcome.outcome),
        }, { reservation, to: 'unconfirmed' })
      case 'unreachable':
        return finish(deps, n.id, {
          status: 'failed', route: 'token', tokenId: claimed.id, tokenState: 'released', tokensRefused: refused,
          ...unreachable(outcome.outcome, 'token'),
        }, { reservation, to: 'available' })
      case 'refused': {
        const { verdict, error } = outcome
        if (verdict.action === 'invalidate') {
          // The token and the count move together; nothing moves when recovery took the token over.
          const { rows: [counted] } = await sql<{ id: string }>`
            with input as (${heldInput(reservation, 'invalid')}), moved as (${settleHeld('input')})
            update notifications set tokens_refused = ${refused + 1}, updated_at = now()
             where id = ${n.id} and status = 'pending' and exists (select 1 from moved)
            returning id`.execute(deps.db)
          if (!counted) return current(deps.db, n.id)
          refused++
          lastRefusal = error
          deps.log?.info({ notification_id: n.id, token_id: claimed.id, graph_code: error.code, graph_subcode: error.subcode },
            'Meta refused the token; trying the next one')
          continue
        }
        if (verdict.pageUnhealthy) await recordPageError(deps.db, n.page_id, error)
        if (verdict.action === 'stop' || verdict.action === 'set_aside') {
          // Set aside: this token only, the attempt ends. Stop: the person's others on the topic go too.
          return finish(deps, n.id, {
            status: 'failed', route: 'token', tokenId: claimed.id, tokenState: 'invalid', tokensRefused: refused + 1, ...refusal(verdict, error),
          }, {
            reservation,
            to: 'invalid',
            ...(verdict.action === 'stop' ? { discardOthers: { page_id: target.page_id, payload: target.payload, psid: n.psid } } : {}),
          })
        }
        return finish(deps, n.id, {
          status: 'failed', route: 'token', tokenId: claimed.id, tokenState: 'released', tokensRefused: refused, ...refusal(verdict, error),
        }, { reservation, to: 'available' })
      }
    }
  }
  return finish(deps, n.id, {
    status: 'failed', route: 'token', httpStatus: 502, tokensRefused: refused,
    problem: {
      code: 'graph_token_refused',
      detail: `Meta refused ${refused} tokens in a row; stopped trying so as not to burn more. Check the message and the Page.`,
      ...(lastRefusal ? { graph: lastRefusal } : {}),
    },
  })
}

interface SpendOptions { ambiguous: boolean, sends: number, defer: boolean, counted: boolean }

/**
 * Sends one claimed token, re-sending the same token after an unanswered attempt. Meta accepts a
 * token once, so a re-send can never deliver twice; but once an attempt went unanswered, the
 * token may be spent, so the outcome is then `sent` or `unconfirmed`, never a release.
 */
async function spendToken (deps: SendDeps, n: Notification, target: Target, claimed: ClaimedToken, opts: SpendOptions): Promise<TokenOutcome> {
  const body = {
    recipient: claimed.kind === 'one_time_notif'
      ? { one_time_notif_token: claimed.token }
      : { notification_messages_token: claimed.token },
    messaging_type: 'UPDATE',
    notification_type: n.notification_type,
    message: n.message,
  }
  const reservation = { token_id: claimed.id, notification_id: n.id }
  let ambiguous = opts.ambiguous
  let last: SendOutcome | undefined
  for (let attempt = 0; attempt < opts.sends; attempt++) {
    if (attempt > 0) await pause(deps, attempt)
    if (attempt > 0 && !(await extendLease(deps.db, reservation, deps.config.TOKEN_LEASE_SECONDS))) return { kind: 'lost' }
    if (!(attempt === 0 && opts.counted) && !(await beginAttempt(deps, n.id, 'token', claimed.id))) return { kind: 'lost' }
    last = await deps.graph.sendMessage(target.page, body)
    if (last.kind === 'ok') return { kind: 'sent', messageId: last.messageId }
    if (last.kind === 'graph_error') {
      const verdict = verdictFor(classifyGraphError(last.httpStatus, last.error), 'token')
      if (!ambiguous) return { kind: 'refused', verdict, error: last.error }
      // After a lost answer only a passing failure is worth another try; any other refusal
      // ("already used" included: our own earlier attempt may have arrived) settles it unconfirmed.
      if (isTransient(last)) continue
      if (verdict.pageUnhealthy) await recordPageError(deps.db, n.page_id, last.error)
      return { kind: 'unconfirmed', outcome: last }
    }
    if (last.sent) ambiguous = true
    deps.log?.warn({ notification_id: n.id, token_id: claimed.id, attempt: attempt + 1, reason: last.reason, retrying: attempt + 1 < opts.sends },
      NO_ANSWER_LOG)
  }
  if (ambiguous && opts.defer && isTransient(last!)) return { kind: 'deferred' }
  if (ambiguous) return { kind: 'unconfirmed', outcome: last! }
  return { kind: 'unreachable', outcome: last as SendOutcome & { kind: 'no_answer' } }
}

function isTransient (outcome: SendOutcome): boolean {
  if (outcome.kind === 'no_answer') return true
  if (outcome.kind !== 'graph_error') return false
  const cls = classifyGraphError(outcome.httpStatus, outcome.error)
  return cls === 'temporary' || cls === 'rate_limited'
}

const TOKEN_NOTE: Partial<Record<Verdict['action'], string>> = {
  release: ' The token is kept for a later send.',
  set_aside: '',
  stop: ' The token is spent and the person\'s other tokens on this topic are discarded.',
}

function refusal (verdict: Verdict, error: GraphError): { httpStatus: number, problem: NotificationProblem } {
  return {
    httpStatus: verdict.httpStatus,
    problem: {
      code: verdict.problemCode,
      detail: `${verdict.detail}${TOKEN_NOTE[verdict.action] ?? ''} Meta said: ${error.message}`,
      graph: error,
      ...(verdict.retryAfterSeconds !== undefined ? { retry_after_seconds: verdict.retryAfterSeconds } : {}),
    },
  }
}

function unconfirmed (outcome: SendOutcome): { httpStatus: number, problem: NotificationProblem } {
  return {
    httpStatus: 504,
    problem: {
      code: 'graph_unconfirmed',
      detail: 'The Graph API did not answer (or answered only after a lost attempt): the message may or may not have been delivered. ' +
        'It is not sent again; any token it used is set aside as unconfirmed.',
      ...(outcome.kind === 'graph_error' ? { graph: outcome.error } : {}),
    },
  }
}

function unreachable (outcome: SendOutcome & { kind: 'no_answer' }, route: NotificationRoute): { httpStatus: number, problem: NotificationProblem } {
  return {
    httpStatus: 503,
    problem: {
      code: 'graph_unreachable',
      detail: `The Graph API could not be reached (${outcome.detail}); nothing was sent${route === 'token' ? ' and the token is kept' : ''}.`,
      retry_after_seconds: TEMPORARY_RETRY_AFTER_SECONDS,
    },
  }
}

async function pause (deps: SendDeps, retry: number): Promise<void> {
  const ms = deps.backoffMs ? deps.backoffMs(retry) : Math.min(2_000, 100 * 2 ** (retry - 1)) * (0.5 + Math.random() / 2)
  if (ms > 0) await sleep(ms)
}

/**
 * Counts the attempt before it is made (so lease recovery knows whether anything may have left)
 * and keeps the row fresh for the stale-notification sweep. False when the row is no longer ours.
 */
async function beginAttempt (deps: SendDeps, id: string, route: NotificationRoute, tokenId?: string): Promise<boolean> {
  const row = await deps.db.updateTable('notifications')
    .set((eb) => ({ attempts: eb('attempts', '+', 1), route, token_id: tokenId ?? null, updated_at: sql`now()` }))
    .where('id', '=', id).where('status', '=', 'pending')
    .returning('id').executeTakeFirst()
  return row !== undefined
}

interface Outcome {
  status: Exclude<NotificationStatus, 'pending'>
  route: NotificationRoute
  httpStatus: number
  problem?: NotificationProblem
  graphMessageId?: string | null
  tokenId?: string
  tokenState?: NotificationTokenState
  tokensRefused?: number
}

/** The claimed token's move that goes with an outcome. */
interface TokenMove {
  reservation: Reservation
  to: SettledState
}

/** A move as finish takes it; `discardOthers`: the person stopped the topic. */
interface TokenTransition extends TokenMove {
  discardOthers?: { page_id: string, payload: string, psid: string }
}

/** One outcome to record, with the claimed token's move when there is one. */
export interface Finishing {
  id: string
  outcome: Outcome
  transition?: TokenMove
}

/**
 * Records outcomes, each together with its token's transition, in one statement (one commit) for
 * any number of them. Each outcome is written only if its notification is still `pending` and,
 * when it moves a token, only if that token is still reserved for it; otherwise nothing of it is
 * written (lease recovery took it over, and what recovery records stands). Answers, per item in
 * order, the notification as written, or undefined where nothing was.
 */
export async function recordOutcomes (db: Database, items: Finishing[]): Promise<Array<Notification | undefined>> {
  return (await writeSteps(db, 0, [], items)).finished
}

/** recordOutcomes' statement as CTEs (the notifications written in `finished`) and the select of its answer rows. */
function outcomeParts (slot: SlotOf<StepInput>) {
  const col = <T>(f: (i: Finishing) => T) => slot((s) => s.finishes.map(f))
  const ctes = sql`
    outcome_input as (
      select * from unnest(
        ${col((i) => i.id)}::uuid[], ${col((i) => i.outcome.status)}::text[], ${col((i) => i.outcome.route)}::text[],
        ${col((i) => i.outcome.httpStatus)}::int[], ${col((i) => (i.outcome.problem ? JSON.stringify(i.outcome.problem) : null))}::jsonb[],
        ${col((i) => i.outcome.graphMessageId ?? null)}::text[],
        ${col((i) => i.outcome.tokenId !== undefined)}::boolean[], ${col((i) => i.outcome.tokenId ?? null)}::bigint[],
        ${col((i) => i.outcome.tokenState ?? null)}::text[],
        ${col((i) => i.outcome.tokensRefused !== undefined)}::boolean[], ${col((i) => i.outcome.tokensRefused ?? null)}::int[],
        ${col((i) => i.transition?.reservation.token_id ?? null)}::bigint[],
        ${col((i) => i.transition?.reservation.notification_id ?? null)}::uuid[],
        ${col((i) => i.transition?.to ?? null)}::text[]
      ) as i(id, status, route, http_status, error, graph_message_id, set_token_id, token_id, token_state,
             set_tokens_refused, tokens_refused, held_token_id, held_by, token_to)
      limit ${slot((s) => s.finishes.length)} -- every row (why: startSends)
    ), moved as (${settleHeld('outcome_input')}
    ), finished as (
      update notifications n
         set status = i.status, route = i.route, http_status = i.http_status, error = i.error,
             graph_message_id = i.graph_message_id,
             token_id = case when i.set_token_id then i.token_id else n.token_id end,
             token_state = i.token_state,
             tokens_refused = case when i.set_tokens_refused then i.tokens_refused else n.tokens_refused end,
             completed_at = now(), updated_at = now()
        from outcome_input i
       where n.id = i.id and n.status = 'pending'
         and (i.held_token_id is null or exists (select 1 from moved m where m.held_by = i.id))
      returning n.*
    )`
  // The same columns as startParts' select, so that the two can be one answer.
  const select = sql`
    select 'outcome' as step, null::bigint as ord, null::uuid as ctx_topic_id, null::text as ctx_page_id, null::text as ctx_payload,
           null::text as access_token, null::uuid as existing_id, f.*, null::text as claim_kind, null::text as claim_token,
           null::timestamptz as claim_expires_at, null::timestamptz as claim_lease_expires_at
      from finished f`
  return { ctes, select }
}

/** What the statements of writeSteps read their parameters from; `finishes` in the order of their ids. */
interface StepInput { leaseSeconds: number, starts: Starting[], finishes: Finishing[] }

function stepStatement (parts: Array<{ ctes: RawBuilder<unknown>, select: RawBuilder<unknown> }>): RawBuilder<StepRow> {
  return sql<StepRow>`
    with ${sql.join(parts.map((p) => p.ctes))}
    ${sql.join(parts.map((p) => p.select), sql` union all `)}`
}

/** writeSteps' three statements, each built and compiled once (see compiledOnce). */
const START_STEP = compiledOnce((slot: SlotOf<StepInput>) => stepStatement([startParts(slot)]))
const OUTCOME_STEP = compiledOnce((slot: SlotOf<StepInput>) => stepStatement([outcomeParts(slot)]))
const BOTH_STEPS = compiledOnce((slot: SlotOf<StepInput>) => stepStatement([startParts(slot), outcomeParts(slot)]))

/**
 * Starts and outcomes in one statement, one round trip and one commit: startSends' part for
 * `starts` and recordOutcomes' for `finishes` (either may be empty), each as it would be alone.
 * They cannot meet on a row: a start claims only available tokens and inserts new notifications,
 * an outcome moves only a token reserved for its own (pending) notification.
 */
export async function writeSteps (db: Database, leaseSeconds: number, starts: Starting[], finishes: Finishing[])
  : Promise<{ started: Started[], finished: Array<Notification | undefined> }> {
  const statement = starts.length > 0 ? (finishes.length > 0 ? BOTH_STEPS : START_STEP) : (finishes.length > 0 ? OUTCOME_STEP : undefined)
  if (!statement) return { started: [], finished: [] }
  // One order for the row locks of every statement, so that two statements cannot deadlock.
  const sorted = [...finishes].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
  const { rows } = await statement(db, { leaseSeconds, starts, finishes: sorted })
  const started: Started[] = new Array(starts.length)
  const written = new Map<string, Notification>()
  for (const row of rows) {
    if (row.step === 'start') {
      started[Number(row.ord) - 1] = startedOf(row)
    } else {
      const n = split(row).inserted as Notification
      written.set(n.id, n)
    }
  }
  return { started, finished: finishes.map((f) => written.get(f.id)) }
}

/**
 * The group commit of a send's two statements (see GroupCommit and writeSteps): the sends that
 * start, and those that Meta answered, while a statement runs go together into the next one, so
 * that under load one statement and one commit carry both steps of several sends. Two starts for
 * the same person's topic or with the same Idempotency-Key never share a statement (see
 * startSends). Each caller still waits until its own step is committed: a token goes to Meta only
 * after its claim is, and a caller is answered only after its outcome is.
 */
export class SendWriter {
  private readonly group: GroupCommit<{ start: Starting } | { finish: Finishing }, Started | Notification | undefined>

  constructor (db: Database, leaseSeconds: number, maxBatch = 100, maxInFlight = 2) {
    this.group = new GroupCommit(async (steps) => {
      const starts: Starting[] = []
      const finishes: Finishing[] = []
      for (const step of steps) {
        if ('start' in step) starts.push(step.start)
        else finishes.push(step.finish)
      }
      const { started, finished } = await writeSteps(db, leaseSeconds, starts, finishes)
      let s = 0
      let f = 0
      return steps.map((step) => ('start' in step ? started[s++] : finished[f++]))
    }, maxBatch, maxInFlight, (step) => {
      if (!('start' in step)) return []
      const { input } = step.start
      return [`p:${input.topic_id}:${input.psid}`, ...(input.idempotency_key === undefined ? [] : [`k:${input.idempotency_key}`])]
    })
  }

  /** Starts one send (startSends' step): resolves once its statement has committed. */
  start (item: Starting): Promise<Started> {
    return this.group.submit({ start: item }) as Promise<Started>
  }

  /** Records one outcome (recordOutcomes' step): resolves once its statement has committed. */
  finish (item: Finishing): Promise<Notification | undefined> {
    return this.group.submit({ finish: item }) as Promise<Notification | undefined>
  }
}

/**
 * Records the outcome together with the token's transition, in one statement (through the
 * group commit when the caller has one), only if this process still holds both; otherwise the
 * outcome someone else recorded (lease recovery) stands.
 */
async function finish (deps: SendDeps, id: string, outcome: Outcome, transition?: TokenTransition): Promise<Notification> {
  const item: Finishing = { id, outcome, transition }
  let row: Notification | undefined
  if (transition?.discardOthers) {
    // Rare (the person stopped the topic): their other tokens go with this outcome, in one transaction.
    const others = transition.discardOthers
    row = await deps.db.transaction().execute(async (trx) => {
      const [written] = await recordOutcomes(trx, [item])
      if (written) await discardPersonTokens(trx, others).execute()
      return written
    })
  } else {
    row = deps.steps ? await deps.steps.finish(item) : (await recordOutcomes(deps.db, [item]))[0]
  }
  if (row) deps.onFinal?.(row)
  const final = row ?? await current(deps.db, id)
  deps.log?.info({
    notification_id: id, status: final.status, route: final.route, attempts: final.attempts,
    ...(outcome.problem?.graph ? { graph_code: outcome.problem.graph.code, graph_subcode: outcome.problem.graph.subcode } : {}),
    ...(row ? {} : { superseded: true }),
  }, `notification ${final.status}`)
  return final
}

async function current (db: Database, id: string): Promise<Notification> {
  return (await getNotificationRow(db, id))!
}

export async function getNotificationRow (db: Database, id: string): Promise<Notification | undefined> {
  return db.selectFrom('notifications').selectAll().where('id', '=', id).executeTakeFirst()
}

export async function getNotification (db: Database, id: string): Promise<Notification> {
  const n = await getNotificationRow(db, id)
  if (!n) throw notFound('notification', id)
  return n
}

export interface NotificationFilter {
  topic_id?: string
  page_id?: string
  psid?: string
  status?: NotificationStatus
  created_after?: string
  created_before?: string
  limit: number
  cursor?: string
}

/** Oldest first, keyset-paginated: a walk through the pages never skips a row, even while sends go on. */
export async function listNotifications (db: Database, f: NotificationFilter) {
  let q = db.selectFrom('notifications').selectAll().where(afterCursor('notifications', f.cursor))
  if (f.topic_id !== undefined) q = q.where('topic_id', '=', f.topic_id)
  if (f.page_id !== undefined) q = q.where('page_id', '=', f.page_id)
  if (f.psid !== undefined) q = q.where('psid', '=', f.psid)
  if (f.status !== undefined) q = q.where('status', '=', f.status)
  if (f.created_after !== undefined) q = q.where('created_at', '>=', new Date(f.created_after))
  if (f.created_before !== undefined) q = q.where('created_at', '<', new Date(f.created_before))
  const rows = await q.orderBy('created_at').orderBy('id').limit(f.limit + 1).execute()
  return pageOf(rows, f.limit)
}

/**
 * For lease recovery: continue a notification whose process died, from its reserved token.
 * With `defer`, a token that may already be spent gets one send now; if Meta is down or
 * throttling, the reservation waits for the next sweep instead of being written off.
 */
export async function resumeWithToken (deps: SendDeps, n: Notification, token: ClaimedToken & { page_id: string, payload: string },
  opts: { mayHaveBeenSent: boolean, defer: boolean }): Promise<Notification> {
  const mayHaveBeenSent = opts.mayHaveBeenSent
  const target = await targetOf(deps.db, n, token)
  if ('missing' in target) {
    const r: Reservation = { token_id: token.id, notification_id: n.id }
    return mayHaveBeenSent
      ? finish(deps, n.id, { status: 'unconfirmed', route: 'token', tokenId: token.id, tokenState: 'unconfirmed', httpStatus: 504, problem: target.missing }, { reservation: r, to: 'unconfirmed' })
      : finish(deps, n.id, { status: 'failed', route: 'token', tokenId: token.id, tokenState: 'released', httpStatus: 409, problem: target.missing }, { reservation: r, to: 'available' })
  }
  return tokenRoute(deps, n, target, { token, ambiguous: mayHaveBeenSent, defer: opts.defer })
}

/** For lease recovery: run again a notification whose process died before it reserved anything. */
export async function resumeFromStart (deps: SendDeps, n: Notification): Promise<Notification> {
  if (n.route === 'window' && n.attempts > 0) {
    // A standard message may have arrived; sending it again could deliver it twice.
    return finish(deps, n.id, {
      status: 'unconfirmed', route: 'window', httpStatus: 504,
      problem: { code: 'graph_unconfirmed', detail: 'The process sending this message stopped before Meta answered; it may or may not have been delivered.' },
    })
  }
  const target = await targetOf(deps.db, n)
  if ('missing' in target) return finish(deps, n.id, { status: 'failed', route: n.route ?? 'token', httpStatus: 409, problem: target.missing })
  return deliver(deps, n, target)
}

async function targetOf (db: Database, n: Notification, token?: { page_id: string, payload: string }): Promise<Target | { missing: NotificationProblem }> {
  const topic = n.topic_id === null
    ? undefined
    : await db.selectFrom('topics').select(['page_id', 'payload']).where('id', '=', n.topic_id).executeTakeFirst()
  const where = token ?? topic
  if (!where) return { missing: { code: 'topic_not_found', detail: `Topic ${n.topic_id} no longer exists.` } }
  const page = await db.selectFrom('pages').select(['id', 'access_token']).where('id', '=', n.page_id).executeTakeFirst()
  if (!page?.access_token) {
    return { missing: { code: 'page_without_access_token', detail: `Page ${n.page_id} has no access token.` } }
  }
  return { page: { id: page.id, accessToken: page.access_token }, page_id: where.page_id, payload: where.payload, topic_id: n.topic_id }
}
