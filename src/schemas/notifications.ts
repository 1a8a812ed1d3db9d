import { Type, type Static } from 'typebox'
import type { Notification } from '../db/types.js'
import type { NotificationProblem } from '../domain/send-steps.js'
import { statusOf } from './problems.js'
import { IdParamsSchema, ListOf, ListQuerySchema, PageId, Psid, Timestamp, Uuid } from './common.js'

const QuickReplySchema = Type.Object({
  content_type: Type.Union([Type.Literal('text'), Type.Literal('user_phone_number'), Type.Literal('user_email')]),
  title: Type.Optional(Type.String({ minLength: 1, maxLength: 20 })),
  payload: Type.Optional(Type.Union([Type.String({ maxLength: 1000 }), Type.Integer()])),
  image_url: Type.Optional(Type.String({ maxLength: 2000 })),
}, { additionalProperties: false })

const QuickReplies = Type.Optional(Type.Array(QuickReplySchema, { minItems: 1, maxItems: 13 }))
const Metadata = Type.Optional(Type.String({ maxLength: 1000 }))

const TextMessageSchema = Type.Object({
  text: Type.String({ minLength: 1, maxLength: 2000, pattern: '\\S', description: 'At most 2000 characters.' }),
  quick_replies: QuickReplies,
  metadata: Metadata,
}, { additionalProperties: false, title: 'Text message' })

const AttachmentMessageSchema = Type.Object({
  attachment: Type.Object({
    type: Type.Union([Type.Literal('image'), Type.Literal('audio'), Type.Literal('video'), Type.Literal('file'), Type.Literal('template')]),
    payload: Type.Object({}, {
      additionalProperties: true, minProperties: 1,
      description: 'Passed to Meta as given: {url, is_reusable}, {attachment_id}, or a template payload with template_type.',
    }),
  }, { additionalProperties: false }),
  quick_replies: QuickReplies,
  metadata: Metadata,
}, { additionalProperties: false, title: 'Attachment message' })

/** The Send API's `message`: exactly one of text or attachment, optional quick replies. */
export const MessageSchema = Type.Union([TextMessageSchema, AttachmentMessageSchema], {
  description: 'A Send API message, passed through to Meta. Whether Meta accepts every attachment with a token is undocumented; its refusal is passed back (422 graph_request_invalid or graph_message_refused).',
})

export const NotificationType = Type.Union([Type.Literal('REGULAR'), Type.Literal('SILENT_PUSH'), Type.Literal('NO_PUSH')], {
  description: 'Push behaviour on the person\'s device; default REGULAR.',
})

export const MessagingTypeSchema = Type.Union([Type.Literal('UPDATE'), Type.Literal('RESPONSE'), Type.Literal('MESSAGE_TAG')], {
  description: 'The Send API messaging_type of a standard (window) send: UPDATE (default: a proactive message), RESPONSE (a reply to the person\'s ' +
    'last message), or MESSAGE_TAG with `tag`. A token send always goes out as Meta documents it (UPDATE, no tag).',
})
export const MessageTagSchema = Type.Union(
  ['ACCOUNT_UPDATE', 'CONFIRMED_EVENT_UPDATE', 'CUSTOMER_FEEDBACK', 'HUMAN_AGENT', 'POST_PURCHASE_UPDATE'].map((t) => Type.Literal(t)),
  { description: 'Meta\'s message tag; only with messaging_type MESSAGE_TAG (400 tag_required / tag_without_message_tag otherwise).' },
)

export const CreateNotificationBodySchema = Type.Object({
  topic_id: Uuid,
  psid: Psid,
  message: MessageSchema,
  notification_type: Type.Optional(NotificationType),
  messaging_type: Type.Optional(MessagingTypeSchema),
  tag: Type.Optional(MessageTagSchema),
  use_window: Type.Optional(Type.Boolean({
    default: true,
    description: 'When the person wrote to the Page in the last 24 hours, send a standard message and keep the token. false: always use a token.',
  })),
  token_kind: Type.Optional(Type.Union([Type.Literal('one_time_notif'), Type.Literal('notification_messages')], {
    description: 'The kind of token the send may use when the window is closed (or use_window is false). Omitted: any — a recurring ' +
      'notification token that may send now, else a one-time (OTN) token. notification_messages: only a recurring token (429 ' +
      'recurring_cooldown while it may not send yet); one_time_notif: only a one-time token.',
    examples: ['notification_messages'],
  })),
}, { additionalProperties: false })
export type CreateNotificationBody = Static<typeof CreateNotificationBodySchema>

export const CreateNotificationHeadersSchema = Type.Object({
  'idempotency-key': Type.Optional(Type.String({
    minLength: 1, maxLength: 255,
    description: 'Recommended. The same key with the same body returns the first result (same status) and sends nothing more, also when the two requests race; the same key with another body is a 422 idempotency_conflict. Keys are kept with the notification, scoped to the topic\'s Page: the same key for another Page\'s topic is another request.',
  })),
})

const GraphErrorSchema = Type.Object({
  code: Type.Union([Type.Integer(), Type.Null()]),
  subcode: Type.Union([Type.Integer(), Type.Null()]),
  message: Type.String(),
  fbtrace_id: Type.Union([Type.String(), Type.Null()]),
})

const Status = Type.Union([Type.Literal('pending'), Type.Literal('sent'), Type.Literal('no_token'), Type.Literal('failed'), Type.Literal('unconfirmed')], {
  description: 'pending while in flight; sent; no_token (nothing usable); failed (Meta refused or could not be reached; any token was kept); unconfirmed (Meta did not answer: maybe delivered, never re-sent).',
})

export const NotificationSchema = Type.Object({
  id: Uuid,
  topic_id: Type.Union([Uuid, Type.Null()]),
  page_id: PageId,
  psid: Psid,
  status: Status,
  route: Type.Union([Type.Literal('window'), Type.Literal('recurring'), Type.Literal('token'), Type.Null()], {
    description: 'window: a standard message inside the 24-hour window (no token spent); recurring: a recurring notification token (kept for later messages); token: a one-time (OTN) token. null until decided.',
  }),
  message: Type.Object({}, { additionalProperties: true }),
  notification_type: Type.String(),
  use_window: Type.Boolean(),
  messaging_type: Type.Optional(Type.String({ description: 'The messaging_type a window send goes out with (absent on notifications made before it was recorded: RESPONSE).' })),
  tag: Type.Optional(Type.String()),
  idempotency_key: Type.Optional(Type.String()),
  graph_message_id: Type.Optional(Type.String({ description: 'Meta\'s message_id when sent.' })),
  error: Type.Optional(Type.Object({
    code: Type.String({ description: 'The problem code the request was answered with.' }),
    detail: Type.String(),
    graph: Type.Optional(GraphErrorSchema),
    retry_after_seconds: Type.Optional(Type.Integer()),
  })),
  http_status: Type.Optional(Type.Integer({ description: 'The status the send was answered with (and is replayed with).' })),
  token_state: Type.Optional(Type.Union([Type.Literal('used'), Type.Literal('released'), Type.Literal('invalid'), Type.Literal('unconfirmed'),
    Type.Literal('stopped'), Type.Literal('deferred')], {
    description: 'What became of the token this notification claimed: used (a one-time token is spent; a recurring one starts its cooldown); released (kept for a later send); invalid (Meta refused it); unconfirmed (maybe delivered: a one-time token is never reused, a recurring one starts its cooldown); stopped (recurring: the person stopped the topic); deferred (recurring: Meta\'s frequency limit, kept for its next period). The token value is never shown.',
  })),
  tokens_refused: Type.Integer({ description: 'Tokens Meta refused before the outcome (each marked invalid).' }),
  attempts: Type.Integer({ description: 'Requests made to the Graph API.' }),
  broadcast_id: Type.Optional(Uuid),
  created_at: Timestamp,
  updated_at: Timestamp,
  completed_at: Type.Union([Timestamp, Type.Null()]),
}, { title: 'Notification', $id: 'Notification' })

export const NotificationParamsSchema = IdParamsSchema

export const NotificationListQuerySchema = Type.Object({
  ...ListQuerySchema.properties,
  topic_id: Type.Optional(Uuid),
  page_id: Type.Optional(PageId),
  psid: Type.Optional(Psid),
  status: Type.Optional(Status),
  created_after: Type.Optional(Type.String({ format: 'date-time', description: 'Inclusive lower bound on created_at.' })),
  created_before: Type.Optional(Type.String({ format: 'date-time', description: 'Exclusive upper bound on created_at.' })),
})
export const NotificationListSchema = ListOf(NotificationSchema, 'NotificationList')

export type NotificationView = Static<typeof NotificationSchema>

/** The HTTP status a notification's outcome is answered (and replayed) with: from its code, by the error catalogue. */
export function httpStatusOf (n: Pick<Notification, 'status' | 'error' | 'http_status'>): number | undefined {
  if (n.status === 'pending') return undefined
  if (n.status === 'sent') return 201
  const code = (n.error as unknown as NotificationProblem | null)?.code
  return code !== undefined ? statusOf(code) : n.http_status ?? 502
}

/** A notification row as the API shows it (never a token value). */
export function notificationView (n: Notification): NotificationView {
  const status = httpStatusOf(n)
  return {
    id: n.id,
    topic_id: n.topic_id,
    page_id: n.page_id,
    psid: n.psid,
    status: n.status,
    route: n.route,
    message: n.message,
    notification_type: n.notification_type,
    use_window: n.use_window,
    ...(n.messaging_type !== null ? { messaging_type: n.messaging_type } : {}),
    ...(n.tag !== null ? { tag: n.tag } : {}),
    ...(n.idempotency_key !== null ? { idempotency_key: n.idempotency_key } : {}),
    ...(n.graph_message_id !== null ? { graph_message_id: n.graph_message_id } : {}),
    ...(n.error !== null ? { error: n.error as unknown as NotificationProblem } : {}),
    ...(status !== undefined ? { http_status: status } : {}),
    ...(n.token_state !== null ? { token_state: n.token_state } : {}),
    tokens_refused: n.tokens_refused,
    attempts: n.attempts,
    ...(n.broadcast_id !== null ? { broadcast_id: n.broadcast_id } : {}),
    created_at: n.created_at.toISOString(),
    updated_at: n.updated_at.toISOString(),
    completed_at: n.completed_at ? n.completed_at.toISOString() : null,
  }
}
