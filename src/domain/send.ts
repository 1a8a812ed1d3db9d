/**
 * The one send path. API sends, broadcast sends and lease recovery all come through here: the
 * window first when it is open, else exactly one token; every answer from Meta is taken to the
 * lifecycle table (lifecycle.ts) for what it means, and every write goes through SendSteps.
 */
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Config } from '../config.js'
import type { Database } from '../db/database.js'
import { SecretUnreadableError, tryOpenSecret } from '../crypto/secret-box.js'
import type { Notification } from '../db/types.js'
import type { GraphClient, PageCredentials, SendOutcome } from '../graph/client.js'
import { classifyGraphError, type GraphError } from '../graph/errors.js'
import { DomainError, notFound } from './errors.js'
import { keyRace, replayOf } from './idempotency.js'
import {
  decide, MAX_TOKENS_PER_NOTIFICATION, RESEND_AFTER_NO_ANSWER, routeOf, type Decision, type Route, type SendEvent, type SendSituation,
} from './lifecycle.js'
import { checkLabelling, notificationHash, type NotificationInput } from './notifications.js'
import { recordPageError } from './pages.js'
import {
  beginAttempt, getNotificationRow, notificationByKey, recordOutcomes, refuseHeldToken, switchToTokenRoute,
  type Finishing, type NotificationProblem, type NotificationRef, type SendSteps, type Starting,
} from './send-steps.js'
import { claimToken, discardPersonTokens, extendLease, type ClaimedToken, type Hold } from './token-store.js'
import { windowIsOpen } from './window.js'

/** Logged (warn) for every unanswered attempt of a token send, with its `reason`; the soak counts them by reason. */
export const NO_ANSWER_LOG = 'no answer from the Graph API for a token send'

export interface Logger {
  info (obj: object, msg?: string): void
  warn (obj: object, msg?: string): void
}

export interface SendDeps {
  db: Database
  graph: GraphClient
  config: Pick<Config, 'TOKEN_LEASE_SECONDS' | 'GRAPH_API_MAX_RETRIES'>
  steps: SendSteps
  log?: Logger
  /** Pause between re-sends after an unanswered attempt (tests may shorten it). */
  backoffMs?: (retry: number) => number
  /** Told of every notification this process brings to a final status (the otn_notifications_total counter). */
  onFinal?: (n: Notification) => void
}

export interface SendResult {
  notification: Notification
  /** `sent`, or the problem's code. */
  code: string
  problem?: NotificationProblem
  /** An earlier request with the same Idempotency-Key produced this result. */
  replayed: boolean
}

/** The process's send path, built once (buildApp) and handed to the API, the broadcast worker and recovery. */
export interface Sender {
  readonly deps: SendDeps
  send (input: NotificationInput, log?: Logger): Promise<SendResult>
  /** Meta's recent answer time (seconds, a moving average of this process's Send API calls): what paces broadcasts. */
  graphLatencySeconds (): number
}

export function createSender (deps: SendDeps): Sender {
  let latency = 0.25
  const graph: GraphClient = {
    ...deps.graph,
    async sendMessage (page, body) {
      const started = performance.now()
      const outcome = await deps.graph.sendMessage(page, body)
      latency = latency * 0.9 + ((performance.now() - started) / 1000) * 0.1
      return outcome
    },
    close: () => deps.graph.close(),
  }
  const timed = { ...deps, graph }
  return { deps: timed, send: (input, log) => sendNotification(log ? { ...timed, log } : timed, input), graphLatencySeconds: () => latency }
}

function resultOf (n: Notification, replayed: boolean): SendResult {
  const problem = n.status === 'sent' ? undefined : (n.error as unknown as NotificationProblem | null) ?? undefined
  return { notification: n, code: n.status === 'sent' ? 'sent' : problem?.code ?? 'graph_error', ...(problem ? { problem } : {}), replayed }
}

interface Target { page: PageCredentials, page_id: string, payload: string, topic_id: string | null }

/**
 * Sends one notification: through the 24-hour window when it is open (no token spent), else by
 * claiming and spending exactly one token. Every outcome is recorded on the notification row.
 */
export async function sendNotification (deps: SendDeps, input: NotificationInput): Promise<SendResult> {
  checkLabelling(input)
  const item: Starting = { id: randomUUID(), input, hash: notificationHash(input) }
  let started
  try {
    // A busy start wrote nothing: it is made again (the last one records token_busy itself).
    started = await whileBusy((lastTry) => deps.steps.start({ ...item, lastTry }), (s) => s.busy === true)
  } catch (error) {
    if ((error as { code?: string }).code !== '23505' || input.idempotency_key === undefined) throw error
    // Another request with this key won the insert a moment ago (maybe on another instance); this
    // statement, claim included, was undone. Keys are unique per Page: the topic's.
    const topic = await deps.db.selectFrom('topics').select('page_id').where('id', '=', input.topic_id).executeTakeFirst()
    const winner = topic && await notificationByKey(deps.db, topic.page_id, input.idempotency_key)
    if (!winner) throw keyRace()
    return replay(winner, item.hash)
  }
  const { context, n, token } = started
  if (!context) throw notFound('topic', input.topic_id)
  if (context.existing_id !== null) return replay(await current(deps.db, { id: context.existing_id, page_id: context.page_id }), item.hash)
  if (context.access_token === null || !n) {
    throw new DomainError('page_without_access_token',
      `Page ${context.page_id} has no access token; PUT /v1/pages/${context.page_id} with one first.`)
  }
  if (n.status !== 'pending') {
    // No token: recorded final by the same statement.
    deps.onFinal?.(n)
    deps.log?.info({ notification_id: n.id, status: n.status, route: n.route, attempts: n.attempts }, `notification ${n.status}`)
    return resultOf(n, false)
  }
  const target = targetFrom(context.page_id, context.access_token, { page_id: context.page_id, payload: context.payload, topic_id: context.topic_id })
  if ('missing' in target) {
    deps.log?.warn({ notification_id: n.id, page_id: n.page_id, err: target.missing.detail }, 'the Page access token cannot be read; nothing sent')
    const kind = token?.kind ?? 'one_time_notif'
    const route = token ? routeOf(token.kind) : n.route ?? 'token'
    const decision = decide({ kind, route, ambiguous: false, exhausted: true, recovering: false }, { kind: 'target_gone', code: target.missing.code })
    const hold = token ? { page_id: n.page_id, token_id: token.id, notification_id: n.id, kind: token.kind } : undefined
    return resultOf(await finish(deps, n, decision, { route, ...(hold ? { hold } : {}), detail: target.missing.detail }), false)
  }
  const done = n.route === 'window'
    ? await sendThroughWindow(deps, n, target, true) ?? await tokenRoute(deps, n, target)
    : await tokenRoute(deps, n, target, { token: token!, ambiguous: false, recovering: false, counted: true })
  return resultOf(done, false)
}

/** The first request under this key decides; one still in flight is answered at once (ask again shortly). */
function replay (existing: Notification, hash: string): SendResult {
  const n = replayOf(existing, hash, 'notification', {
    inFlight: (e) => e.status === 'pending',
    extra: (e) => ({ notification: e }),
  })
  return resultOf(n, true)
}

/** Records the final outcome `decision` for notification `n` (the token's move with it) and reports it. */
async function finish (deps: SendDeps, n: Notification, decision: Decision, details: {
  route: Route
  graph?: GraphError
  graphMessageId?: string | null
  hold?: Hold
  tokensRefused?: number
  target?: Target
  detail?: string
  /** Nothing went to Meta for the attempt counted at the claim. */
  noRequest?: boolean
}): Promise<Notification> {
  if (decision.pageUnhealthy && details.graph) await recordPageError(deps.db, n.page_id, details.graph)
  const code = decision.code ?? 'graph_error'
  const problem: NotificationProblem | undefined = decision.status === 'sent' ? undefined : {
    code,
    detail: details.detail ?? `${decision.detail ?? ''}${details.graph ? ` Meta said: ${details.graph.message}` : ''}`.trim(),
    ...(details.graph ? { graph: details.graph } : {}),
    ...(decision.retryAfterSeconds !== undefined ? { retry_after_seconds: decision.retryAfterSeconds } : {}),
  }
  const item: Finishing = {
    id: n.id,
    page_id: n.page_id,
    status: decision.status!,
    route: details.route,
    ...(problem ? { problem } : {}),
    ...(details.graphMessageId !== undefined ? { graphMessageId: details.graphMessageId } : {}),
    ...(details.tokensRefused !== undefined ? { tokensRefused: details.tokensRefused } : {}),
    ...(details.noRequest ? { noRequest: true } : {}),
    ...(details.hold && decision.token
      ? { tokenId: details.hold.token_id, tokenState: decision.token, move: { hold: details.hold, to: decision.token } }
      : {}),
  }
  let row: Notification | undefined
  if (decision.discardOthers && details.target) {
    // Rare (the person stopped the topic): their other tokens go with this outcome, in one transaction.
    const target = details.target
    row = await deps.db.transaction().execute(async (trx) => {
      const written = await recordOutcomes(trx, [item])
      if (written[0]) await discardPersonTokens(trx, { page_id: target.page_id, payload: target.payload, psid: n.psid })
      return written[0]
    })
  } else {
    row = await deps.steps.finish(item)
  }
  if (row) deps.onFinal?.(row)
  const final = row ?? await current(deps.db, n)
  deps.log?.info({
    notification_id: n.id, status: final.status, route: final.route, attempts: final.attempts,
    ...(details.graph ? { graph_code: details.graph.code, graph_subcode: details.graph.subcode } : {}),
    ...(row ? {} : { superseded: true }),
  }, `notification ${final.status}`)
  return final
}

async function current (db: Database, n: NotificationRef): Promise<Notification> {
  return (await getNotificationRow(db, n.id, n.page_id))!
}

function eventOf (outcome: SendOutcome): SendEvent {
  switch (outcome.kind) {
    case 'ok': return { kind: 'accepted' }
    case 'graph_error': return { kind: 'refused', cause: classifyGraphError(outcome.httpStatus, outcome.error) }
    case 'no_answer': return outcome.sent ? { kind: 'unanswered' } : { kind: 'unreachable' }
  }
}

/**
 * A standard message inside the window. Undefined when Meta says the window is closed after all
 * (clock skew): the token route follows. `counted`: the row was inserted with its first attempt counted.
 */
async function sendThroughWindow (deps: SendDeps, n: Notification, target: Target, counted = false): Promise<Notification | undefined> {
  const body = {
    recipient: { id: n.psid },
    messaging_type: n.messaging_type ?? 'UPDATE',
    ...(n.tag !== null ? { tag: n.tag } : {}),
    notification_type: n.notification_type,
    message: n.message,
  }
  for (let attempt = 0; ; attempt++) {
    if (attempt > 0) await pause(deps, attempt)
    if (!(attempt === 0 && counted) && !(await beginAttempt(deps.db, n, 'window'))) return current(deps.db, n)
    const outcome = await deps.graph.sendMessage(target.page, body)
    const situation: SendSituation = {
      kind: 'one_time_notif', route: 'window', ambiguous: false, exhausted: attempt >= deps.config.GRAPH_API_MAX_RETRIES, recovering: false,
    }
    const decision = decide(situation, eventOf(outcome))
    if (decision.next === 'retry') continue
    if (decision.next === 'token_route') {
      const error = outcome.kind === 'graph_error' ? outcome.error : undefined
      deps.log?.info({ notification_id: n.id, graph_code: error?.code, graph_subcode: error?.subcode }, 'window closed at Meta; falling back to a token')
      await switchToTokenRoute(deps.db, n)
      return undefined
    }
    return finish(deps, n, decision, {
      route: 'window',
      ...(outcome.kind === 'graph_error' ? { graph: outcome.error } : {}),
      ...(outcome.kind === 'ok' ? { graphMessageId: outcome.messageId } : {}),
      ...(outcome.kind === 'no_answer' && decision.code === 'graph_unreachable' ? { detail: `The Graph API could not be reached (${outcome.detail}); nothing was sent.` } : {}),
    })
  }
}

interface Resumed {
  token: ClaimedToken
  /** An earlier attempt of this notification may have delivered it. */
  ambiguous: boolean
  /** Lease recovery: one send now, and a still-transient outcome waits for the next sweep. */
  recovering: boolean
  /** The claim counted the first attempt already (the start statement). */
  counted?: boolean
}

/** The token route: the held (or next claimed) token, with the re-sends and further tokens the table asks for. */
async function tokenRoute (deps: SendDeps, n: Notification, target: Target, resumed?: Resumed): Promise<Notification> {
  let refused = n.tokens_refused // a recovered send goes on counting from its earlier refusals
  let lastRefusal: GraphError | undefined
  let next = resumed
  const situation = (s: Partial<SendSituation>): SendSituation =>
    ({ kind: 'one_time_notif', route: 'token', ambiguous: false, exhausted: false, recovering: false, ...s })
  for (let i = 0; ; i++) {
    if (i >= MAX_TOKENS_PER_NOTIFICATION) {
      return finish(deps, n, decide(situation({}), { kind: 'token_limit' }), {
        route: 'token', tokensRefused: refused, ...(lastRefusal ? { graph: lastRefusal } : {}),
        detail: `Meta refused ${refused} tokens in a row; stopped trying so as not to burn more. Check the message and the Page.`,
      })
    }
    const claimed = next?.token ?? await whileBusy(() => claimToken(deps.db, {
      page_id: target.page_id, payload: target.payload, psid: n.psid, notification_id: n.id, kind: n.token_kind, leaseSeconds: deps.config.TOKEN_LEASE_SECONDS,
    }), (got) => got === 'busy')
    if (claimed === 'busy') return finish(deps, n, decide(busySituation(BUSY_TRIES), { kind: 'busy' }), { route: 'token', tokensRefused: refused })
    const recovering = next?.recovering ?? false
    const spend = { ambiguous: next?.ambiguous ?? false, recovering, counted: next?.counted ?? false, sends: recovering ? 1 : deps.config.GRAPH_API_MAX_RETRIES + 1 }
    next = undefined
    if (!claimed) {
      return finish(deps, n, decide(situation({}), { kind: 'no_token' }), {
        route: 'token', tokensRefused: refused, ...(lastRefusal ? { graph: lastRefusal } : {}),
        detail: refused > 0 ? `Meta refused ${refused} token(s) this person held for the topic; none is left.` : 'This person holds no usable token for this topic.',
      })
    }
    const hold: Hold = { page_id: n.page_id, token_id: claimed.id, notification_id: n.id, kind: claimed.kind }
    const clear = tryOpenSecret('optin_tokens.token', claimed.token)
    if (clear instanceof SecretUnreadableError) {
      // Nothing is sent with it; the token is kept (released, or unconfirmed if an earlier attempt may have gone out) for when its key is back.
      deps.log?.warn({ notification_id: n.id, token_id: claimed.id, err: clear.message }, 'an opt-in token cannot be read; nothing sent with it')
      const decision = decide({ kind: claimed.kind, route: routeOf(claimed.kind), ambiguous: spend.ambiguous, exhausted: true, recovering: false },
        { kind: 'target_gone', code: 'token_unreadable' })
      return finish(deps, n, decision, {
        route: routeOf(claimed.kind), hold, tokensRefused: refused, noRequest: true,
        detail: `The person's opt-in token cannot be read, so nothing was sent with it: ${clear.message}`,
      })
    }
    const spent = await spendToken(deps, n, target, { ...claimed, token: clear }, spend)
    if (spent.kind === 'lost' || spent.decision.next === 'defer') return current(deps.db, n)
    const { decision, outcome } = spent
    if (decision.next === 'next_token') {
      // The token and the count move together; nothing moves when recovery took the send over.
      if (!(await refuseHeldToken(deps.db, hold, refused + 1))) return current(deps.db, n)
      refused++
      lastRefusal = outcome.kind === 'graph_error' ? outcome.error : undefined
      deps.log?.info({ notification_id: n.id, token_id: claimed.id, graph_code: lastRefusal?.code, graph_subcode: lastRefusal?.subcode },
        'Meta refused the token; trying the next one')
      continue
    }
    return finish(deps, n, decision, {
      route: routeOf(claimed.kind),
      hold,
      target,
      tokensRefused: refused + (decision.token === 'invalid' ? 1 : 0),
      ...(outcome.kind === 'graph_error' ? { graph: outcome.error } : {}),
      ...(outcome.kind === 'ok' ? { graphMessageId: outcome.messageId } : {}),
      ...(outcome.kind === 'no_answer' && decision.code === 'graph_unreachable'
        ? { detail: `The Graph API could not be reached (${outcome.detail}); nothing was sent and the token is kept.` }
        : {}),
    })
  }
}

interface SpendOptions { ambiguous: boolean, recovering: boolean, counted: boolean, sends: number }

/**
 * Sends one held token, re-sending the same token while the table says so. Meta accepts a token
 * once, so a re-send can never deliver twice; once an attempt went unanswered the send is
 * ambiguous, and the table then ends it `sent` or `unconfirmed`, never with a release.
 */
async function spendToken (deps: SendDeps, n: Notification, target: Target, claimed: ClaimedToken, opts: SpendOptions)
  : Promise<{ kind: 'lost' } | { kind: 'decided', decision: Decision, outcome: SendOutcome }> {
  const body = {
    recipient: claimed.kind === 'one_time_notif' ? { one_time_notif_token: claimed.token } : { notification_messages_token: claimed.token },
    messaging_type: 'UPDATE',
    notification_type: n.notification_type,
    message: n.message,
  }
  const hold: Hold = { page_id: n.page_id, token_id: claimed.id, notification_id: n.id, kind: claimed.kind }
  let ambiguous = opts.ambiguous
  if (ambiguous && !RESEND_AFTER_NO_ANSWER[claimed.kind]) {
    // A reusable token whose earlier attempt went unanswered (a recovered send): sending it again could deliver twice.
    const outcome: SendOutcome = { kind: 'no_answer', reason: 'timeout', sent: true, detail: 'an earlier attempt went unanswered' }
    const situation = { kind: claimed.kind, route: routeOf(claimed.kind), ambiguous, exhausted: true, recovering: opts.recovering }
    return { kind: 'decided', decision: decide(situation, { kind: 'unanswered' }), outcome }
  }
  for (let attempt = 0; ; attempt++) {
    if (attempt > 0) await pause(deps, attempt)
    if (attempt > 0 && !(await extendLease(deps.db, hold, deps.config.TOKEN_LEASE_SECONDS))) return { kind: 'lost' }
    if (!(attempt === 0 && opts.counted) && !(await beginAttempt(deps.db, n, routeOf(claimed.kind), claimed.id))) return { kind: 'lost' }
    const outcome = await deps.graph.sendMessage(target.page, body)
    const event = eventOf(outcome)
    const decision = decide({
      kind: claimed.kind, route: routeOf(claimed.kind), ambiguous, exhausted: attempt + 1 >= opts.sends, recovering: opts.recovering,
    }, event)
    if (outcome.kind === 'no_answer') {
      deps.log?.warn({ notification_id: n.id, token_id: claimed.id, attempt: attempt + 1, reason: outcome.reason, retrying: decision.next === 'retry' },
        NO_ANSWER_LOG)
    }
    if (event.kind === 'unanswered') ambiguous = true
    if (decision.next === 'retry') continue
    return { kind: 'decided', decision, outcome }
  }
}

/**
 * Claims of one send while the person's token is busy (its row locked by another statement: a key
 * rotation batch holds its rows for milliseconds, another send's claim until its start commits),
 * and the pause before each next one: about 0.4 s in all before the send ends `token_busy`.
 */
const BUSY_TRIES = 6
const busySituation = (tries: number): SendSituation =>
  ({ kind: 'one_time_notif', route: 'token', ambiguous: false, exhausted: tries >= BUSY_TRIES, recovering: false })
const busyPauseMs = (tries: number): number => 12.5 * 2 ** (tries - 1) * (0.5 + Math.random() / 2)

/** Makes `attempt` again while `busy` says so and the lifecycle table says to retry (`lastTry`: none follows); its last answer. */
async function whileBusy<T> (attempt: (lastTry: boolean) => Promise<T>, busy: (answer: T) => boolean): Promise<T> {
  for (let tries = 1; ; tries++) {
    const lastTry = decide(busySituation(tries), { kind: 'busy' }).next !== 'retry'
    const answer = await attempt(lastTry)
    if (lastTry || !busy(answer)) return answer
    await sleep(busyPauseMs(tries))
  }
}

async function pause (deps: SendDeps, retry: number): Promise<void> {
  const ms = deps.backoffMs ? deps.backoffMs(retry) : Math.min(2_000, 100 * 2 ** (retry - 1)) * (0.5 + Math.random() / 2)
  if (ms > 0) await sleep(ms)
}

// ---- lease recovery's entry points (recovery.ts) ----

/**
 * Continues a notification whose process died, from its held token. With `recovering`, a token
 * that may already be spent gets one send now; if Meta is down or throttling, the hold waits for
 * the next sweep instead of being written off.
 */
export async function resumeWithToken (deps: SendDeps, n: Notification, token: ClaimedToken & { page_id: string, payload: string },
  opts: { mayHaveBeenSent: boolean, recovering: boolean }): Promise<Notification> {
  const target = await targetOf(deps.db, n, token)
  if ('missing' in target) {
    const decision = decide({ kind: token.kind, route: routeOf(token.kind), ambiguous: opts.mayHaveBeenSent, exhausted: true, recovering: false },
      { kind: 'target_gone', code: target.missing.code })
    return finish(deps, n, decision, { route: routeOf(token.kind), hold: { page_id: n.page_id, token_id: token.id, notification_id: n.id, kind: token.kind }, detail: target.missing.detail })
  }
  return tokenRoute(deps, n, target, { token, ambiguous: opts.mayHaveBeenSent, recovering: opts.recovering })
}

/** Runs again a notification whose process died before it held anything. */
export async function resumeFromStart (deps: SendDeps, n: Notification): Promise<Notification> {
  if (n.route === 'window' && n.attempts > 0) {
    // A standard message may have arrived; sending it again could deliver it twice.
    const decision = decide({ kind: 'one_time_notif', route: 'window', ambiguous: true, exhausted: true, recovering: true }, { kind: 'unanswered' })
    return finish(deps, n, decision, {
      route: 'window', detail: 'The process sending this message stopped before Meta answered; it may or may not have been delivered.',
    })
  }
  const target = await targetOf(deps.db, n)
  if ('missing' in target) {
    const decision = decide({ kind: 'one_time_notif', route: n.route ?? 'token', ambiguous: false, exhausted: true, recovering: false },
      { kind: 'target_gone', code: target.missing.code })
    return finish(deps, n, decision, { route: n.route ?? 'token', detail: target.missing.detail })
  }
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

async function targetOf (db: Database, n: Notification, token?: { page_id: string, payload: string }): Promise<Target | { missing: NotificationProblem }> {
  const topic = n.topic_id === null
    ? undefined
    : await db.selectFrom('topics').select(['page_id', 'payload']).where('id', '=', n.topic_id).where('page_id', '=', n.page_id).executeTakeFirst()
  const where = token ?? topic
  if (!where) return { missing: { code: 'topic_not_found', detail: `Topic ${n.topic_id} no longer exists.` } }
  const page = await db.selectFrom('pages').select(['id', 'access_token']).where('id', '=', n.page_id).executeTakeFirst()
  if (!page?.access_token) {
    return { missing: { code: 'page_without_access_token', detail: `Page ${n.page_id} has no access token.` } }
  }
  return targetFrom(page.id, page.access_token, { page_id: where.page_id, payload: where.payload, topic_id: n.topic_id })
}

/**
 * The Page's credentials, decrypted by the send that uses them (one unreadable token fails only its
 * own Page's sends), or why they cannot be read: the detail names the key id, never a value.
 */
function targetFrom (pageId: string, storedToken: string, where: Omit<Target, 'page'>): Target | { missing: NotificationProblem } {
  const accessToken = tryOpenSecret('pages.access_token', storedToken)
  if (accessToken instanceof SecretUnreadableError) {
    return { missing: { code: 'page_token_unreadable', detail: `Page ${pageId}'s access token cannot be read, so nothing was sent: ${accessToken.message}` } }
  }
  return { page: { id: pageId, accessToken }, ...where }
}
