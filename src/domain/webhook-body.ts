// Meta's webhook bodies, read: the signature check and the parse of a signed body into what it
// changes (tokens, recurring opt-ins, people, what was skipped and why). No I/O; ingest.ts records it.
import { createHmac, timingSafeEqual } from 'node:crypto'
import type { RecurringFrequency, TokenKind } from '../db/types.js'
import { DomainError } from './errors.js'
import { isPageId, isPayload, isPsid, isToken } from './ids.js'
import { isTimeZoneName } from './timezones.js'
import { NO_EXPIRY, RECURRING_LIFETIME_MONTHS } from './lifecycle.js'
import { subjectOf } from './erasure.js'
import { OTN_TOKEN_LIFETIME_MS } from './window.js'

/**
 * True when `header` is `sha256=<hex>` of HMAC-SHA256(raw, secret). Compares fixed-length digests
 * in constant time, over the bytes exactly as received.
 */
export function signatureMatches (raw: Buffer, header: string | undefined, secret: string): boolean {
  const match = /^sha256=([0-9a-f]{64})$/i.exec(header?.trim() ?? '')
  if (!match) return false
  const expected = createHmac('sha256', secret).update(raw).digest()
  return timingSafeEqual(Buffer.from(match[1], 'hex'), expected)
}

export interface TokenRecord {
  kind: TokenKind
  page_id: string
  psid: string
  payload: string
  token: string
  opted_in_at: string
  expires_at: string
}

/**
 * One `notification_messages` event (an opt-in, a re-opt-in, a stop or a resume): the token store
 * applies them in event-time order, so that duplicates and late deliveries change nothing.
 */
export interface RecurringRecord {
  page_id: string
  psid: string
  payload: string
  token: string
  /** The event's time (ISO). */
  at: string
  /** `optin` (the person agreed, or Meta refreshed the token), `stop` or `resume`. */
  event: 'optin' | 'stop' | 'resume'
  title: string | null
  frequency: RecurringFrequency | null
  timezone: string | null
  user_token_status: string | null
  /** `token_expiry_timestamp`; else the brief's lifetime for the frequency from the event; else NO_EXPIRY. */
  expires_at: string
}

export interface SubscriberTouch {
  page_id: string
  psid: string
  first_seen_at: string
  /** Null when the person only opted in (an opt-in does not open the window). */
  last_interaction_at: string | null
}

/**
 * Why an event was not recorded. Ignored: a kind the service does not record (it stays in the raw
 * log). Rejected: a kind it records, but whose ids or token it cannot keep.
 */
export const IGNORED_REASONS = [
  'echo', 'receipt', 'unsupported_event', 'unsupported_optin', 'not_page_object', 'changes_field', 'page_unknown', 'sender_unknown',
] as const
export const REJECTED_REASONS = ['invalid_page_id', 'invalid_psid', 'invalid_token', 'invalid_payload'] as const
export type SkipReason = (typeof IGNORED_REASONS)[number] | (typeof REJECTED_REASONS)[number]
const REJECTED = new Set<SkipReason>(REJECTED_REASONS)

export interface Delivery {
  object: string
  /**
   * The Page the stored body belongs to: its first entry's id when that is a Page id, else '' (none
   * known). Meta may batch several Pages' entries in one body; it is stored whole, once, on this Page
   * (migration 20261202120000 gave stored bodies the same rule).
   */
  page_id: string
  /** One per distinct one-time token. */
  tokens: TokenRecord[]
  /** Every recurring (`notification_messages`) event, as delivered. */
  recurring: RecurringRecord[]
  /** One per (page, person): the earliest first-seen and latest interaction of the delivery. */
  subscribers: SubscriberTouch[]
  interactions: number
  ignored_events: number
  rejected_events: number
  /** Events not recorded, by reason. */
  skipped: Partial<Record<SkipReason, number>>
  /** Events whose own time was missing or unreadable, stamped with the entry's time or the receipt time. */
  restamped_events: number
  /** The ids each event names together, whatever its kind or object (namedIds): what erasure finds the stored body by. */
  named: string[][]
}

type Json = Record<string, unknown>

const isObject = (value: unknown): value is Json =>
  typeof value === 'object' && value !== null && !Array.isArray(value)

// Meta sends ids as strings; accept numbers too, as some tools re-serialise them.
function idOf (value: unknown): string | undefined {
  const id = isObject(value) ? value.id : undefined
  if (typeof id === 'string' && id.length > 0) return id
  if (typeof id === 'number' && Number.isSafeInteger(id) && id >= 0) return String(id)
  return undefined
}

/** Meta's first Messenger Platform year: no event is older. */
const EARLIEST_EVENT_MS = Date.UTC(2015, 0, 1)
/** Later than the receipt by more than this is not a clock's skew but a wrong value. */
const LATEST_SKEW_MS = 24 * 60 * 60 * 1000
/** Below this an epoch value is seconds (10^11 ms is 1973; 10^11 s is the year 5138). */
const SECONDS_BELOW = 1e11
const NUMERIC = /^\s*\d+(\.\d+)?\s*$/

/**
 * An event time in epoch milliseconds, read the ways Meta writes it (MESSENGER.md §8): epoch
 * milliseconds, epoch seconds, either as a numeric string. Undefined when absent or implausible
 * (before 2015, or more than a day after the receipt), so the caller falls back.
 */
export function eventTimeMs (value: unknown, receivedAt: number): number | undefined {
  const n = typeof value === 'number' ? value : typeof value === 'string' && NUMERIC.test(value) ? Number(value) : NaN
  if (!Number.isFinite(n) || n <= 0) return undefined
  const ms = Math.round(n < SECONDS_BELOW ? n * 1000 : n)
  return ms >= EARLIEST_EVENT_MS && ms <= receivedAt + LATEST_SKEW_MS ? ms : undefined
}

type EventKind = 'otn_optin' | 'recurring' | 'interaction' | SkipReason

function kindOf (event: Json): EventKind {
  if (isObject(event.optin)) {
    const { type } = event.optin
    if (type === 'one_time_notif_req') return typeof event.optin.one_time_notif_token === 'string' ? 'otn_optin' : 'invalid_token'
    if (type === 'notification_messages') return typeof event.optin.notification_messages_token === 'string' ? 'recurring' : 'invalid_token'
    return 'unsupported_optin'
  }
  if (isObject(event.message)) return event.message.is_echo === true ? 'echo' : 'interaction'
  if (isObject(event.postback) || isObject(event.reaction) || isObject(event.referral)) return 'interaction'
  if (isObject(event.read) || isObject(event.delivery)) return 'receipt'
  return 'unsupported_event'
}

/**
 * Parses a signed body into what it changes. Not JSON, or not Meta's envelope (`object` a string,
 * `entry` an array), is refused (invalid_webhook_body); anything inside the envelope is judged event by event: recorded,
 * ignored (a kind not recorded) or rejected (ids or a token the service cannot keep), each counted
 * with its reason, never failing the delivery (it stays whole in the raw log). Only `object: "page"`
 * deliveries are read for events.
 */
export function parseDelivery (raw: Buffer, receivedAt: Date = new Date()): Delivery {
  let body: unknown
  try {
    body = JSON.parse(raw.toString('utf8'))
  } catch {
    // The parser's message quotes the body, which may hold a token: say nothing more.
    throw new DomainError('invalid_webhook_body', 'The signed body is not JSON.')
  }
  const object = isObject(body) && body.object === undefined ? 'page' : isObject(body) ? body.object : undefined
  if (!isObject(body) || typeof object !== 'string' || object === '' || !Array.isArray(body.entry)) {
    throw new DomainError('invalid_webhook_body',
      'The signed body is not a webhook envelope: it needs "entry" (an array) and, when present, "object" (a string).')
  }

  // Meta always names the object; some clients' test harnesses leave it out of Messenger bodies.
  const first = idOf(body.entry[0])
  const delivery: Delivery = {
    object, page_id: first !== undefined && isPageId(first) ? first : '', tokens: [], recurring: [], subscribers: [], interactions: 0, ignored_events: 0, rejected_events: 0, skipped: {}, restamped_events: 0,
    named: namedIds(body),
  }
  const skip = (reason: SkipReason, count = 1): void => {
    if (count === 0) return
    delivery.skipped[reason] = (delivery.skipped[reason] ?? 0) + count
    if (REJECTED.has(reason)) delivery.rejected_events += count
    else delivery.ignored_events += count
  }
  if (object !== 'page') {
    skip('not_page_object', body.entry.length)
    return delivery
  }

  const now = receivedAt.getTime()
  const tokens = new Map<string, TokenRecord>()
  const people = new Map<string, { page_id: string, psid: string, first: number, last: number | null }>()
  const touch = (pageId: string, psid: string, at: number, interaction: boolean): void => {
    const key = `${pageId}\u0000${psid}`
    const person = people.get(key) ?? { page_id: pageId, psid, first: at, last: null }
    person.first = Math.min(person.first, at)
    if (interaction) person.last = Math.max(person.last ?? at, at)
    people.set(key, person)
  }

  for (const entry of body.entry) {
    if (!isObject(entry)) {
      skip('unsupported_event')
      continue
    }
    // The App Dashboard's test button posts `changes` (field/value pairs) instead of events.
    if (Array.isArray(entry.changes)) skip('changes_field', entry.changes.length)
    const entryTime = eventTimeMs(entry.time, now)
    const events = [entry.messaging, entry.standby].flatMap((list) => Array.isArray(list) ? list : [])
    for (const event of events) {
      if (!isObject(event)) {
        skip('unsupported_event')
        continue
      }
      const kind = kindOf(event)
      if (kind !== 'otn_optin' && kind !== 'recurring' && kind !== 'interaction') {
        skip(kind)
        continue
      }
      // Test builders and some deliveries omit `recipient`: the entry names the Page.
      const pageId = idOf(event.recipient) ?? idOf(entry)
      const psid = idOf(event.sender)
      if (!pageId) { skip('page_unknown'); continue }
      if (!psid) { skip('sender_unknown'); continue }
      if (!isPageId(pageId)) { skip('invalid_page_id'); continue }
      if (!isPsid(psid)) { skip('invalid_psid'); continue }
      const own = eventTimeMs(event.timestamp, now)
      if (own === undefined) delivery.restamped_events++
      const at = own ?? entryTime ?? now
      if (kind === 'interaction') {
        delivery.interactions++
        touch(pageId, psid, at, true)
        continue
      }
      const optin = event.optin as Json
      if (kind === 'recurring') {
        const record = recurringRecord(optin, pageId, psid, at)
        if (typeof record === 'string') { skip(record); continue }
        touch(pageId, psid, at, false)
        delivery.recurring.push(record)
        continue
      }
      const token = optin.one_time_notif_token as string
      const payload = typeof optin.payload === 'string' ? optin.payload : ''
      if (!isToken(token)) { skip('invalid_token'); continue }
      if (payload !== '' && !isPayload(payload)) { skip('invalid_payload'); continue }
      touch(pageId, psid, at, false)
      const known = tokens.get(token)
      // The same token twice in one body: keep one, with the earliest opt-in time.
      if (known && Date.parse(known.opted_in_at) <= at) continue
      tokens.set(token, {
        kind: 'one_time_notif',
        page_id: pageId,
        psid,
        payload,
        token,
        opted_in_at: new Date(at).toISOString(),
        expires_at: new Date(at + OTN_TOKEN_LIFETIME_MS).toISOString(),
      })
    }
  }

  delivery.tokens = [...tokens.values()]
  delivery.subscribers = [...people.values()].map((p) => ({
    page_id: p.page_id,
    psid: p.psid,
    first_seen_at: new Date(p.first).toISOString(),
    last_interaction_at: p.last === null ? null : new Date(p.last).toISOString(),
  }))
  return delivery
}

/**
 * The ids each event of a webhook body names together: its entry's id, its sender's and its
 * recipient's, for every event of every entry (messaging and standby), whatever its kind (an echo, a
 * receipt, an event not recorded) or object. A stored body is encrypted, so erasure cannot search it
 * for a PSID: it finds the body by the erasure subjects of these ids taken in pairs (mentionSubjects),
 * which name a person on a Page however the event places them (the Page as recipient, or as sender in
 * an echo). Anything not JSON names no one.
 */
export function namedIds (body: unknown): string[][] {
  if (Buffer.isBuffer(body)) {
    try {
      body = JSON.parse(body.toString('utf8'))
    } catch {
      return []
    }
  }
  const named: string[][] = []
  if (!isObject(body) || !Array.isArray(body.entry)) return named
  for (const entry of body.entry) {
    if (!isObject(entry)) continue
    const events = [entry.messaging, entry.standby].flatMap((list) => Array.isArray(list) ? list : [])
    for (const event of events) {
      if (!isObject(event)) continue
      const ids = new Set([idOf(entry), idOf(event.sender), idOf(event.recipient)].filter((id): id is string => id !== undefined))
      if (ids.size > 1) named.push([...ids])
    }
  }
  return named
}

/**
 * The erasure subjects (subjectOf) of every (Page, person) pair a body's events name (namedIds):
 * every ordered pair of ids named together, distinct, in a stable order. What `webhook_events.mentions`
 * holds and erasure looks a person up in.
 */
export function mentionSubjects (named: string[][], key: Buffer): Buffer[] {
  const pairs = new Map<string, [string, string]>()
  for (const ids of named) {
    for (const a of ids) for (const b of ids) if (a !== b) pairs.set(JSON.stringify([a, b]), [a, b])
  }
  return [...pairs.values()].map(([pageId, psid]) => subjectOf(key, pageId, psid)).sort(Buffer.compare)
}

const FREQUENCIES = new Set<string>(['DAILY', 'WEEKLY', 'MONTHLY'])

/** A status as Meta spells it, either way (`STOP NOTIFICATIONS`, `STOP_NOTIFICATIONS`). */
function statusOf (value: unknown): 'stop' | 'resume' | undefined {
  const status = typeof value === 'string' ? value.trim().toUpperCase().replace(/[\s_]+/g, '_') : ''
  return status === 'STOP_NOTIFICATIONS' ? 'stop' : status === 'RESUME_NOTIFICATIONS' ? 'resume' : undefined
}

/** `token_expiry_timestamp` in epoch milliseconds (or seconds, as a number or numeric string). */
function expiryMs (value: unknown): number | undefined {
  const n = typeof value === 'number' ? value : typeof value === 'string' && NUMERIC.test(value) ? Number(value) : NaN
  if (!Number.isFinite(n) || n <= 0) return undefined
  const ms = Math.round(n < SECONDS_BELOW ? n * 1000 : n)
  return ms >= EARLIEST_EVENT_MS && ms < NO_EXPIRY.getTime() ? ms : undefined
}

function addMonths (ms: number, months: number): number {
  const d = new Date(ms)
  d.setUTCMonth(d.getUTCMonth() + months)
  return d.getTime()
}

/** A recurring event as the token store applies it, or why it cannot be kept. */
function recurringRecord (optin: Json, pageId: string, psid: string, at: number): RecurringRecord | SkipReason {
  const token = optin.notification_messages_token as string
  const payload = typeof optin.payload === 'string' ? optin.payload : ''
  if (!isToken(token)) return 'invalid_token'
  if (payload !== '' && !isPayload(payload)) return 'invalid_payload'
  const frequency = typeof optin.notification_messages_frequency === 'string' && FREQUENCIES.has(optin.notification_messages_frequency.toUpperCase())
    ? optin.notification_messages_frequency.toUpperCase() as RecurringFrequency
    : null
  // A zone this runtime does not know would break the pacing's calendar: the Page's zone stands in.
  const timezone = typeof optin.notification_messages_timezone === 'string' && isTimeZoneName(optin.notification_messages_timezone)
    ? optin.notification_messages_timezone
    : null
  const expires = expiryMs(optin.token_expiry_timestamp) ?? (frequency ? addMonths(at, RECURRING_LIFETIME_MONTHS[frequency]) : NO_EXPIRY.getTime())
  return {
    page_id: pageId,
    psid,
    payload,
    token,
    at: new Date(at).toISOString(),
    event: statusOf(optin.notification_messages_status) ?? 'optin',
    title: typeof optin.title === 'string' ? optin.title : null,
    frequency,
    timezone,
    user_token_status: typeof optin.user_token_status === 'string' ? optin.user_token_status : null,
    expires_at: new Date(expires).toISOString(),
  }
}
