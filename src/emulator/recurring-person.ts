import { DEFAULT_RECURRING_TITLE, recurringExpiry } from './recurring.js'
import { EmulatorError, type EmulatorState, type TokenRecord } from './state.js'
import type { RecurringTokenView, StatusSpelling, WebhookResult } from './types.js'

// What a person does with Meta's recurring (notification_messages) opt-ins: accept a request, stop
// and resume the topic, and accept Meta's re-opt-in refresh. Each change reaches the service as a
// messaging_optins webhook in the shape Meta documents (messaging_optins webhook reference).

export interface PersonDeps {
  state: EmulatorState
  now(): number
  /** Posts (or records) one signed optin webhook for the person. */
  webhook(pageId: string, psid: string, event: Record<string, unknown>): Promise<WebhookResult>
}

type StatusChange = 'STOP' | 'RESUME'

/** The `optin` object of a recurring webhook, keys in the order of Meta's reference example. */
export function recurringOptin(token: TokenRecord, status?: { change: StatusChange; spelling: StatusSpelling }) {
  const r = token.recurring!
  return {
    type: 'notification_messages',
    payload: token.payload,
    notification_messages_token: token.token,
    ...(r.frequency !== undefined ? { notification_messages_frequency: r.frequency } : {}),
    notification_messages_timezone: r.timezone,
    // Only tokens asked with a frequency expire; since August 2023 the others carry no expiry.
    ...(token.expiresAt !== null ? { token_expiry_timestamp: token.expiresAt } : {}),
    user_token_status: r.userTokenStatus,
    ...(status ? { notification_messages_status: statusValue(status.change, status.spelling) } : {}),
    title: r.title,
  }
}

function statusValue(change: StatusChange, spelling: StatusSpelling): string {
  return `${change}${spelling === 'space' ? ' ' : '_'}NOTIFICATIONS`
}

/** The person's current (never replaced) recurring tokens on the Page, oldest first. */
function currentTokens(state: EmulatorState, pageId: string, psid: string, payload?: string): TokenRecord[] {
  const found: TokenRecord[] = []
  for (const t of state.tokens.values()) {
    if (t.kind !== 'notification_messages' || t.pageId !== pageId || t.psid !== psid) continue
    if (t.recurring === undefined || t.recurring.replacedBy !== undefined) continue
    if (payload === undefined || t.payload === payload) found.push(t)
  }
  return found
}

function latestToken(state: EmulatorState, pageId: string, psid: string, payload?: string): TokenRecord {
  const token = currentTokens(state, pageId, psid, payload).at(-1)
  if (!token) {
    const topic = payload === undefined ? '' : ` on payload ${JSON.stringify(payload)}`
    throw new EmulatorError(409, `${psid} holds no recurring token${topic} on page ${pageId}`)
  }
  return token
}

export async function acceptRecurring(
  deps: PersonDeps,
  pageId: string,
  psid: string,
  opts: { payload?: string; timezone?: string },
): Promise<{ token: string } & WebhookResult> {
  const { state } = deps
  state.requirePage(pageId)
  const request = state.optinRequests.findLast(
    (r) =>
      r.kind === 'notification_messages' && r.pageId === pageId && r.psid === psid && !r.answered &&
      (opts.payload === undefined || r.payload === opts.payload),
  )
  if (!request && opts.payload === undefined) {
    throw new EmulatorError(409, `no unanswered notification_messages request was delivered to ${psid} on page ${pageId}`)
  }
  if (request) request.answered = true
  const person = state.touchPerson(pageId, psid)
  if (opts.timezone !== undefined) person.timezone = opts.timezone
  const optedInAt = deps.now()
  const record = state.issueToken({
    kind: 'notification_messages',
    pageId,
    psid,
    payload: request?.payload ?? (opts.payload as string),
    optedInAt,
    expiresAt: recurringExpiry(optedInAt, request?.frequency),
    recurring: {
      title: request?.title ?? DEFAULT_RECURRING_TITLE,
      ...(request?.frequency !== undefined ? { frequency: request.frequency } : {}),
      // The template's time zone, else the person's.
      timezone: request?.timezone ?? person.timezone ?? 'UTC',
      stopped: false,
      userTokenStatus: 'NOT_REFRESHED',
    },
  })
  const result = await deps.webhook(pageId, psid, { optin: recurringOptin(record) })
  return { token: record.token, ...result }
}

/** The person stops (or resumes) the topic: the token is refused with 10/1893015 while stopped. */
export async function changeRecurring(
  deps: PersonDeps,
  pageId: string,
  psid: string,
  change: StatusChange,
  opts: { payload?: string; spelling?: StatusSpelling },
): Promise<{ token: string } & WebhookResult> {
  deps.state.requirePage(pageId)
  const token = latestToken(deps.state, pageId, psid, opts.payload)
  const stopping = change === 'STOP'
  if (token.recurring!.stopped === stopping) {
    throw new EmulatorError(409, `the recurring token on payload ${JSON.stringify(token.payload)} is already ${stopping ? 'stopped' : 'active'}`)
  }
  token.recurring!.stopped = stopping
  const status = { change, spelling: opts.spelling ?? 'underscore' }
  const result = await deps.webhook(pageId, psid, { optin: recurringOptin(token, status) })
  return { token: token.token, ...result }
}

/**
 * Meta's re-opt-in: the person keeps the topic, Meta issues a new token (REFRESHED, a new expiry)
 * and the old one is refused as invalid from then on.
 */
export async function refreshRecurring(
  deps: PersonDeps,
  pageId: string,
  psid: string,
  opts: { payload?: string },
): Promise<{ token: string; replaced: string } & WebhookResult> {
  const { state } = deps
  state.requirePage(pageId)
  const old = latestToken(state, pageId, psid, opts.payload)
  const optedInAt = deps.now()
  const next = state.issueToken({
    kind: 'notification_messages',
    pageId,
    psid,
    payload: old.payload,
    optedInAt,
    expiresAt: recurringExpiry(optedInAt, old.recurring!.frequency),
    // lastSentAt carries over: a refresh does not let the Page skip the cooldown or the period.
    recurring: { ...old.recurring!, stopped: false, userTokenStatus: 'REFRESHED' },
  })
  old.recurring!.replacedBy = next.token
  const result = await deps.webhook(pageId, psid, { optin: recurringOptin(next) })
  return { token: next.token, replaced: old.token, ...result }
}

export function recurringView(token: TokenRecord, now: number): RecurringTokenView {
  const r = token.recurring!
  const status =
    r.replacedBy !== undefined ? 'replaced'
    : token.expiresAt !== null && now >= token.expiresAt ? 'expired'
    : r.stopped ? 'stopped'
    : 'active'
  return {
    token: token.token,
    payload: token.payload,
    title: r.title,
    ...(r.frequency !== undefined ? { frequency: r.frequency } : {}),
    timezone: r.timezone,
    status,
    userTokenStatus: r.userTokenStatus,
    optedInAt: token.optedInAt,
    expiresAt: token.expiresAt,
    ...(r.lastSentAt !== undefined ? { lastSentAt: r.lastSentAt } : {}),
    uses: token.uses,
  }
}

/** Every recurring token the person was ever issued on the Page (replaced ones too), oldest first. */
export function recurringTokens(state: EmulatorState, pageId: string, psid: string, now: number): RecurringTokenView[] {
  const views: RecurringTokenView[] = []
  for (const t of state.tokens.values()) {
    if (t.kind === 'notification_messages' && t.recurring && t.pageId === pageId && t.psid === psid) views.push(recurringView(t, now))
  }
  return views
}
