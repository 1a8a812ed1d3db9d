import type { FastifyInstance } from 'fastify'

export type TokenKind = 'one_time_notif' | 'notification_messages'

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
   * 'invalid_parameter' (default) answers 100, 'outside_window' answers 10/2018278.
   */
  tokenRefusal?: 'invalid_parameter' | 'outside_window'
  /** When set, a second one_time_notif_req with the same payload to the same person within this many ms gets 613/1893016. */
  optinRequestCooldownMs?: number
  /** Keep only about this many recent entries in `requests` (long soaks); audit() and tokenUses() still count everything. */
  recordLimit?: number
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
  pageId?: string
  recipient: any
  messagingType?: string
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
  issueToken(
    pageId: string,
    psid: string,
    payload: string,
    opts?: { optedInAt?: number; kind?: TokenKind; expiresAt?: number | null },
  ): string
  /** A person who blocked the Page or is otherwise unreachable: sends get 551/1545041 and spend nothing. */
  setPersonAvailable(pageId: string, psid: string, available: boolean): void
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
