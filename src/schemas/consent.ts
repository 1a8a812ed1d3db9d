import { Type, type Static } from 'typebox'
import { HISTORY_TYPES, type HistoryRow, type HistoryType } from '../domain/consent-history.js'
import type { PersonExport } from '../domain/consent-export.js'
import { NO_EXPIRY } from '../domain/lifecycle.js'
import { maskToken } from '../domain/window.js'
import { ListOf, ListQuerySchema, named, PageId, Psid, Timestamp, Uuid } from './common.js'

const Nullable = <T extends Parameters<typeof Type.Union>[0][number]>(schema: T, description: string) =>
  Type.Union([schema, Type.Null()], { description })

// Unsafe only names the static type: the schema (and its check) is the union of literals.
const HistoryType = Type.Unsafe<HistoryType>(Type.Union(HISTORY_TYPES.map((t) => Type.Literal(t)), {
  description: 'optin_requested: an opt-in request went out; opted_in, refreshed (Meta\'s REFRESHED re-opt-in), stopped, resumed: the person\'s ' +
    'consent as Meta reported it; token_used, token_expired, token_invalid, token_discarded: what became of a one-time or recurring token; ' +
    'notification_sent, notification_failed: a send (its ids, route and status, never its message); erased: the person\'s data was erased ' +
    '(the only entry left, without personal data).',
}))

export const HistoryQuerySchema = Type.Object({
  ...ListQuerySchema.properties,
  topic_id: Type.Optional({ ...Uuid, description: 'Only entries on this topic (by its payload key).' }),
  type: Type.Optional(HistoryType),
})

export const HistoryEntrySchema = Type.Object({
  id: Type.String({ description: 'Entry id; entries are listed in the order they were written.' }),
  type: HistoryType,
  at: { ...Timestamp, description: 'When it happened: the webhook event\'s time for what Meta reported, else when the service did it.' },
  recorded_at: { ...Timestamp, description: 'When the entry was written.' },
  topic_id: Nullable(Uuid, 'The topic whose payload key the entry names; null when none (or no topic has it now).'),
  payload: Nullable(Type.String(), 'The topic\'s payload key as recorded.'),
  kind: Nullable(Type.Union([Type.Literal('one_time_notif'), Type.Literal('notification_messages')]), 'The token kind.'),
  token_id: Nullable(Type.String(), 'The token\'s id (never its value).'),
  notification_id: Nullable(Uuid, 'The notification.'),
  optin_request_id: Nullable(Uuid, 'The opt-in request.'),
  route: Nullable(Type.String(), 'A notification\'s route: window, token or recurring.'),
  status: Nullable(Type.String(), 'A notification\'s or request\'s status; for opted_in, the token\'s state when recorded (available, expired).'),
  expires_at: Nullable(Timestamp, 'A token\'s expiry.'),
  detail: Nullable(Type.Object({}, { additionalProperties: true }), 'Further ids and codes (graph_message_id, code, token_state, broadcast_id, title).'),
}, { $id: 'ConsentHistoryEntry', title: 'Consent history entry' })
export type HistoryEntryView = Static<typeof HistoryEntrySchema>

export const HistoryListSchema = ListOf(HistoryEntrySchema, 'ConsentHistoryList')

export function historyView (h: HistoryRow): HistoryEntryView {
  const { created_at: recordedAt, at, expires_at: expiresAt, ...rest } = h
  return { ...rest, at: at.toISOString(), recorded_at: recordedAt.toISOString(), expires_at: expiresAt ? expiresAt.toISOString() : null }
}

const Kind = Type.Union([Type.Literal('one_time_notif'), Type.Literal('notification_messages')])

export const ConsentExportSchema = Type.Object({
  page_id: PageId,
  psid: Psid,
  exported_at: Timestamp,
  subscriber: Nullable(Type.Object({
    first_seen_at: Timestamp,
    last_interaction_at: Nullable(Timestamp, 'Latest message, postback, reaction or referral; null if they only opted in.'),
  }), 'When the service first saw the person and their last interaction; null when it holds no such row.'),
  tokens: Type.Array(Type.Object({
    id: Type.String({ description: 'Token id (not the token).' }),
    kind: Kind,
    topic_id: Nullable(Uuid, 'The topic whose payload key the opt-in carried; null when no topic has it.'),
    payload: Type.String(),
    token: Type.String({ description: 'The token masked (first and last four characters); the value itself is never shown.' }),
    state: Type.String({ description: 'available, used, invalid, expired, discarded, unconfirmed or replaced.' }),
    opted_in_at: Timestamp,
    expires_at: Nullable(Timestamp, 'null: never (a recurring token Meta no longer expires).'),
    title: Nullable(Type.String(), 'A recurring opt-in\'s title.'),
    frequency: Nullable(Type.String(), 'A recurring opt-in\'s frequency.'),
    timezone: Nullable(Type.String(), 'A recurring opt-in\'s time zone.'),
    user_token_status: Nullable(Type.String(), 'As Meta last reported it.'),
    stopped_at: Nullable(Timestamp, 'When the person stopped the recurring notifications (null: not stopped).'),
    last_sent_at: Nullable(Timestamp, 'A recurring token\'s last send.'),
  }), { description: 'Every token the person granted on the Page, in any state, oldest opt-in first.' }),
  history: Type.Array(named(HistoryEntrySchema), { description: 'The whole consent history, oldest first.' }),
  notifications: Type.Array(Type.Object({
    id: Uuid,
    topic_id: Nullable(Uuid, 'The topic.'),
    status: Type.String(),
    route: Nullable(Type.String(), 'window, token or recurring.'),
    message: Type.Object({}, { additionalProperties: true, description: 'The message as sent; {} once retention removed it (MESSAGE_BODY_RETENTION_DAYS).' }),
    notification_type: Type.String(),
    messaging_type: Nullable(Type.String(), 'A window send\'s messaging_type.'),
    tag: Nullable(Type.String(), 'A message tag.'),
    graph_message_id: Nullable(Type.String(), 'Meta\'s message id.'),
    error: Nullable(Type.Object({}, { additionalProperties: true }), 'Why it was not sent.'),
    token_state: Nullable(Type.String(), 'What became of the token it used.'),
    broadcast_id: Nullable(Uuid, 'The broadcast it was part of.'),
    created_at: Timestamp,
    completed_at: Nullable(Timestamp, 'When its outcome was recorded.'),
  }), { description: 'Every notification to the person, with its message, oldest first.' }),
  optin_requests: Type.Array(Type.Object({
    id: Uuid,
    topic_id: Uuid,
    kind: Kind,
    title: Type.String(),
    payload: Type.String(),
    status: Type.String({ description: 'pending, sent or failed.' }),
    graph_message_id: Nullable(Type.String(), 'Meta\'s message id.'),
    created_at: Timestamp,
  }), { description: 'Every opt-in request sent to the person, oldest first.' }),
}, { $id: 'ConsentExport', title: 'Everything the service holds about a person on a Page' })
export type ConsentExportView = Static<typeof ConsentExportSchema>

const iso = (d: Date | null): string | null => (d ? d.toISOString() : null)

export function exportView (x: PersonExport): ConsentExportView {
  return {
    page_id: x.page_id,
    psid: x.psid,
    exported_at: x.exported_at.toISOString(),
    subscriber: x.subscriber ? { first_seen_at: x.subscriber.first_seen_at.toISOString(), last_interaction_at: iso(x.subscriber.last_interaction_at) } : null,
    tokens: x.tokens.map((t) => ({
      id: t.id, kind: t.kind, topic_id: t.topic_id, payload: t.payload, token: maskToken(t.token), state: t.state,
      opted_in_at: t.opted_in_at.toISOString(), expires_at: t.expires_at.getTime() >= NO_EXPIRY.getTime() ? null : t.expires_at.toISOString(),
      title: t.title, frequency: t.frequency, timezone: t.timezone, user_token_status: t.user_token_status,
      stopped_at: iso(t.stopped_at), last_sent_at: iso(t.last_sent_at),
    })),
    history: x.history.map(historyView),
    notifications: x.notifications.map((n) => ({ ...n, created_at: n.created_at.toISOString(), completed_at: iso(n.completed_at) })),
    optin_requests: x.optin_requests.map((r) => ({ ...r, kind: r.kind as ConsentExportView['optin_requests'][number]['kind'], created_at: r.created_at.toISOString() })),
  }
}

export const ErasureSchema = Type.Object({
  page_id: PageId,
  erased_at: { ...Timestamp, description: 'The time of the erasure: a webhook event about the person older than it is not recorded again.' },
  erased: Type.Object({
    optin_tokens: Type.Integer({ description: 'Tokens deleted (any state).' }),
    subscribers: Type.Integer({ description: 'The subscriber row (0 or 1).' }),
    notifications: Type.Integer({ description: 'Notifications deleted, with their messages.' }),
    optin_requests: Type.Integer({ description: 'Opt-in requests deleted.' }),
    broadcast_recipients: Type.Integer({ description: 'Broadcast recipient rows kept for the broadcast\'s counts with the PSID replaced; one still pending is settled no_token.' }),
    webhook_events: Type.Integer({ description: 'Raw webhook bodies that mentioned the person, deleted.' }),
    consent_history: Type.Integer({ description: 'History entries deleted; one `erased` entry without personal data is left.' }),
    events: Type.Integer({ description: 'Outbound events about the person deleted, with their deliveries (sent or not; docs/EVENTS.md).' }),
  }),
}, { $id: 'Erasure', title: 'What an erasure removed, by table' })
