/**
 * The token and notification lifecycle, as data. Every send path (API, broadcasts, lease
 * recovery) asks `decide` what an answer from Meta means; nothing else in the service decides it.
 * No I/O here: the SQL that moves tokens is in token-store.ts, the orchestration in send.ts.
 *
 * Glossary (one word per concept, used in code, metrics and docs):
 * - **token**: one opt-in permission Meta handed us (a row of the token table); its **kind** is
 *   `one_time_notif` (OTN: one message) or `notification_messages` (recurring).
 * - **usable**: available, held by nobody and not past its expiry: what a send may claim.
 * - **claim**: a send takes one usable token for its notification; the token is then **held**
 *   (still `available` in state, with the notification's id and a **lease**).
 * - **busy**: a usable token whose row another statement has locked for a moment (a key rotation
 *   batch, another send's claim not yet committed): a claim skips it, and the send claims again.
 * - **lease**: how long a hold lasts unless renewed; a hold past its lease is taken over by
 *   **recovery**, which finishes the send a dead process left.
 * - **settle**: a hold ends: the token becomes **used** (Meta accepted it), **invalid** (Meta named
 *   it unusable, or it was set aside), **released** (back to usable: nothing was spent) or
 *   **unconfirmed** (Meta may have spent it: never handed out again).
 * - **expired**, **discarded**: a token that was never sent (past its year; its topic deleted or
 *   the person stopped the topic).
 * - **recurring** tokens (`notification_messages`) are reusable: a send that Meta accepted leaves the
 *   token usable and starts its **pacing** (`next_send_at`: one message per calendar period of its
 *   frequency and a cooldown); the person may **stop** them (`stopped_at`, not usable) and resume
 *   them; a newer opt-in on the same topic **replaces** the older token (state `replaced`).
 * - **route**: how a notification goes out: `window` (a standard message inside the 24-hour
 *   window, no token), `recurring` (a recurring token) or `token` (a one-time token).
 * - **attempt**: one request to the Graph API; **ambiguous**: an earlier attempt went unanswered,
 *   so Meta may already have delivered the message.
 * - **outcome**: the notification's final status and the caller-facing code that says why.
 */
import type { GraphErrorClass } from '../graph/errors.js'

export type TokenKind = 'one_time_notif' | 'notification_messages'
/** What the token table stores; `held` is derived (below), not a state of its own. */
export type TokenState = 'available' | 'used' | 'invalid' | 'expired' | 'discarded' | 'unconfirmed' | 'replaced'
export type NotificationStatus = 'pending' | 'sent' | 'no_token' | 'failed' | 'unconfirmed'
export type Route = 'window' | 'token' | 'recurring'
/** The two routes that send with a token. */
export type TokenRoute = Exclude<Route, 'window'>

/** The route a send with a token of this kind takes. */
export function routeOf (kind: TokenKind): TokenRoute {
  return kind === 'notification_messages' ? 'recurring' : 'token'
}

/**
 * The derived states, defined once: the token store writes them as SQL. A held token keeps the
 * state `available` so that a claim changes no indexed column (a HOT update: migration 20261122000000).
 */
export const DERIVED_STATES = {
  /** A send may claim it (and it has not passed `expires_at`). */
  usable: { state: 'available', holder: 'none' },
  /** A send in flight holds it. */
  held: { state: 'available', holder: 'some' },
  /** A recurring token the person stopped: `stopped_at` set; a resume clears it. */
  stopped: { state: 'available', stopped: true },
} as const

/**
 * The expiry stored for a recurring token that has none (Meta stopped expiring them in August 2023,
 * and an opt-in without frequency or `token_expiry_timestamp` names none): far enough never to
 * pass; the API shows it as null.
 */
export const NO_EXPIRY = new Date('9999-12-31T00:00:00.000Z')

/**
 * How long a recurring opt-in lasts when Meta gives a frequency but no `token_expiry_timestamp`
 * (the product's brief): daily 6 months, weekly 9 months, monthly 12 months.
 */
export const RECURRING_LIFETIME_MONTHS = { DAILY: 6, WEEKLY: 9, MONTHLY: 12 } as const

/** Meta's cooldown between two recurring notifications on one token (since September 2025): RECURRING_COOLDOWN_HOURS's default. */
export const RECURRING_COOLDOWN_HOURS = 48
const DEFAULT_COOLDOWN_SECONDS = RECURRING_COOLDOWN_HOURS * 3600
export { DEFAULT_COOLDOWN_SECONDS }

/** What a settled hold does to its token. */
export type TokenOutcome = 'used' | 'invalid' | 'released' | 'unconfirmed' | 'stopped' | 'deferred'

/** Where a settled token goes: its state, whether it is stopped, and whether its pacing moves. */
export interface Settled {
  state: TokenState
  /** The person stopped the topic (recurring: `stopped_at` is set). */
  stops?: boolean
  /** `sent`: the message may have gone out, so the cooldown starts now (`last_sent_at` too); `later`: Meta said not yet, so only `next_send_at` moves. */
  paces?: 'sent' | 'later'
}

/**
 * Where a settled token goes, by kind: the one rule of what each outcome does to a token. A
 * one-time token is spent by one message; a recurring one stays usable and starts its pacing, even
 * when Meta's answer was lost (it may have arrived: sending again inside the cooldown could deliver
 * twice). A token that ends `available` has no holder.
 */
export const SETTLED: Record<TokenKind, Record<TokenOutcome, Settled>> = {
  one_time_notif: {
    used: { state: 'used' },
    invalid: { state: 'invalid' },
    released: { state: 'available' },
    unconfirmed: { state: 'unconfirmed' },
    stopped: { state: 'invalid' },
    deferred: { state: 'available' },
  },
  notification_messages: {
    used: { state: 'available', paces: 'sent' },
    invalid: { state: 'invalid' },
    released: { state: 'available' },
    unconfirmed: { state: 'available', paces: 'sent' },
    stopped: { state: 'available', stops: true },
    deferred: { state: 'available', paces: 'later' },
  },
}

/**
 * Whether a token may be sent again after an attempt that went unanswered. Meta refuses a spent
 * one-time token, so re-sending it can never deliver twice; a recurring token is reusable, so a
 * re-send could (docs/RECURRING.md).
 */
export const RESEND_AFTER_NO_ANSWER: Record<TokenKind, boolean> = { one_time_notif: true, notification_messages: false }

/** What happened on one attempt, as the send path sees it. */
export type SendEvent =
  | { kind: 'accepted' }
  /** Meta answered with a refusal (src/graph/errors.ts names the cause). */
  | { kind: 'refused', cause: GraphErrorClass }
  /** Sent, but no answer came (timeout, connection lost): Meta may have acted on it. */
  | { kind: 'unanswered' }
  /** Never sent (connection refused, no connection free): nothing left this process. */
  | { kind: 'unreachable' }
  /** The token route found no usable token. */
  | { kind: 'no_token' }
  /** Meta refused MAX_TOKENS_PER_NOTIFICATION tokens in a row: no more are tried. */
  | { kind: 'token_limit' }
  /** Recovery found the send's topic or Page gone (`code` says which): it cannot go on. */
  | { kind: 'target_gone', code: string }
  /** The only way to the person is a recurring token that may not send yet (nothing was sent). */
  | { kind: 'cooling' }
  /**
   * The person holds a usable token, but another statement has its row locked for a moment (a key
   * rotation batch rewriting it, another send claiming it): the claim skipped it. Nothing is held.
   */
  | { kind: 'busy' }

/** Where the send stands when the event happens. */
export interface SendSituation {
  kind: TokenKind
  route: Route
  /** An earlier attempt of this notification went unanswered. */
  ambiguous: boolean
  /** This was the last attempt the send may make now. */
  exhausted: boolean
  /** Lease recovery: a still-transient outcome waits for the next sweep instead of ending. */
  recovering: boolean
}

/** What to do next. */
export type Next =
  /** The notification is final. */
  | 'finish'
  /** Send again, the same token (after a pause). */
  | 'retry'
  /** The token is settled as `invalid`; claim the person's next token. */
  | 'next_token'
  /** The window turned out closed: the token route follows. */
  | 'token_route'
  /** Recovery: keep the hold (with a fresh lease) and try at the next sweep. */
  | 'defer'

export interface Decision {
  next: Next
  /** The notification's status when `next` is `finish`. */
  status?: Exclude<NotificationStatus, 'pending'>
  /** What becomes of the token held (token route; none on the window route). */
  token?: TokenOutcome
  /** The person stopped the topic: their other usable tokens on it are discarded too. */
  discardOthers?: boolean
  /** The caller-facing code (problem code, or `sent`); absent for `target_gone`: the event's. */
  code?: string
  /** Seconds a caller should wait before trying again (a refusal that spent nothing). */
  retryAfterSeconds?: number
  /** The Page itself is the problem: it reads back unhealthy (from Meta's cause: PAGE_LEVEL). */
  pageUnhealthy?: boolean
  /** Said to the caller (the HTTP layer adds Meta's message). */
  detail?: string
}

type Cause = GraphErrorClass
type Match<T> = T | readonly T[] | '*'

/** One row: the first row whose every column matches decides. */
export interface Transition {
  kind: Match<TokenKind>
  route: Match<Route>
  event: Match<SendEvent['kind']>
  /** For `refused`: Meta's cause. */
  cause?: Match<Cause>
  ambiguous?: boolean
  exhausted?: boolean
  recovering?: boolean
  then: Decision
}

export const RATE_LIMIT_RETRY_AFTER_SECONDS = 60
export const TEMPORARY_RETRY_AFTER_SECONDS = 5
/** A token whose row stayed locked through every claim of a send is usually free again within a second. */
export const BUSY_RETRY_AFTER_SECONDS = 1

const TRANSIENT: readonly Cause[] = ['temporary', 'rate_limited', 'frequency_limited']
const TOKEN_ROUTES: readonly Route[] = ['token', 'recurring']
const UNCONFIRMED: Decision = {
  next: 'finish', status: 'unconfirmed', token: 'unconfirmed', code: 'graph_unconfirmed',
  detail: 'The Graph API did not answer (or answered only after a lost attempt): the message may or may not have been delivered. ' +
    'It is not sent again; any token it used is set aside as unconfirmed.',
}

/** A refusal that spent nothing and ends the send: the token (if any) is released. */
function refusal (code: string, detail: string, extra: Partial<Decision> = {}): Decision {
  return { next: 'finish', status: 'failed', token: 'released', code, detail, ...extra }
}

/**
 * The transition table, read top to bottom. Columns left out match anything. Both token kinds
 * share the token rows; recurring tokens have their own rows above them.
 */
export const TRANSITIONS: readonly Transition[] = [
  // ---- the window route (no token held) ----
  { kind: '*', route: 'window', event: 'accepted', then: { next: 'finish', status: 'sent', code: 'sent' } },
  { kind: '*', route: 'window', event: 'refused', cause: 'outside_window', then: { next: 'token_route' } },
  { kind: '*', route: 'window', event: 'refused', cause: 'token_invalid', then: { next: 'finish', status: 'failed', code: 'graph_recipient_invalid', detail: 'Meta does not know this person on this Page.' } },
  // A standard message has no token to make Meta refuse a second delivery: a lost answer is never re-sent.
  { kind: '*', route: 'window', event: 'unanswered', then: { ...UNCONFIRMED, token: undefined } },
  { kind: '*', route: 'window', event: 'unreachable', exhausted: false, then: { next: 'retry' } },
  { kind: '*', route: 'window', event: 'unreachable', then: { next: 'finish', status: 'failed', code: 'graph_unreachable', retryAfterSeconds: TEMPORARY_RETRY_AFTER_SECONDS, detail: 'The Graph API could not be reached; nothing was sent.' } },
  { kind: '*', route: 'window', event: 'target_gone', then: { next: 'finish', status: 'failed' } },

  // ---- recurring tokens: reusable, so a lost answer is never re-sent (RESEND_AFTER_NO_ANSWER) ----
  { kind: 'notification_messages', route: 'recurring', event: 'cooling', then: { next: 'finish', status: 'failed', code: 'recurring_cooldown', detail: 'This person can be reached only with a recurring token that may not send yet (its calendar period or cooldown). Try again at next_send_at.' } },
  { kind: 'notification_messages', route: 'recurring', event: 'unanswered', then: { ...UNCONFIRMED, detail: 'The Graph API did not answer: the message may or may not have been delivered. A recurring token is reusable, so it is not sent again; the token stays usable after its cooldown.' } },
  { kind: 'notification_messages', route: 'recurring', event: 'refused', ambiguous: true, then: UNCONFIRMED },
  { kind: 'notification_messages', route: 'recurring', event: 'unreachable', ambiguous: true, then: UNCONFIRMED },
  { kind: 'notification_messages', route: 'recurring', event: 'refused', cause: 'frequency_limited', then: { next: 'finish', status: 'failed', token: 'deferred', code: 'recurring_cooldown', retryAfterSeconds: RATE_LIMIT_RETRY_AFTER_SECONDS, detail: 'Meta refused the recurring token for now (its frequency limit); the token is kept and waits for its next period.' } },
  { kind: 'notification_messages', route: 'recurring', event: 'refused', cause: 'topic_stopped', then: { next: 'finish', status: 'failed', token: 'stopped', code: 'graph_topic_stopped', detail: 'The person stopped these recurring notifications; the token is stopped until they resume them.' } },

  // ---- the token route ----
  { kind: '*', route: TOKEN_ROUTES, event: 'target_gone', ambiguous: true, then: { ...UNCONFIRMED, code: undefined, detail: undefined } },
  { kind: '*', route: TOKEN_ROUTES, event: 'target_gone', then: { next: 'finish', status: 'failed', token: 'released' } },
  { kind: '*', route: TOKEN_ROUTES, event: 'token_limit', then: { next: 'finish', status: 'failed', code: 'graph_token_refused', detail: 'Meta refused several tokens in a row; stopped trying so as not to burn more. Check the message and the Page.' } },
  { kind: '*', route: TOKEN_ROUTES, event: 'no_token', then: { next: 'finish', status: 'no_token', code: 'no_token', detail: 'This person holds no usable token for this topic.' } },
  // A row lock lasts milliseconds: claim again after a pause; a send never ends `no_token` while the person holds a token.
  { kind: '*', route: TOKEN_ROUTES, event: 'busy', exhausted: false, then: { next: 'retry' } },
  { kind: '*', route: TOKEN_ROUTES, event: 'busy', then: { next: 'finish', status: 'failed', code: 'token_busy', retryAfterSeconds: BUSY_RETRY_AFTER_SECONDS, detail: 'The person\'s token was locked by another statement (a key rotation batch, or another send claiming it) through every try; nothing was sent and nothing was spent. Try again shortly.' } },
  { kind: '*', route: TOKEN_ROUTES, event: 'accepted', then: { next: 'finish', status: 'sent', token: 'used', code: 'sent' } },
  // After a lost answer the token may be spent: only a passing failure is worth another try, and
  // any other refusal ("already used" included: our own earlier attempt may have arrived) is unconfirmed.
  { kind: '*', route: TOKEN_ROUTES, event: 'refused', cause: TRANSIENT, ambiguous: true, exhausted: false, then: { next: 'retry' } },
  { kind: '*', route: TOKEN_ROUTES, event: 'refused', cause: TRANSIENT, ambiguous: true, recovering: true, then: { next: 'defer' } },
  { kind: '*', route: TOKEN_ROUTES, event: 'refused', ambiguous: true, then: UNCONFIRMED },
  { kind: '*', route: TOKEN_ROUTES, event: 'unanswered', exhausted: false, then: { next: 'retry' } },
  { kind: '*', route: TOKEN_ROUTES, event: 'unanswered', recovering: true, then: { next: 'defer' } },
  { kind: '*', route: TOKEN_ROUTES, event: 'unanswered', then: UNCONFIRMED },
  { kind: '*', route: TOKEN_ROUTES, event: 'unreachable', exhausted: false, then: { next: 'retry' } },
  { kind: '*', route: TOKEN_ROUTES, event: 'unreachable', ambiguous: true, recovering: true, then: { next: 'defer' } },
  { kind: '*', route: TOKEN_ROUTES, event: 'unreachable', ambiguous: true, then: UNCONFIRMED },
  { kind: '*', route: TOKEN_ROUTES, event: 'unreachable', then: refusal('graph_unreachable', 'The Graph API could not be reached; nothing was sent and the token is kept.', { retryAfterSeconds: TEMPORARY_RETRY_AFTER_SECONDS }) },
  // Meta names the token (or the recipient it stands for) unusable: the next token may do.
  { kind: '*', route: TOKEN_ROUTES, event: 'refused', cause: ['token_invalid', 'outside_window'], then: { next: 'next_token', token: 'invalid' } },
  // The bare (#100): the message or the token, Meta does not say. At most this one token, and stop.
  { kind: '*', route: TOKEN_ROUTES, event: 'refused', cause: 'message_refused', then: { next: 'finish', status: 'failed', token: 'invalid', code: 'graph_message_refused', detail: 'Meta refused the request with a bare "Invalid parameter", its answer both to a message it will not send and to a spent token: check the message. The token it was sent with is set aside; the person\'s other tokens are kept.' } },
  { kind: '*', route: TOKEN_ROUTES, event: 'refused', cause: 'topic_stopped', then: { next: 'finish', status: 'failed', token: 'invalid', discardOthers: true, code: 'graph_topic_stopped', detail: 'The person stopped notifications on this topic. The token is spent and the person\'s other tokens on this topic are discarded.' } },

  // ---- refusals that mean the same on both routes (the token, if any, is kept) ----
  { kind: '*', route: '*', event: 'refused', cause: 'message_refused', then: refusal('graph_message_refused', 'Meta refused the message ("Invalid parameter"); check the message.') },
  { kind: '*', route: '*', event: 'refused', cause: 'topic_stopped', then: refusal('graph_topic_stopped', 'The person stopped notifications on this topic.') },
  { kind: '*', route: '*', event: 'refused', cause: 'temporary', then: refusal('graph_temporary', 'The Graph API failed temporarily; try again shortly.', { retryAfterSeconds: TEMPORARY_RETRY_AFTER_SECONDS }) },
  { kind: '*', route: '*', event: 'refused', cause: 'rate_limited', then: refusal('graph_rate_limited', 'Meta rate-limited this Page; try again later.', { retryAfterSeconds: RATE_LIMIT_RETRY_AFTER_SECONDS }) },
  { kind: '*', route: '*', event: 'refused', cause: 'frequency_limited', then: refusal('graph_frequency_limited', 'Meta refused this person\'s notification for now (its frequency limit); try again later.', { retryAfterSeconds: RATE_LIMIT_RETRY_AFTER_SECONDS }) },
  { kind: '*', route: '*', event: 'refused', cause: 'person_unavailable', then: refusal('graph_person_unavailable', 'The person cannot receive messages from this Page right now.') },
  { kind: '*', route: '*', event: 'refused', cause: 'page_restricted', then: refusal('graph_page_restricted', 'Meta restricted this Page.') },
  { kind: '*', route: '*', event: 'refused', cause: 'page_token_invalid', then: refusal('graph_page_token_invalid', 'Meta rejected the Page access token; give the Page a new one.') },
  { kind: '*', route: '*', event: 'refused', cause: 'permission', then: refusal('graph_permission_missing', 'The Page or app lacks a permission Meta requires.') },
  { kind: '*', route: '*', event: 'refused', cause: 'request_invalid', then: refusal('graph_request_invalid', 'Meta refused the message.') },
  { kind: '*', route: '*', event: 'refused', cause: 'unknown', then: refusal('graph_error', 'The Graph API refused the send.') },
]

const matches = <T>(want: Match<T> | undefined, value: T): boolean =>
  want === undefined || want === '*' || (Array.isArray(want) ? want.includes(value) : want === value)

/** The first row of TRANSITIONS that matches (every situation has one: a test holds it). */
export function transitionFor (situation: SendSituation, event: SendEvent): Transition {
  const row = TRANSITIONS.find((r) =>
    matches(r.kind, situation.kind) && matches(r.route, situation.route) && matches(r.event, event.kind) &&
    (event.kind !== 'refused' || matches(r.cause, event.cause)) &&
    (r.ambiguous === undefined || r.ambiguous === situation.ambiguous) &&
    (r.exhausted === undefined || r.exhausted === situation.exhausted) &&
    (r.recovering === undefined || r.recovering === situation.recovering))
  if (!row) throw new Error(`no transition for ${JSON.stringify({ situation, event })}`)
  return row
}

/**
 * Causes that are the Page's, not one person's: the Page reads back unhealthy, whatever became of
 * the send (an unconfirmed one too). A refusal about one person never marks it.
 */
export const PAGE_LEVEL: ReadonlySet<Cause> = new Set<Cause>(['page_restricted', 'page_token_invalid', 'permission'])

export function decide (situation: SendSituation, event: SendEvent): Decision {
  const { then } = transitionFor(situation, event)
  const decision = event.kind === 'target_gone' && then.code === undefined ? { ...then, code: event.code } : then
  return event.kind === 'refused' && PAGE_LEVEL.has(event.cause) ? { ...decision, pageUnhealthy: true } : decision
}

/** Tokens one notification may try when Meta refuses them one after another. */
export const MAX_TOKENS_PER_NOTIFICATION = 5

/**
 * A refusal that spent nothing and may be tried again later (a broadcast retries the person):
 * the codes with a Retry-After; `pausesPage`: Meta throttled the whole Page.
 */
export function retryOf (code: string, retryAfterSeconds: number | undefined): { afterSeconds: number, pausesPage: boolean } | undefined {
  if (retryAfterSeconds === undefined) return undefined
  return { afterSeconds: retryAfterSeconds, pausesPage: code === 'graph_rate_limited' }
}
