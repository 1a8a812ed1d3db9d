import { randomBase64url } from './random.js'
import type { DeliveredMessage, Frequency, RecordedRequest, SentWebhook, TokenKind, UnavailableReason } from './types.js'

const HOUR_MS = 60 * 60 * 1000
export const DAY_MS = 24 * HOUR_MS
export const WINDOW_MS = DAY_MS
// 365 days rather than a calendar year: when the two differ the emulator refuses first, the safe side.
export const OTN_TOKEN_LIFETIME_MS = 365 * DAY_MS

export interface PageRecord {
  id: string
  accessToken: string
  name: string
}

export interface Person {
  pageId: string
  psid: string
  lastInteractionAt?: number
  available: boolean
  /** Why sends are refused while `available` is false (default 'unavailable'). */
  unavailableReason?: UnavailableReason
  /** The person's IANA time zone, given to a recurring opt-in whose template named none (default UTC). */
  timezone?: string
}

export interface TokenRecord {
  token: string
  kind: TokenKind
  pageId: string
  psid: string
  payload: string
  optedInAt: number
  expiresAt: number | null
  uses: number
  /** Recurring tokens only: what the opt-in request asked and what the person did since. */
  recurring?: RecurringState
}

export interface RecurringState {
  title: string
  /** Only when the request asked one (older API versions); the token's calendar period. */
  frequency?: Frequency
  /** The token's time zone: the template's, else the person's. Its calendar periods are counted in it. */
  timezone: string
  stopped: boolean
  /** Set by Meta's re-opt-in refresh: the token that replaced this one, which is then refused as invalid. */
  replacedBy?: string
  /** The last accepted send, for the cooldown and the calendar period. */
  lastSentAt?: number
  /** REFRESHED once the token came from Meta's re-opt-in. */
  userTokenStatus: 'NOT_REFRESHED' | 'REFRESHED'
}

export interface OptinRequestRecord {
  kind: TokenKind
  pageId: string
  psid: string
  title: string
  payload: string
  at: number
  messageId: string
  answered: boolean
  /** notification_messages requests only: the template's options. */
  frequency?: Frequency
  timezone?: string
}

export class EmulatorError extends Error {
  constructor(
    readonly statusCode: 404 | 409,
    message: string,
  ) {
    super(message)
    this.name = 'EmulatorError'
  }
}

export function messageId(): string {
  return 'm_' + randomBase64url(36)
}

export function newToken(): string {
  return randomBase64url(48)
}

const key = (pageId: string, psid: string) => `${pageId}\u0000${psid}`

export class EmulatorState {
  readonly pages = new Map<string, PageRecord>()
  private readonly pagesByToken = new Map<string, PageRecord>()
  private readonly persons = new Map<string, Person>()
  readonly tokens = new Map<string, TokenRecord>()
  readonly optinRequests: OptinRequestRecord[] = []
  private readonly inboxes = new Map<string, DeliveredMessage[]>()
  readonly requests: RecordedRequest[] = []
  readonly webhooks: SentWebhook[] = []
  readonly otnTokenUses = new Map<string, number>()
  readonly totals = { requests: 0, accepted: 0 }
  clockOffset = 0

  constructor(private readonly recordLimit = Number.POSITIVE_INFINITY) {}

  record(request: RecordedRequest): void {
    this.totals.requests += 1
    this.requests.push(request)
    // Trimmed in batches so that a long soak costs amortised O(1) per request.
    if (this.requests.length > this.recordLimit * 1.25) this.requests.splice(0, this.requests.length - this.recordLimit)
  }

  addPage(page: { id: string; accessToken: string; name?: string }): void {
    const previous = this.pages.get(page.id)
    if (previous) this.pagesByToken.delete(previous.accessToken)
    const record = { id: page.id, accessToken: page.accessToken, name: page.name ?? `Page ${page.id}` }
    this.pages.set(page.id, record)
    this.pagesByToken.set(page.accessToken, record)
  }

  pageByToken(accessToken: string | undefined): PageRecord | undefined {
    return accessToken === undefined ? undefined : this.pagesByToken.get(accessToken)
  }

  requirePage(pageId: string): PageRecord {
    const page = this.pages.get(pageId)
    if (!page) throw new EmulatorError(404, `unknown page ${pageId}`)
    return page
  }

  person(pageId: string, psid: string): Person | undefined {
    return this.persons.get(key(pageId, psid))
  }

  touchPerson(pageId: string, psid: string): Person {
    const k = key(pageId, psid)
    let person = this.persons.get(k)
    if (!person) {
      person = { pageId, psid, available: true }
      this.persons.set(k, person)
    }
    return person
  }

  inbox(pageId: string, psid: string): DeliveredMessage[] {
    return this.inboxes.get(key(pageId, psid)) ?? []
  }

  deliver(pageId: string, psid: string, delivered: DeliveredMessage): void {
    const k = key(pageId, psid)
    const list = this.inboxes.get(k)
    if (list) list.push(delivered)
    else this.inboxes.set(k, [delivered])
  }

  issueToken(t: Omit<TokenRecord, 'token' | 'uses'>): TokenRecord {
    const record: TokenRecord = { ...t, token: newToken(), uses: 0 }
    this.tokens.set(record.token, record)
    this.touchPerson(t.pageId, t.psid)
    return record
  }

  /** Counted apart from TokenRecord.uses so that the audit does not trust the code it audits. */
  countOtnAcceptance(token: string): void {
    this.otnTokenUses.set(token, (this.otnTokenUses.get(token) ?? 0) + 1)
  }

  reset(): void {
    this.persons.clear()
    this.tokens.clear()
    this.optinRequests.length = 0
    this.inboxes.clear()
    this.requests.length = 0
    this.totals.requests = 0
    this.totals.accepted = 0
    this.webhooks.length = 0
    this.otnTokenUses.clear()
    this.clockOffset = 0
  }
}
