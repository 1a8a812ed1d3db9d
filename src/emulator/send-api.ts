import { createHmac, timingSafeEqual } from 'node:crypto'
import { errors, type GraphError } from './graph-errors.js'
import {
  CTA_TEXTS,
  DEFAULT_RECURRING_TITLE,
  MAX_RECURRING_TITLE,
  REOPTIN_VALUES,
  isTimeZone,
  overFrequencyLimit,
} from './recurring.js'
import { DAY_MS, WINDOW_MS, messageId, type EmulatorState, type PageRecord, type Person } from './state.js'
import { FREQUENCIES, type DeliveredMessage, type Frequency, type ParamErrors, type TokenRefusal } from './types.js'

const MESSAGING_TYPES = new Set(['RESPONSE', 'UPDATE', 'MESSAGE_TAG'])
const NOTIFICATION_TYPES = new Set(['REGULAR', 'SILENT_PUSH', 'NO_PUSH'])
const MESSAGE_TAGS = new Set(['HUMAN_AGENT', 'ACCOUNT_UPDATE', 'CONFIRMED_EVENT_UPDATE', 'CUSTOMER_FEEDBACK', 'POST_PURCHASE_UPDATE'])
const SENDER_ACTIONS = new Set(['typing_on', 'typing_off', 'mark_seen'])
const ATTACHMENT_TYPES = new Set(['image', 'audio', 'video', 'file', 'template'])
const RECIPIENT_FIELDS = ['id', 'one_time_notif_token', 'notification_messages_token'] as const
const HUMAN_AGENT_WINDOW_MS = 7 * DAY_MS
const MAX_TEXT = 2000
const MAX_OTN_TITLE = 65

export interface SendContext {
  state: EmulatorState
  now: number
  appSecret?: string
  requireProof: boolean
  tokenRefusal: TokenRefusal
  optinRequestCooldownMs?: number
  /** 'generic': every parameter refusal is the bare "(#100) Invalid parameter". Default 'detailed'. */
  paramErrors?: ParamErrors
  /** The time between two sends with one recurring token (default none). */
  recurringCooldownMs?: number
}

export interface SendInput {
  pathPageId?: string
  accessToken?: string
  proof?: string
  body: Record<string, unknown>
}

export type SendResult =
  | { ok: true; body: { recipient_id: string; message_id?: string }; messageId?: string; tokenUsed?: string }
  | { ok: false; error: GraphError }

type Recipient = { field: (typeof RECIPIENT_FIELDS)[number]; value: string }
type OtnRequest = { title: string; payload: string }
type RecurringRequest = { title: string; payload: string; frequency?: Frequency; timezone?: string }
type OptinRequest = { kind: 'one_time_notif' | 'notification_messages' } & RecurringRequest
type ParamError = (message: string) => GraphError

const fail = (error: GraphError): SendResult => ({ ok: false, error })

/** How this call words a parameter refusal: naming the parameter, or Meta's bare one. */
function paramError(ctx: SendContext): ParamError {
  return ctx.paramErrors === 'generic' ? () => errors.invalidParameter() : errors.param
}

function tokenRefused(ctx: SendContext): GraphError {
  switch (ctx.tokenRefusal) {
    case 'outside_window':
      return errors.outsideWindow()
    case 'generic_parameter':
      return errors.invalidParameter()
    default:
      return errors.invalidOtnToken()
  }
}

/** The refusal for a person who cannot be messaged (or is unknown behind a token), or null when they can. */
function personRefusal(person: Person | undefined): GraphError | null {
  if (person?.available) return null
  switch (person?.unavailableReason) {
    case 'not_receiving':
      return errors.personNotReceiving()
    case 'blocked':
      return errors.personBlocked()
    default:
      return errors.personUnavailable()
  }
}

export function appsecretProof(accessToken: string, appSecret: string): string {
  return createHmac('sha256', appSecret).update(accessToken).digest('hex')
}

// The expected proof per access token (and the app secret it was computed with), so that a request
// costs a lookup instead of an HMAC. Cleared when it grows past the limit, so it stays bounded.
const PROOF_CACHE_LIMIT = 10_000
const expectedProofs = new Map<string, { appSecret: string; proof: Buffer }>()

function expectedProof(accessToken: string, appSecret: string): Buffer {
  const cached = expectedProofs.get(accessToken)
  if (cached !== undefined && cached.appSecret === appSecret) return cached.proof
  if (expectedProofs.size >= PROOF_CACHE_LIMIT) expectedProofs.clear()
  const proof = Buffer.from(appsecretProof(accessToken, appSecret), 'hex')
  expectedProofs.set(accessToken, { appSecret, proof })
  return proof
}

const PROOF_FORMAT = /^[0-9a-fA-F]{64}$/

function proofMatches(proof: string, accessToken: string, appSecret: string): boolean {
  if (!PROOF_FORMAT.test(proof)) return false
  return timingSafeEqual(Buffer.from(proof, 'hex'), expectedProof(accessToken, appSecret))
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** At most `max` code points. Counted only when needed: a code point takes one or two UTF-16 units. */
function withinCodePoints(s: string, max: number): boolean {
  if (s.length <= max) return true
  if (s.length > 2 * max) return false
  let n = 0
  for (const _ of s) if (++n > max) return false
  return true
}

export function processSend(ctx: SendContext, input: SendInput): SendResult {
  const { state, now } = ctx
  const page = state.pageByToken(input.accessToken)
  if (!page) return fail(errors.invalidAccessToken())
  if (input.pathPageId !== undefined && input.pathPageId !== page.id) return fail(errors.pageMismatch())
  if (ctx.appSecret !== undefined) {
    if (input.proof !== undefined) {
      if (!proofMatches(input.proof, page.accessToken, ctx.appSecret)) return fail(errors.proofInvalid())
    } else if (ctx.requireProof) {
      return fail(errors.proofMissing())
    }
  }

  const param = paramError(ctx)
  const recipient = parseRecipient(input.body.recipient, param)
  if ('error' in recipient) return fail(recipient.error)

  const senderAction = input.body.sender_action
  if (senderAction !== undefined) return senderActionSend(ctx, page, recipient, senderAction, input.body)

  const message = validateMessage(input.body.message, param)
  if ('error' in message) return fail(message.error)

  const messagingType = input.body.messaging_type
  if (messagingType !== undefined && (typeof messagingType !== 'string' || !MESSAGING_TYPES.has(messagingType))) {
    return fail(param('param messaging_type must be one of {RESPONSE, UPDATE, MESSAGE_TAG}'))
  }
  const tag = input.body.tag
  if (messagingType === 'MESSAGE_TAG' && (typeof tag !== 'string' || !MESSAGE_TAGS.has(tag))) {
    return fail(param('param tag must be one of {HUMAN_AGENT, ACCOUNT_UPDATE, CONFIRMED_EVENT_UPDATE, CUSTOMER_FEEDBACK, POST_PURCHASE_UPDATE}'))
  }
  const notificationType = input.body.notification_type
  if (
    notificationType !== undefined &&
    (typeof notificationType !== 'string' || !NOTIFICATION_TYPES.has(notificationType))
  ) {
    return fail(param('param notification_type must be one of {REGULAR, SILENT_PUSH, NO_PUSH}'))
  }

  const delivered = { messageId: messageId(), at: now, message: input.body.message }

  if (recipient.field === 'id') {
    const psid = recipient.value
    const person = state.person(page.id, psid)
    if (!person) return fail(errors.noMatchingUser())
    const refusal = personRefusal(person)
    if (refusal) return fail(refusal)
    const optinRequest = message.optinRequest
    // Opt-in requests of both kinds may only be sent inside the standard window, whatever the tag.
    const allowance = optinRequest ? WINDOW_MS : windowFor(messagingType === 'MESSAGE_TAG' ? (tag as string) : undefined)
    if (!withinWindow(person, now, allowance)) return fail(errors.outsideWindow())
    if (optinRequest) {
      const repeated = optinRequest.kind === 'one_time_notif' ? optinRequestRepeated(ctx, page.id, psid, optinRequest.payload) : null
      if (repeated) return fail(repeated)
      state.optinRequests.push({ pageId: page.id, psid, ...optinRequest, at: now, messageId: delivered.messageId, answered: false })
    }
    return accept(ctx, page, psid, { ...delivered, via: 'window' })
  }

  if (message.optinRequest) {
    const template = message.optinRequest.kind === 'one_time_notif' ? 'one_time_notif_req' : 'notification_messages'
    return fail(param(`The ${template} template can only be sent to a recipient id`))
  }

  const token = state.tokens.get(recipient.value)
  if (recipient.field === 'one_time_notif_token') {
    const usable =
      token !== undefined &&
      token.kind === 'one_time_notif' &&
      token.pageId === page.id &&
      token.uses === 0 &&
      token.expiresAt !== null &&
      now < token.expiresAt
    if (!usable) return fail(tokenRefused(ctx))
    const refusal = personRefusal(state.person(page.id, token.psid))
    if (refusal) return fail(refusal)
    token.uses += 1
    state.countOtnAcceptance(token.token)
    return accept(ctx, page, token.psid, { ...delivered, via: 'one_time_notif_token', token: token.token })
  }

  const usable =
    token !== undefined &&
    token.kind === 'notification_messages' &&
    token.pageId === page.id &&
    token.recurring?.replacedBy === undefined &&
    (token.expiresAt === null || now < token.expiresAt)
  if (!usable) return fail(errors.invalidRecurringToken())
  if (token.recurring?.stopped) return fail(errors.recurringStopped())
  const refusal = personRefusal(state.person(page.id, token.psid))
  if (refusal) return fail(refusal)
  if (overFrequencyLimit(token, now, ctx.recurringCooldownMs ?? 0)) return fail(errors.recurringFrequencyLimit())
  // A recurring token stays usable after a send; the send starts its cooldown and fills its period.
  token.uses += 1
  if (token.recurring) token.recurring.lastSentAt = now
  return accept(ctx, page, token.psid, { ...delivered, via: 'notification_messages_token', token: token.token })
}

function accept(ctx: SendContext, page: PageRecord, psid: string, delivered: DeliveredMessage): SendResult {
  ctx.state.deliver(page.id, psid, delivered)
  return {
    ok: true,
    body: { recipient_id: psid, message_id: delivered.messageId },
    messageId: delivered.messageId,
    tokenUsed: delivered.token,
  }
}

function senderActionSend(
  ctx: SendContext,
  page: PageRecord,
  recipient: Recipient,
  action: unknown,
  body: Record<string, unknown>,
): SendResult {
  const param = paramError(ctx)
  if (typeof action !== 'string' || !SENDER_ACTIONS.has(action)) {
    return fail(param('param sender_action must be one of {typing_on, typing_off, mark_seen}'))
  }
  if (body.message !== undefined) return fail(param('sender_action cannot be sent with message'))
  if (recipient.field !== 'id') return fail(param('sender_action requires a recipient id'))
  const person = ctx.state.person(page.id, recipient.value)
  if (!person) return fail(errors.noMatchingUser())
  const refusal = personRefusal(person)
  if (refusal) return fail(refusal)
  if (!withinWindow(person, ctx.now, WINDOW_MS)) return fail(errors.outsideWindow())
  return { ok: true, body: { recipient_id: recipient.value } }
}

function windowFor(tag: string | undefined): number {
  if (tag === undefined) return WINDOW_MS
  if (tag === 'HUMAN_AGENT') return HUMAN_AGENT_WINDOW_MS
  return Number.POSITIVE_INFINITY
}

function withinWindow(person: Person, now: number, allowance: number): boolean {
  if (person.lastInteractionAt === undefined) return false
  return now - person.lastInteractionAt < allowance
}

function optinRequestRepeated(ctx: SendContext, pageId: string, psid: string, payload: string): GraphError | null {
  const cooldown = ctx.optinRequestCooldownMs
  if (cooldown === undefined) return null
  const recent = ctx.state.optinRequests.some(
    (r) => r.kind === 'one_time_notif' && r.pageId === pageId && r.psid === psid && r.payload === payload && ctx.now - r.at < cooldown,
  )
  return recent ? errors.optinRequestRepeated() : null
}

function parseRecipient(raw: unknown, param: ParamError): Recipient | { error: GraphError } {
  if (!isRecord(raw) || Object.keys(raw).length === 0) return { error: param('param recipient must be non-empty.') }
  const present = RECIPIENT_FIELDS.filter((f) => raw[f] !== undefined)
  const unsupported = Object.keys(raw).filter((k) => !(RECIPIENT_FIELDS as readonly string[]).includes(k))
  if (unsupported.length > 0) {
    return { error: param(`param recipient has unsupported field ${unsupported[0]}`) }
  }
  if (present.length !== 1) {
    return { error: param('param recipient must hold exactly one of id, one_time_notif_token, notification_messages_token') }
  }
  const field = present[0]
  const value = raw[field]
  if (typeof value !== 'string' || value.length === 0) {
    return { error: param(`param recipient[${field}] must be a non-empty string`) }
  }
  return { field, value }
}

function validateMessage(raw: unknown, param: ParamError): { optinRequest?: OptinRequest } | { error: GraphError } {
  if (raw === undefined || raw === null) return { error: param('param message must be non-empty.') }
  if (!isRecord(raw)) return { error: param('param message must be a JSON object') }
  const hasText = raw.text !== undefined
  const hasAttachment = raw.attachment !== undefined
  if (hasText && hasAttachment) return { error: param('Only one of text or attachment may be set in param message') }
  if (!hasText && !hasAttachment) return { error: param('param message must have text or attachment') }

  if (hasText) {
    if (typeof raw.text !== 'string' || raw.text.trim() === '') {
      return { error: param('param message[text] must be a non-empty UTF-8 encoded string') }
    }
    if (!withinCodePoints(raw.text, MAX_TEXT)) {
      return { error: param(`Length of param message[text] must be less than or equal to ${MAX_TEXT}`) }
    }
    return {}
  }

  const attachment = raw.attachment
  if (!isRecord(attachment)) return { error: param('param message[attachment] must be a JSON object') }
  if (typeof attachment.type !== 'string' || !ATTACHMENT_TYPES.has(attachment.type)) {
    return { error: param('param message[attachment][type] must be one of {image, audio, video, file, template}') }
  }
  const payload = attachment.payload
  if (!isRecord(payload)) return { error: param('param message[attachment][payload] must be non-empty.') }
  if (attachment.type !== 'template') return {}

  if (typeof payload.template_type !== 'string' || payload.template_type === '') {
    return { error: param('param message[attachment][payload][template_type] must be non-empty.') }
  }
  if (payload.template_type === 'notification_messages') {
    const recurring = validateRecurringTemplate(payload, param)
    return 'error' in recurring ? recurring : { optinRequest: { kind: 'notification_messages', ...recurring } }
  }
  if (payload.template_type !== 'one_time_notif_req') return {}
  const otn = validateOtnTemplate(payload, param)
  return 'error' in otn ? otn : { optinRequest: { kind: 'one_time_notif', ...otn } }
}

const PAYLOAD_FIELD = 'param message[attachment][payload]'

function validateTitle(title: unknown, max: number, param: ParamError): { error: GraphError } | null {
  if (typeof title !== 'string' || title.trim() === '') return { error: param(`${PAYLOAD_FIELD}[title] must be non-empty.`) }
  if (!withinCodePoints(title, max)) return { error: param(`Length of ${PAYLOAD_FIELD}[title] must be less than or equal to ${max}`) }
  return null
}

function validateTemplatePayload(value: unknown, param: ParamError): { error: GraphError } | null {
  if (typeof value !== 'string' || value === '') return { error: param(`${PAYLOAD_FIELD}[payload] must be a non-empty string`) }
  return null
}

function validateOtnTemplate(payload: Record<string, unknown>, param: ParamError): OtnRequest | { error: GraphError } {
  const { title, payload: otnPayload } = payload
  const bad = validateTitle(title, MAX_OTN_TITLE, param) ?? validateTemplatePayload(otnPayload, param)
  return bad ?? { title: title as string, payload: otnPayload as string }
}

/** An optional enum field of the template: absent, or one of `allowed`. */
function enumField(payload: Record<string, unknown>, name: string, allowed: readonly string[], param: ParamError) {
  const value = payload[name]
  if (value === undefined || (typeof value === 'string' && allowed.includes(value))) return null
  return { error: param(`${PAYLOAD_FIELD}[${name}] must be one of {${allowed.join(', ')}}`) }
}

/**
 * Meta's notification_messages template: `payload` required; `title` optional (≤ 65, Meta's default
 * "Updates and promotions"); `image_url`, `notification_messages_frequency` (older API versions),
 * `notification_messages_cta_text`, `notification_messages_reoptin`, `notification_messages_timezone`
 * (IANA) optional.
 */
function validateRecurringTemplate(payload: Record<string, unknown>, param: ParamError): RecurringRequest | { error: GraphError } {
  const title = payload.title ?? DEFAULT_RECURRING_TITLE
  const timezone = payload.notification_messages_timezone
  const imageUrl = payload.image_url
  const bad =
    validateTitle(title, MAX_RECURRING_TITLE, param) ??
    validateTemplatePayload(payload.payload, param) ??
    enumField(payload, 'notification_messages_frequency', FREQUENCIES, param) ??
    enumField(payload, 'notification_messages_cta_text', CTA_TEXTS, param) ??
    enumField(payload, 'notification_messages_reoptin', REOPTIN_VALUES, param) ??
    enumField(payload, 'image_aspect_ratio', ['HORIZONTAL', 'SQUARE'], param)
  if (bad) return bad
  if (imageUrl !== undefined && !(typeof imageUrl === 'string' && /^https?:\/\/\S+$/.test(imageUrl))) {
    return { error: param(`${PAYLOAD_FIELD}[image_url] should represent a valid URL`) }
  }
  if (timezone !== undefined && !(typeof timezone === 'string' && isTimeZone(timezone))) {
    return { error: param(`${PAYLOAD_FIELD}[notification_messages_timezone] must be a valid time zone`) }
  }
  return {
    title: title as string,
    payload: payload.payload as string,
    ...(payload.notification_messages_frequency !== undefined ? { frequency: payload.notification_messages_frequency as Frequency } : {}),
    ...(timezone !== undefined ? { timezone: timezone as string } : {}),
  }
}
