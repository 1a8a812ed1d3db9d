import type { ColumnType, Generated, Insertable, Selectable } from 'kysely'
import type { GraphError } from '../graph/errors.js'
import type { AudienceFilter } from '../domain/audience.js'
import type { NotificationStatus, Route, TokenKind, TokenOutcome, TokenState } from '../domain/lifecycle.js'

type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>
type CreatedAt = ColumnType<Date, Date | string | undefined, never>
type Json<T = unknown> = ColumnType<T, string, string>

// The lifecycle's states are defined once, in src/domain/lifecycle.ts.
export type { NotificationStatus, TokenKind, TokenState } from '../domain/lifecycle.js'
export type NotificationRoute = Route
/** What became of the token a notification held, as of its outcome. */
export type NotificationTokenState = TokenOutcome
export type MessagingType = 'UPDATE' | 'RESPONSE' | 'MESSAGE_TAG'

export interface PagesTable {
  id: string
  name: string
  access_token: string | null
  /** Broadcast sends per second for this Page (migration 20261202010000); null: the service's default. */
  broadcast_rate_per_second: ColumnType<number | null, number | null | undefined, number | null>
  /** IANA time zone of the Page's calendar (recurring notifications' periods; migration 20261202150000). */
  timezone: ColumnType<string, string | undefined, string>
  healthy: Generated<boolean>
  last_error: Json<GraphError & { at: string }> | null
  /** The name of the API key that created it (migration 20261203010000); null: before that, or not by a key. */
  created_by: ColumnType<string | null, string | null | undefined, never>
  created_at: CreatedAt
  updated_at: Timestamp
}

export interface TopicsTable {
  id: Generated<string>
  page_id: string
  name: string
  title: string
  payload: string
  /** The name of the API key that created it (migration 20261203010000); null: before that, or not by a key. */
  created_by: ColumnType<string | null, string | null | undefined, never>
  created_at: CreatedAt
  updated_at: Timestamp
}

export interface OptinTokensTable {
  id: Generated<string>
  kind: ColumnType<TokenKind, TokenKind | undefined, TokenKind>
  page_id: string
  psid: string
  payload: string
  /** Sealed (secret-box, column `optin_tokens.token`); legacy rows hold the token in clear. */
  token: string
  /**
   * keyedDigest('optin_token', clear token): what equality and uniqueness use. Optional on insert: a
   * row without one gets the unkeyed SHA-256 of `token` (a trigger; rows written in clear).
   */
  token_digest: ColumnType<Buffer, Buffer | undefined, Buffer>
  opted_in_at: Timestamp
  expires_at: Timestamp
  state: ColumnType<TokenState, TokenState | undefined, TokenState>
  lease_expires_at: Timestamp | null
  notification_id: string | null
  webhook_event_id: string | null
  created_at: CreatedAt
  updated_at: Timestamp
  // Recurring tokens (migration 20261202150000); null on one-time tokens.
  title: string | null
  frequency: RecurringFrequency | null
  timezone: string | null
  user_token_status: string | null
  /** The person stopped the topic (null: active). */
  stopped_at: Timestamp | null
  /** The event time of the latest opt-in, stop or resume applied. */
  status_at: Timestamp | null
  last_sent_at: Timestamp | null
  /** The token may send from then on (null: now). */
  next_send_at: Timestamp | null
}

export type RecurringFrequency = 'DAILY' | 'WEEKLY' | 'MONTHLY'

export interface SubscribersTable {
  page_id: string
  psid: string
  first_seen_at: Timestamp
  last_interaction_at: Timestamp | null
  updated_at: Timestamp
}

export interface NotificationsTable {
  id: Generated<string>
  page_id: string
  topic_id: string | null
  psid: string
  message: Json<Record<string, unknown>>
  notification_type: ColumnType<string, string | undefined, string>
  use_window: ColumnType<boolean, boolean | undefined, boolean>
  idempotency_key: string | null
  request_hash: string | null
  status: ColumnType<NotificationStatus, NotificationStatus | undefined, NotificationStatus>
  route: NotificationRoute | null
  token_id: string | null
  graph_message_id: string | null
  error: Json<Record<string, unknown>> | null
  http_status: number | null
  attempts: ColumnType<number, number | undefined, number>
  broadcast_id: string | null
  /** The name of the API key that created it (migration 20261203010000); null: before that, or not by a key. */
  created_by: ColumnType<string | null, string | null | undefined, never>
  created_at: CreatedAt
  updated_at: Timestamp
  completed_at: Timestamp | null
  /** What became of the claimed token at the outcome (migration 20261121020000). */
  token_state: NotificationTokenState | null
  tokens_refused: ColumnType<number, number | undefined, number>
  /** Sent with a window send (migration 20261202000000); null on older rows, which went out as RESPONSE. */
  messaging_type: MessagingType | null
  tag: string | null
  /** The kind of token the caller allowed (migration 20261202150000); null: any. */
  token_kind: TokenKind | null
}

export interface OptinRequestsTable {
  id: Generated<string>
  page_id: string
  topic_id: string
  psid: string
  title: string
  payload: string
  status: 'pending' | 'sent' | 'failed'
  kind: ColumnType<TokenKind, TokenKind | undefined, TokenKind>
  graph_message_id: string | null
  error: Json<GraphError> | null
  /** The name of the API key that created it (migration 20261203010000); null: before that, or not by a key. */
  created_by: ColumnType<string | null, string | null | undefined, never>
  created_at: CreatedAt
}

export interface WebhookEventsTable {
  id: Generated<string>
  /** The Page of the body's first entry; '' when it names none (migration 20261202120000). */
  page_id: string
  received_at: CreatedAt
  signature: string
  object: string | null
  /** The raw body, sealed (secret-box sealBytes: `enc:v1:...` bytes); legacy rows hold it in clear; '' when withheld (erasure). */
  body: Uint8Array
  /**
   * keyedDigest('webhook_body', raw body), for deduplication; rows stored before encryption (or
   * under an older key) carry the unkeyed SHA-256 (or that key's digest) until rotate-keys; null on
   * rows stored before digests were kept (migration 20261202090000).
   */
  digest: Uint8Array | null
  /** Erasure subjects (subjectOf) of every person the body names; null on rows stored before 20261203030000. */
  mentions: Uint8Array[] | null
}

export type BroadcastState = 'scheduled' | 'running' | 'completed' | 'cancelled'
export type BroadcastRecipientState = 'pending' | 'done' | 'cancelled'
export type BroadcastOutcome = 'sent_window' | 'sent_token' | 'sent_recurring' | 'no_token' | 'cooldown' | 'failed' | 'unconfirmed'

export interface BroadcastsTable {
  id: Generated<string>
  page_id: string
  topic_id: string
  message: Json<Record<string, unknown>>
  notification_type: ColumnType<string, string | undefined, string>
  use_window: ColumnType<boolean, boolean | undefined, boolean>
  audience: 'topic' | 'explicit'
  audience_estimate: number
  /** The filters of a topic audience (migration 20261202180000); null: everyone holding a usable token. */
  audience_filter: Json<AudienceFilter> | null
  /** People listed when planning ended; null until then. */
  audience_final: ColumnType<number | null, number | null | undefined, number | null>
  /** A person whose recurring token is cooling down waits for it (true) or is skipped as `cooldown`. */
  defer_cooldown: ColumnType<boolean, boolean | undefined, boolean>
  messaging_type: MessagingType | null
  tag: string | null
  state: BroadcastState
  send_at: Timestamp
  idempotency_key: string | null
  request_hash: string | null
  /** The name of the API key that created it (migration 20261203010000); null: before that, or not by a key. */
  created_by: ColumnType<string | null, string | null | undefined, never>
  created_at: CreatedAt
  updated_at: Timestamp
  started_at: Timestamp | null
  planned_at: Timestamp | null
  completed_at: Timestamp | null
  cancelled_at: Timestamp | null
}

export interface BroadcastRecipientsTable {
  /** Its broadcast's Page (migration 20261202120000). */
  page_id: string
  broadcast_id: string
  psid: string
  batch: number
  state: ColumnType<BroadcastRecipientState, BroadcastRecipientState | undefined, BroadcastRecipientState>
  retries: ColumnType<number, number | undefined, number>
  lease_id: string | null
  next_attempt_at: Timestamp | null
  outcome: BroadcastOutcome | null
  error_code: string | null
  notification_id: string | null
  updated_at: Timestamp
  completed_at: Timestamp | null
}

export interface BroadcastPacingTable {
  page_id: string
  next_slot_at: Timestamp
  /** The share of the Page's rate its broadcasts may use now (halved on a rate limit, given back as sends succeed). */
  rate_factor: ColumnType<number, number | undefined, number>
}

export interface ConsentHistoryTable {
  id: Generated<string>
  page_id: string
  /** Null only on an `erased` entry (migration 20261202200000). */
  psid: string | null
  /** An `erased` entry's keyed digest of Page and PSID (src/domain/erasure.ts). */
  subject: Uint8Array | null
  type: string
  payload: string | null
  kind: TokenKind | null
  token_id: string | null
  notification_id: string | null
  optin_request_id: string | null
  route: string | null
  status: string | null
  expires_at: Timestamp | null
  detail: Json<Record<string, unknown>> | null
  at: Timestamp
  created_at: CreatedAt
}

/** Outbound events (migration 20261203000000, docs/EVENTS.md). */
export interface EventSubscriptionsTable {
  id: Generated<string>
  url: string
  events: string[]
  page_ids: string[] | null
  description: string | null
  include_message: ColumnType<boolean, boolean | undefined, boolean>
  enabled: ColumnType<boolean, boolean | undefined, boolean>
  disabled_reason: string | null
  secret: string
  previous_secret: string | null
  previous_secret_expires_at: Timestamp | null
  failing_since: Timestamp | null
  created_at: CreatedAt
  updated_at: Timestamp
}

export interface EventsTable {
  id: Generated<string>
  page_id: string
  psid: string | null
  type: string
  data: Json<Record<string, unknown>>
  sequence: ColumnType<string, never, never>
  occurred_at: Timestamp
  created_at: CreatedAt
}

export type EventDeliveryState = 'pending' | 'delivering' | 'delivered' | 'failed' | 'cancelled'

export interface EventDeliveriesTable {
  id: Generated<string>
  page_id: string
  event_id: string
  subscription_id: string
  state: ColumnType<EventDeliveryState, EventDeliveryState | undefined, EventDeliveryState>
  attempts: ColumnType<number, number | undefined, number>
  next_attempt_at: Timestamp | null
  last_status: number | null
  last_error: string | null
  last_duration_ms: number | null
  created_at: CreatedAt
  delivered_at: Timestamp | null
}

export interface EventDeliveryAttemptsTable {
  id: Generated<string>
  page_id: string
  delivery_id: string
  at: CreatedAt
  duration_ms: number
  response_status: number | null
  error: string | null
}

export interface AuditLogTable {
  id: Generated<string>
  /** '' when the call named no Page the service knows. */
  page_id: string
  key_name: string
  method: string
  route: string
  resource_id: string | null
  status: number
  request_id: string | null
  created_at: CreatedAt
}

export interface DB {
  pages: PagesTable
  topics: TopicsTable
  optin_tokens: OptinTokensTable
  subscribers: SubscribersTable
  notifications: NotificationsTable
  optin_requests: OptinRequestsTable
  webhook_events: WebhookEventsTable
  broadcasts: BroadcastsTable
  broadcast_recipients: BroadcastRecipientsTable
  broadcast_pacing: BroadcastPacingTable
  consent_history: ConsentHistoryTable
  event_subscriptions: EventSubscriptionsTable
  events: EventsTable
  event_deliveries: EventDeliveriesTable
  event_delivery_attempts: EventDeliveryAttemptsTable
  audit_log: AuditLogTable
}

export type Page = Selectable<PagesTable>
export type Topic = Selectable<TopicsTable>
export type OptinToken = Selectable<OptinTokensTable>
export type NewOptinToken = Insertable<OptinTokensTable>
export type Notification = Selectable<NotificationsTable>
export type Broadcast = Selectable<BroadcastsTable>
export type BroadcastRecipient = Selectable<BroadcastRecipientsTable>
export type AuditEntry = Selectable<AuditLogTable>
