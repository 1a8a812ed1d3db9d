import type { FastifyInstance } from 'fastify'

export type TokenKind = 'one_time_notif' | 'notification_messages'

/** A recurring opt-in's frequency, asked by the template on older API versions. */
export type Frequency = 'DAILY' | 'WEEKLY' | 'MONTHLY'
export const FREQUENCIES: readonly Frequency[] = ['DAILY', 'WEEKLY', 'MONTHLY']

/** How a stop/resume webhook spells `notification_messages_status`: Meta's table has a space, real bodies an underscore. */
export type StatusSpelling = 'underscore' | 'space'
export const STATUS_SPELLINGS: readonly StatusSpelling[] = ['underscore', 'space']

/**
 * How webhooks stamp `timestamp` and `entry[].time`: epoch ms numbers; integer epoch seconds; the ms
 * value as a decimal string; no `timestamp` on the event (entry.time in ms); or 'mixed', one webhook
 * each in the order milliseconds, seconds, string, omitted, then again.
 */
export type WebhookStamps = 'milliseconds' | 'seconds' | 'string' | 'omitted' | 'mixed'
export const WEBHOOK_STAMPS: readonly WebhookStamps[] = ['milliseconds', 'seconds', 'string', 'omitted', 'mixed']

/** How a used, unknown, expired or foreign OTN token is refused (see EmulatorOptions.tokenRefusal). */
export type TokenRefusal = 'invalid_parameter' | 'outside_window' | 'generic_parameter'
export const TOKEN_REFUSALS: readonly TokenRefusal[] = ['invalid_parameter', 'outside_window', 'generic_parameter']

export type ParamErrors = 'detailed' | 'generic'
export const PARAM_ERRORS: readonly ParamErrors[] = ['detailed', 'generic']

/** Why a person cannot be messaged: 551/1545041, 200 (no subcode) or 10 (no subcode). */
export type UnavailableReason = 'unavailable' | 'not_receiving' | 'blocked'
export const UNAVAILABLE_REASONS: readonly UnavailableReason[] = ['unavailable', 'not_receiving', 'blocked']

export interface EmulatorOptions {
  /** Signs webhooks (X-Hub-Signature-256) and checks appsecret_proof. */
  appSecret?: string
  /** With appSecret: requests without a valid appsecret_proof are refused (code 100). */
  requireProof?: boolean
  /** Where person actions post webhooks (the service's POST /webhooks/messenger). */
  webhookUrl?: string
  /** Epoch ms clock, default Date.now. */
  now?: () => number
  logger?: boolean
  /** Source of randomness for fault rates, default Math.random. */
  random?: () => number
  /**
   * How a used, unknown, expired or foreign OTN token is refused. Meta documents no dedicated code:
   * 'invalid_parameter' (default) answers 100 naming the parameter, 'outside_window' answers
   * 10/2018278, 'generic_parameter' the bare "(#100) Invalid parameter".
   */
  tokenRefusal?: TokenRefusal
  /** When set, a second one_time_notif_req with the same payload to the same person within this many ms gets 613/1893016. */
  optinRequestCooldownMs?: number
  /** How webhooks stamp `timestamp` and `entry[].time`, default 'milliseconds'. */
  webhookStamps?: WebhookStamps
  /** Webhook events carry no `recipient` (entry.id still names the Page), default false. */
  omitRecipient?: boolean
  /** 'generic': parameter refusals answer the bare "(#100) Invalid parameter" instead of a detailed text. Default 'detailed'. */
  paramErrors?: ParamErrors
  /** Keep only about this many recent entries in `requests` (long soaks); audit() and tokenUses() still count everything. */
  recordLimit?: number
  /** Hours between two sends with one recurring token (Meta: 48 since September 2025, 24 before). Default 48. */
  recurringCooldownHours?: number
}

/** The options that can change at run time (`settings()`, `/_emulator/settings`); reset() restores the creation-time ones. */
export interface EmulatorSettings {
  webhookStamps: WebhookStamps
  omitRecipient: boolean
  paramErrors: ParamErrors
  tokenRefusal: TokenRefusal
  /** null: repeated opt-in requests are not limited. */
  optinRequestCooldownMs: number | null
  /** Hours between two sends with one recurring (notification_messages) token; 0: no cooldown. */
  recurringCooldownHours: number
}

export interface FaultConfig {
  latencyMs?: number
  errorRate?: number
  error?: { status?: number; code: number; subcode?: number; message?: string }
  http5xxRate?: number
  hangRate?: number
  resetRate?: number
  processThenFail?: 'hang' | 'reset' | null
  maxRps?: number
}

export type InjectedFault = 'rate_limit' | 'error_rate' | 'http_5xx' | 'hang' | 'reset'

export interface RecordedRequest {
  at: number
  method: string
  path: string
  /** The Graph API version in the path, as requested. */
  version: string
  /** The version that served the call (a retired one is served by the oldest still available); absent for a malformed version. */
  servedVersion?: string
  pageId?: string
  recipient: any
  messagingType?: string
  tag?: string
  notificationType?: string
  message: any
  /** accepted: the send took effect (even if its answer was then lost); error: a Graph error body; fault: no Graph answer. */
  outcome: 'accepted' | 'error' | 'fault'
  error?: { code: number; subcode?: number }
  messageId?: string
  tokenUsed?: string
  /** Set when the outcome was shaped by injected faults. */
  fault?: InjectedFault
}

export interface DeliveredMessage {
  messageId: string
  at: number
  message: any
  via: 'window' | 'one_time_notif_token' | 'notification_messages_token'
  token?: string
}

export interface SentWebhook {
  at: number
  pageId: string
  psid: string
  event: 'message' | 'optin'
  body: string
  status: number | null
  error?: string
}

export interface WebhookResult {
  status: number | null
  /** Set when the webhook could not be delivered at all (connection refused, timeout). */
  error?: string
}

/** A recurring (notification_messages) token as the emulator holds it. */
export interface RecurringTokenView {
  token: string
  payload: string
  title: string
  frequency?: Frequency
  timezone: string
  /** replaced: Meta's refresh issued a newer one; refused as invalid like an expired one. */
  status: 'active' | 'stopped' | 'replaced' | 'expired'
  userTokenStatus: 'NOT_REFRESHED' | 'REFRESHED'
  optedInAt: number
  expiresAt: number | null
  lastSentAt?: number
  /** Accepted sends. */
  uses: number
}

/** Totals since start or reset(), independent of recordLimit. */
export interface Audit {
  requests: number
  accepted: number
  tokens_accepted: number
  double_spends: number
}

export interface Emulator {
  app: FastifyInstance
  listen(port?: number, host?: string): Promise<string>
  close(): Promise<void>
  addPage(page: { id: string; accessToken: string; name?: string }): void
  personWrites(pageId: string, psid: string, text?: string): Promise<WebhookResult>
  clickNotifyMe(pageId: string, psid: string, opts?: { payload?: string }): Promise<{ token: string } & WebhookResult>
  /**
   * Many people at once, for load: people `${psidPrefix}0` to `${psidPrefix}${people - 1}` write to
   * the Page (`writes`: their windows open) and/or click Notify Me on `payload` (`tokensPerPerson`
   * tokens each), delivered as batched signed webhooks of up to `perDelivery` entries. Not recorded
   * in `webhooks`.
   */
  crowd(pageId: string, opts: { people: number; psidPrefix: string; payload?: string; tokensPerPerson?: number; writes?: boolean; perDelivery?: number }): Promise<{ people: number; events: number; deliveries: number; failedDeliveries: number }>
  /**
   * The person accepts Meta's notification_messages request: the latest unanswered one, or the latest
   * on `payload` (with `payload` and none delivered, a token on it all the same). Issues a recurring
   * token and posts the signed opt-in webhook. `timezone` is the person's (IANA), used when the
   * template named none; default UTC.
   */
  acceptRecurring(pageId: string, psid: string, opts?: { payload?: string; timezone?: string }): Promise<{ token: string } & WebhookResult>
  /** The person stops the topic of their latest recurring token (on `payload` when given): 10/1893015 until resumed. */
  stopRecurring(pageId: string, psid: string, opts?: { payload?: string; spelling?: StatusSpelling }): Promise<{ token: string } & WebhookResult>
  resumeRecurring(pageId: string, psid: string, opts?: { payload?: string; spelling?: StatusSpelling }): Promise<{ token: string } & WebhookResult>
  /** Meta's re-opt-in: a new token (REFRESHED, new expiry) replaces the latest one, which is then invalid. */
  refreshRecurring(pageId: string, psid: string, opts?: { payload?: string }): Promise<{ token: string; replaced: string } & WebhookResult>
  recurringTokens(pageId: string, psid: string): RecurringTokenView[]
  issueToken(
    pageId: string,
    psid: string,
    payload: string,
    opts?: {
      optedInAt?: number
      kind?: TokenKind
      expiresAt?: number | null
      /** notification_messages only: the opt-in's frequency, time zone (default UTC) and title. */
      frequency?: Frequency
      timezone?: string
      title?: string
    },
  ): string
  /**
   * A person who cannot be messaged: sends spend nothing and get, by reason, 551/1545041
   * ('unavailable', the default), 200 without subcode ('not_receiving') or 10 without subcode ('blocked').
   */
  setPersonAvailable(pageId: string, psid: string, available: boolean, reason?: UnavailableReason): void
  /** The current run-time settings, after merging `patch` when given (RangeError for an invalid value). */
  settings(patch?: Partial<EmulatorSettings>): EmulatorSettings
  setFaults(f: FaultConfig, pageId?: string): void
  clearFaults(): void
  readonly requests: RecordedRequest[]
  readonly webhooks: SentWebhook[]
  /** Posts an already-sent webhook again, byte for byte (Meta delivers at least once). Default: the last one. */
  redeliverWebhook(index?: number): Promise<WebhookResult>
  inbox(pageId: string, psid: string): DeliveredMessage[]
  /** OTN token -> times accepted. Recurring tokens are reusable and not counted here. */
  tokenUses(): Map<string, number>
  doubleSpends(): string[]
  audit(): Audit
  /** The emulator's clock: options.now() plus every advanceClock(). */
  now(): number
  advanceClock(ms: number): void
  reset(): void
}
