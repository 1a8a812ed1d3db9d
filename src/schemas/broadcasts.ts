import { Type, type Static } from 'typebox'
import { IdParamsSchema, ListOf, ListQuerySchema, PageId, Psid, Timestamp, Uuid } from './common.js'
import { MessageSchema, MessageTagSchema, MessagingTypeSchema, NotificationType } from './notifications.js'

const MAX_EXPLICIT_AUDIENCE = 10_000

export const CreateBroadcastBodySchema = Type.Object({
  topic_id: Uuid,
  message: MessageSchema,
  notification_type: Type.Optional(NotificationType),
  messaging_type: Type.Optional(MessagingTypeSchema),
  tag: Type.Optional(MessageTagSchema),
  send_at: Type.Optional(Type.String({
    format: 'date-time',
    description: 'When sending starts; absent or in the past: now. Until then the broadcast is scheduled and can be cancelled.',
  })),
  use_window: Type.Optional(Type.Boolean({
    default: true,
    description: 'People who wrote to the Page in the last 24 hours get a standard message and keep their token. false: always use a token.',
  })),
  defer_cooldown: Type.Optional(Type.Boolean({
    default: false,
    description: 'A person whose only way is a recurring notification token that may not send yet (its calendar period or cooldown): ' +
      'true waits until it may (the broadcast runs on until then); false (default) skips them, counted as cooldown.',
  })),
  psids: Type.Optional(Type.Array(Psid, {
    minItems: 1, maxItems: MAX_EXPLICIT_AUDIENCE,
    description: 'An explicit audience (duplicates ignored) instead of everyone holding a usable token on the topic when sending starts. ' +
      'People without a usable token (and outside the window) count as no_token.',
  })),
}, { additionalProperties: false })
export type CreateBroadcastBody = Static<typeof CreateBroadcastBodySchema>

export const CreateBroadcastHeadersSchema = Type.Object({
  'idempotency-key': Type.Optional(Type.String({
    minLength: 1, maxLength: 255,
    description: 'Recommended. The same key with the same body returns the broadcast created the first time (202, header idempotent-replayed); with another body it is a 422 idempotency_conflict. A key is scoped to the topic\'s Page: the same key for another Page\'s topic is another broadcast.',
  })),
})

const State = Type.Union([Type.Literal('scheduled'), Type.Literal('running'), Type.Literal('completed'), Type.Literal('cancelled')], {
  description: 'scheduled until send_at; running while people are listed and sent to; completed when nobody is left pending; cancelled on request.',
})

const ProgressSchema = Type.Object({
  total: Type.Integer({ description: 'People listed so far (grows while the topic audience is being listed, see planned_at).' }),
  sent_window: Type.Integer({ description: 'Sent as a standard message inside the 24-hour window (no token spent).' }),
  sent_token: Type.Integer({ description: 'Sent with a one-time (OTN) token.' }),
  sent_recurring: Type.Integer({ description: 'Sent with a recurring notification token.' }),
  cooldown: Type.Integer({ description: 'Skipped: their recurring token was cooling down (defer_cooldown false).' }),
  no_token: Type.Integer({ description: 'Held no usable token (any more) when their turn came.' }),
  failed: Type.Record(Type.String(), Type.Integer(), {
    description: 'Failures by problem code (as the notifications API answers them), e.g. graph_person_unavailable; tokens were kept.',
  }),
  unconfirmed: Type.Integer({ description: 'Meta did not answer: maybe delivered, never re-sent.' }),
  cancelled: Type.Integer({ description: 'Not sent because the broadcast was cancelled.' }),
  remaining: Type.Integer({ description: 'Still pending (including people waiting out a rate limit).' }),
  rate_per_second: Type.Number({ description: 'People brought to an outcome per second over the last 10 seconds.' }),
  eta_seconds: Type.Union([Type.Integer(), Type.Null()], { description: 'remaining ÷ rate_per_second while it moves; null otherwise.' }),
}, { description: 'Counted from the per-person records: total = sent_window + sent_token + sent_recurring + no_token + cooldown + sum(failed) + unconfirmed + cancelled + remaining.' })

export const BroadcastSchema = Type.Object({
  id: Uuid,
  topic_id: Uuid,
  page_id: PageId,
  state: State,
  audience: Type.Union([Type.Literal('topic'), Type.Literal('explicit')], {
    description: 'topic: everyone holding a usable token on the topic when sending starts (a one-time token, or an active recurring one); explicit: the psids given.',
  }),
  audience_estimate: Type.Integer({ description: 'At creation: people holding a usable token on the topic, or the size of the explicit list.' }),
  message: Type.Object({}, { additionalProperties: true }),
  notification_type: Type.String(),
  use_window: Type.Boolean(),
  defer_cooldown: Type.Boolean({ description: 'People whose recurring token is cooling down are waited for (true) or skipped as cooldown (false).' }),
  messaging_type: Type.Optional(Type.String({ description: 'The messaging_type of its window sends.' })),
  tag: Type.Optional(Type.String()),
  send_at: Timestamp,
  idempotency_key: Type.Optional(Type.String()),
  progress: ProgressSchema,
  created_at: Timestamp,
  started_at: Type.Union([Timestamp, Type.Null()]),
  planned_at: Type.Union([Timestamp, Type.Null()], { description: 'When the whole audience had been listed (progress.total is final from then on).' }),
  completed_at: Type.Union([Timestamp, Type.Null()]),
  cancelled_at: Type.Union([Timestamp, Type.Null()]),
  finished_at: Type.Union([Timestamp, Type.Null()], { description: 'When it stopped: completed_at or cancelled_at.' }),
}, { title: 'Broadcast', $id: 'Broadcast' })

export const BroadcastParamsSchema = IdParamsSchema

export const BroadcastListQuerySchema = Type.Object({
  ...ListQuerySchema.properties,
  topic_id: Type.Optional(Uuid),
  state: Type.Optional(State),
})
export const BroadcastListSchema = ListOf(BroadcastSchema, 'BroadcastList')
