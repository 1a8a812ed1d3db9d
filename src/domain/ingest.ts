import { createHmac, timingSafeEqual } from 'node:crypto'
import { sql } from 'kysely'
import type { Database } from '../db/database.js'
import { activeKeyring } from '../crypto/secret-box.js'
import { GroupCommit } from '../db/group-commit.js'
import type { RecurringFrequency, TokenKind } from '../db/types.js'
import { DomainError } from './errors.js'
import { isPageId, isPayload, isPsid, isToken } from './ids.js'
import { isTimeZoneName } from './timezones.js'
import { NO_EXPIRY, RECURRING_LIFETIME_MONTHS } from './lifecycle.js'
import { ingestHistory } from './consent-history.js'
import { erasureKey, notErased, subjectOf } from './erasure.js'
import { insertTokens, recordRecurring, storedToken } from './token-store.js'
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

export interface Recorded {
  /** The stored delivery: this one's, or for a duplicate the one stored first. */
  event_id: string
  /** The same bytes were delivered before (Meta re-delivers for up to 36 hours): nothing was stored again. */
  duplicate: boolean
  /** Usable tokens this delivery added; a token already held (a re-delivery) is not counted again. */
  tokens_recorded: number
  /** Tokens this delivery added already expired (opted in over a year before): kept, never usable. */
  tokens_expired: number
}

/** What a delivery changed, as the webhook answers it (WebhookReceiptSchema). */
export function receiptOf (delivery: Delivery, recorded: Recorded) {
  const received = delivery.tokens.length + new Set(delivery.recurring.filter((r) => r.event === 'optin').map((r) => `${r.page_id}\u0000${r.token}`)).size
  const reasons: Record<string, number> = { ...delivery.skipped }
  if (recorded.tokens_expired > 0) reasons.token_expired = recorded.tokens_expired
  return {
    event_id: recorded.event_id,
    duplicate: recorded.duplicate,
    object: delivery.object,
    tokens_received: received,
    tokens_recorded: recorded.tokens_recorded,
    tokens_unusable: recorded.tokens_expired,
    tokens_already_held: received - recorded.tokens_recorded - recorded.tokens_expired,
    interactions: delivery.interactions,
    ignored_events: delivery.ignored_events,
    rejected_events: delivery.rejected_events,
    restamped_events: delivery.restamped_events,
    recurring_stops: delivery.recurring.filter((r) => r.event === 'stop').length,
    recurring_resumes: delivery.recurring.filter((r) => r.event === 'resume').length,
    reasons,
  }
}

/** One signed delivery, parsed, waiting to be stored. */
export interface DeliveryInput {
  raw: Buffer
  signature: string
  delivery: Delivery
}

/**
 * Stores deliveries in one statement: one round trip and one transaction for all of them, so a
 * failure leaves nothing behind and Meta's retry brings it all again. Each raw body goes into
 * webhook_events (sealed: docs/SECURITY.md, with `mentions`, the erasure subjects of the people its
 * events name), each new token into the token store (naming its event), each person's first-seen and
 * last-interaction times into subscribers. A body already stored (the same bytes: its keyed digest
 * under the current key is unique among a Page's stored deliveries) is a re-delivery: it is answered
 * with the first one's event and changes nothing; the unique index decides between concurrent
 * statements, so it holds across instances. A copy stored under an older key, or before encryption
 * (the unkeyed SHA-256), is found by its digest under that key (keyedDigests) until rotate-keys
 * re-digests it. Rows are written in key order (events by digest, tokens, people) and tokens and people
 * only after every event row is settled, so that concurrent statements over the same deliveries or
 * people never deadlock; a token already held is left as it is (another POST with it); a person's
 * last interaction only moves forward, however deliveries are ordered. Times later than the
 * database's clock are held at its `now()`: a skewed clock must not keep the window open longer than
 * it is.
 */
export async function recordDeliveries (db: Database, inputs: DeliveryInput[], subjectKey: Buffer = erasureKey({})): Promise<Recorded[]> {
  // Each person's erasure digest (erasure.ts): an event about an erased person older than the erasure is not recorded.
  const subject = (r: { page_id: string, psid: string }): string => subjectOf(subjectKey, r.page_id, r.psid).toString('hex')
  const tokens = inputs.flatMap(({ delivery }, ord) => delivery.tokens.map((t) => ({ ...t, ord, subject: subject(t) })))
  const recurring = inputs.flatMap(({ delivery }, ord) => delivery.recurring.map((r) => ({ ...r, ord, subject: subject(r) })))
  const people = inputs.flatMap(({ delivery }, ord) => delivery.subscribers.map((p) => ({ ...p, ord, subject: subject(p), at: p.last_interaction_at ?? p.first_seen_at })))
  const keyring = activeKeyring()
  const bodies = inputs.map((i) => keyring.sealBytes('webhook_events.body', i.raw))
  const digests = inputs.map((i) => keyring.digest('webhook_body', i.raw))
  // Every digest a stored copy of the body may carry (each configured key's, then the unkeyed SHA-256), one row each.
  const lookups = inputs.flatMap((i, ord) => keyring.digests('webhook_body', i.raw).map((digest) => ({ ord, digest })))
  const named = inputs.flatMap(({ delivery }, ord) => mentionSubjects(delivery.named, subjectKey).map((subject) => ({ ord, subject })))
  // A delivery that mentions a person in an event older than their erasure (Meta re-delivering what
  // the erasure deleted) is stored without its body: its digest still answers a later re-delivery as
  // a duplicate, and the person's id does not come back into webhook_events.
  const mentions = [...tokens.map((t) => ({ ord: t.ord, page_id: t.page_id, subject: t.subject, at: t.opted_in_at })),
    ...recurring.map((r) => ({ ord: r.ord, page_id: r.page_id, subject: r.subject, at: r.at })),
    ...people.map((p) => ({ ord: p.ord, page_id: p.page_id, subject: p.subject, at: p.at }))]
  // Across the deliveries of one statement, the rules parseDelivery applies within one body: a token
  // is recorded once, from its earliest opt-in (for that delivery); a person is written once, with
  // the earliest first sight and the latest interaction. `prior` is a copy already stored under any
  // key's digest (or the unkeyed one); for the others, the no-op update on a digest already stored
  // returns that row (waiting for a concurrent statement that stores it to commit); `fresh` holds the
  // deliveries whose own row was stored, and the sorts below read all of it before writing. A
  // withheld body is stored empty and mentions no one.
  const { rows } = await sql<Recorded>`
    with withheld as (
      select distinct (m.value ->> 'ord')::int as ord
        from jsonb_array_elements(${JSON.stringify(mentions)}::jsonb) m
       where exists (select 1 from consent_history h
                      where h.type = 'erased' and h.page_id = m.value ->> 'page_id'
                        and h.subject = decode(m.value ->> 'subject', 'hex')
                        and h.at >= (m.value ->> 'at')::timestamptz)
    ), input as (
      select nextval(pg_get_serial_sequence('webhook_events', 'id')) as id, e.ord, e.page_id, e.signature, e.object,
             case when e.ord in (select ord from withheld) then ''::bytea else e.body end as body, e.digest,
             case when e.ord in (select ord from withheld) then '{}'::bytea[]
                  else coalesce((select array_agg(m.subject order by m.subject)
                                   from unnest(${named.map((m) => m.ord)}::int[], ${named.map((m) => m.subject)}::bytea[]) as m(ord, subject)
                                  where m.ord = e.ord), '{}'::bytea[]) end as mentions
        from unnest(${inputs.map((_, i) => i)}::int[], ${inputs.map((i) => i.delivery.page_id)}::text[],
                    ${inputs.map((i) => i.signature)}::text[], ${inputs.map((i) => i.delivery.object)}::text[],
                    ${bodies}::bytea[], ${digests}::bytea[]) as e(ord, page_id, signature, object, body, digest)
    ), prior as (
      select distinct on (input.ord) input.ord, w.id
        from input
        join unnest(${lookups.map((l) => l.ord)}::int[], ${lookups.map((l) => l.digest)}::bytea[]) as l(ord, digest) on l.ord = input.ord
        join webhook_events w on w.page_id = input.page_id and w.digest = l.digest
       order by input.ord, w.id
    ), event as (
      insert into webhook_events (id, page_id, signature, object, body, digest, mentions) overriding system value
      select distinct on (page_id, digest) id, page_id, signature, object, body, digest, mentions from input
       where ord not in (select ord from prior)
       order by page_id, digest, ord
      on conflict (page_id, digest) where digest is not null do update set digest = excluded.digest
      returning id, page_id, digest
    ), fresh as (
      select input.ord, input.id from input join event on event.id = input.id
    ), new_tokens as (${insertTokens(notErased(JSON.stringify(tokens.map(storedToken)), 'opted_in_at'), 'fresh')}
    ), ${recordRecurring(notErased(JSON.stringify(recurring.map(storedToken)), 'at'), 'fresh')}, history as (${ingestHistory('new_tokens', 'rec_in', 'rec_written')}
    ), added as (
      select webhook_event_id, state from new_tokens
      union all
      select webhook_event_id, state from rec_written where inserted
    ), touched as (
      insert into subscribers (page_id, psid, first_seen_at, last_interaction_at)
      select s.page_id, s.psid, least(min(s.first_seen_at), now()),
             case when max(s.last_interaction_at) is not null then least(max(s.last_interaction_at), now()) end
      from jsonb_to_recordset(${notErased(JSON.stringify(people), 'at')})
        as s(ord int, page_id text, psid text, first_seen_at timestamptz, last_interaction_at timestamptz)
        join fresh on fresh.ord = s.ord
      group by s.page_id, s.psid
      order by s.page_id, s.psid
      on conflict (page_id, psid) do update set
        first_seen_at = least(subscribers.first_seen_at, excluded.first_seen_at),
        last_interaction_at = greatest(subscribers.last_interaction_at, excluded.last_interaction_at),
        updated_at = now()
    )
    select coalesce(prior.id, event.id)::text as event_id, coalesce(prior.id, event.id) <> input.id as duplicate,
           count(added.webhook_event_id) filter (where added.state = 'available')::int as tokens_recorded,
           count(added.webhook_event_id) filter (where added.state = 'expired')::int as tokens_expired
      from input
      left join prior on prior.ord = input.ord
      left join event on prior.ord is null and event.page_id = input.page_id and event.digest = input.digest
      left join added on added.webhook_event_id = input.id
     group by input.ord, input.id, event.id, prior.id
     order by input.ord
  `.execute(db)
  return rows
}

/**
 * Group commit for webhook deliveries (see GroupCommit): a POST is answered only once its delivery
 * is committed; deliveries that arrive while a statement runs go together in the next one.
 */
export class DeliveryWriter extends GroupCommit<DeliveryInput, Recorded> {
  /** `subjectKey`: the erasure digest's key (erasureKey of the config). */
  constructor (db: Database, maxBatch = 100, maxInFlight = 2, subjectKey: Buffer = erasureKey({})) {
    super((inputs) => recordDeliveries(db, inputs, subjectKey), maxBatch, maxInFlight)
  }
}
