import { Type, type Static } from 'typebox'
import { HISTORY_TYPES, type HistoryRow, type HistoryType } from '../domain/consent-history.js'
import { ListOf, ListQuerySchema, Timestamp, Uuid } from './common.js'

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
