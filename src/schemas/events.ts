import { Type, type Static, type TSchema } from 'typebox'
import { EVENT_FILTERS } from '../domain/events.js'
import { ListOf, ListQuerySchema, PageId, Psid, Timestamp, Uuid } from './common.js'

const DeliveryState = Type.Union([Type.Literal('pending'), Type.Literal('delivering'), Type.Literal('delivered'), Type.Literal('failed'), Type.Literal('cancelled')], {
  description: 'pending (waiting for its next attempt), delivering (an attempt in flight), delivered (2xx), failed (attempts exhausted, or 410), cancelled (the subscription was disabled).',
})

const Nullable = <T extends TSchema>(s: T) => Type.Union([s, Type.Null()])

export const EventFilter = Type.Union(EVENT_FILTERS.map((f) => Type.Literal(f)), {
  description: 'An event type, a family of them (`optin.*`) or `*` for every type.',
})

const Url = Type.String({ minLength: 1, maxLength: 2000, description: 'Where events are POSTed: https (http only with EVENTS_ALLOW_HTTP=true); not a loopback, private or link-local address (unless EVENTS_ALLOW_PRIVATE_NETWORKS=true).', examples: ['https://example.com/otn-events'] })
const Events = Type.Array(EventFilter, { minItems: 1, maxItems: 50 })
const PageIds = Nullable(Type.Array(PageId, { minItems: 1, maxItems: 1000, description: 'Only events of these Pages; null (or absent): every Page.' }))
const Description = Nullable(Type.String({ maxLength: 500 }))
const IncludeMessage = Type.Boolean({ description: 'Notification events carry the message sent (data.message). Default false: no message body ever leaves in an event.' })

export const CreateEventSubscriptionBodySchema = Type.Object({
  url: Url,
  events: Events,
  page_ids: Type.Optional(PageIds),
  description: Type.Optional(Description),
  include_message: Type.Optional(IncludeMessage),
}, { additionalProperties: false })

export const UpdateEventSubscriptionBodySchema = Type.Object({
  url: Type.Optional(Url),
  events: Type.Optional(Events),
  page_ids: Type.Optional(PageIds),
  description: Type.Optional(Description),
  include_message: Type.Optional(IncludeMessage),
  enabled: Type.Optional(Type.Boolean({ description: 'false stops deliveries (those waiting are cancelled); true starts them again and clears disabled_reason.' })),
}, { additionalProperties: false })

const subscriptionFields = {
  id: Uuid,
  url: Type.String(),
  events: Type.Array(Type.String()),
  page_ids: Nullable(Type.Array(PageId)),
  description: Nullable(Type.String()),
  include_message: Type.Boolean(),
  enabled: Type.Boolean(),
  disabled_reason: Nullable(Type.String({ description: 'Why it is disabled: by request, the endpoint answered 410, or no delivery succeeded for EVENTS_DISABLE_AFTER_HOURS.' })),
  failing_since: Nullable(Type.String({ format: 'date-time', description: 'Since when no delivery has succeeded; null when the last one did.' })),
  previous_secret_expires_at: Nullable(Type.String({ format: 'date-time', description: 'After a rotation: until when the previous secret also signs.' })),
  created_at: Timestamp,
  updated_at: Timestamp,
}

export const EventSubscriptionSchema = Type.Object(subscriptionFields, { $id: 'EventSubscription', title: 'EventSubscription', description: 'A subscription to events (never its secret).' })
export const EventSubscriptionWithSecretSchema = Type.Object({
  ...subscriptionFields,
  secret: Type.String({ description: 'The signing secret (`whsec_` + base64), shown only here: keep it.', examples: ['whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'] }),
}, { $id: 'EventSubscriptionWithSecret', title: 'EventSubscriptionWithSecret' })
export const EventSubscriptionListSchema = ListOf(EventSubscriptionSchema, 'EventSubscriptionList')
export const EventSubscriptionListQuerySchema = ListQuerySchema

export const DeliveryQuerySchema = Type.Object({
  ...ListQuerySchema.properties,
  state: Type.Optional(DeliveryState),
})

export const EventDeliverySchema = Type.Object({
  id: Uuid,
  event_id: Type.String({ format: 'uuid', description: 'The event, and the webhook-id header of every attempt.' }),
  event_type: Type.String(),
  page_id: Nullable(PageId),
  subscription_id: Uuid,
  state: DeliveryState,
  attempts: Type.Integer(),
  next_attempt_at: Nullable(Type.String({ format: 'date-time', description: 'When the next attempt is due (pending or delivering only).' })),
  last_status: Nullable(Type.Integer({ description: 'HTTP status of the last answer; null when none came.' })),
  last_error: Nullable(Type.String()),
  last_duration_ms: Nullable(Type.Integer()),
  created_at: Timestamp,
  delivered_at: Nullable(Timestamp),
  attempt_log: Type.Array(Type.Object({
    at: Timestamp,
    duration_ms: Type.Integer(),
    response_status: Nullable(Type.Integer()),
    error: Nullable(Type.String()),
  }), { description: 'The last 20 attempts, oldest first.' }),
}, { $id: 'EventDelivery', title: 'EventDelivery' })
export const EventDeliveryListSchema = ListOf(EventDeliverySchema, 'EventDeliveryList')

export const RedeliverBodySchema = Type.Union([Type.Object({
  subscription_id: Type.Optional(Type.String({ format: 'uuid', description: 'Only to this subscription (it need not have had the event). Absent: every enabled subscription that had it.' })),
}, { additionalProperties: false }), Type.Null()])

export const RedeliveryAnswerSchema = Type.Object({ delivery_ids: Type.Array(Uuid) })
export const PingAnswerSchema = Type.Object({ event_id: Uuid, delivery_id: Uuid })

// ---- the events themselves (what a receiver gets), for generated clients ----

const Sequence = Type.Integer({ description: 'Increases with every event the service writes: order events of one entity by it.' })
const Common = { page_id: PageId, sequence: Sequence }
const TopicRef = {
  topic_id: Type.Optional(Type.String({ format: 'uuid', description: 'The topic whose payload the opt-in carries (absent when no topic has it yet).' })),
  topic_payload: Type.Optional(Type.String()),
}
const GraphErr = Type.Object({ code: Nullable(Type.Integer()), subcode: Nullable(Type.Integer()), message: Type.String(), fbtrace_id: Nullable(Type.String()) })

function envelope<T extends TSchema> (type: string, data: T, description: string) {
  return Type.Object({
    type: Type.Literal(type),
    timestamp: Type.String({ format: 'date-time', description: 'When the change happened (for an opt-in: Meta\'s event time).' }),
    data,
  }, { $id: `Event_${type.replace('.', '_')}`, title: `Event ${type}`, description })
}

const optinData = Type.Object({
  ...Common, psid: Psid, ...TopicRef,
  kind: Type.String({ description: 'one_time_notif or notification_messages.' }),
  token_id: Type.String({ description: 'The token\'s id (never its value).' }),
  expires_at: Type.Optional(Type.String({ format: 'date-time' })),
  token_state: Type.Optional(Type.String()),
})
const notificationData = Type.Object({
  ...Common, psid: Psid, ...TopicRef,
  notification_id: Type.String({ format: 'uuid' }),
  kind: Type.Optional(Type.String()),
  token_id: Type.Optional(Type.String()),
  route: Type.Optional(Type.String({ description: 'token or window.' })),
  status: Type.String({ description: 'sent, failed, no_token or unconfirmed.' }),
  token_state: Type.Optional(Type.String()),
  graph_message_id: Type.Optional(Type.String()),
  broadcast_id: Type.Optional(Type.String({ format: 'uuid' })),
  error: Type.Optional(Type.Object({ code: Type.Optional(Type.String()), graph: Type.Optional(GraphErr) })),
  message: Type.Optional(Type.Record(Type.String(), Type.Unknown(), { description: 'The message sent: only for a subscription with include_message.' })),
})
const broadcastData = Type.Object({
  ...Common, broadcast_id: Type.String({ format: 'uuid' }), topic_id: Type.String({ format: 'uuid' }), state: Type.String(),
  counts: Type.Object({ total: Type.Integer(), sent: Type.Integer(), no_token: Type.Integer(), failed: Type.Integer(), unconfirmed: Type.Integer(), cancelled: Type.Integer(), pending: Type.Integer() }),
})
const pageData = Type.Object({ ...Common, healthy: Type.Boolean(), error: Type.Optional(GraphErr) })

export const EventSchemas = [
  envelope('optin.created', optinData, 'A person opted in (one-time or recurring).'),
  envelope('optin.stopped', optinData, 'A person stopped recurring notifications.'),
  envelope('optin.resumed', optinData, 'A person resumed recurring notifications.'),
  envelope('optin.refreshed', optinData, 'A person renewed a recurring opt-in (Meta\'s REFRESHED).'),
  envelope('token.expired', Type.Object({ ...Common, ...TopicRef, kind: Type.String(), count: Type.Integer({ description: 'Tokens of this topic that expired in one sweep.' }) }), 'Tokens expired, one event per Page and topic per sweep.'),
  envelope('notification.sent', notificationData, 'A notification was sent.'),
  envelope('notification.failed', notificationData, 'A notification ended without being sent (status failed or no_token), with Meta\'s error when there was one.'),
  envelope('notification.unconfirmed', notificationData, 'Meta never confirmed a notification; it is not sent again.'),
  envelope('broadcast.completed', broadcastData, 'A broadcast finished, with its counts.'),
  envelope('broadcast.cancelled', broadcastData, 'A broadcast was cancelled, with its counts.'),
  envelope('page.unhealthy', pageData, 'Meta refused the Page itself (its token or permissions).'),
  envelope('page.healthy', pageData, 'The Page is healthy again (a new access token).'),
  Type.Object({
    type: Type.Literal('ping'), timestamp: Timestamp,
    data: Type.Object({ subscription_id: Type.String({ format: 'uuid' }), sequence: Sequence }),
  }, { $id: 'Event_ping', title: 'Event ping', description: 'Sent by POST /v1/event-subscriptions/{id}/test.' }),
]

export type CreateEventSubscriptionBody = Static<typeof CreateEventSubscriptionBodySchema>
