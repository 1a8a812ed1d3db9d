import { Type, type Static } from 'typebox'
import { IdParamsSchema, ListOf, ListQuerySchema, PageId, Psid, Timestamp, Uuid } from './common.js'
import { MessageSchema, MessageTagSchema, MessagingTypeSchema, NotificationType } from './notifications.js'

const MAX_EXPLICIT_AUDIENCE = 10_000
const MAX_FILTER_TOPICS = 20

const time = (description: string, example: string) => Type.Optional(Type.String({ format: 'date-time', description, examples: [example] }))
const topicList = (description: string) => Type.Optional(Type.Array(Uuid, {
  minItems: 1, maxItems: MAX_FILTER_TOPICS, description, examples: [['0b6f8a52-6d1e-4c55-9a55-3f1f8f0f6a11']],
}))
const psidList = (description: string, example: string) => Type.Optional(Type.Array(Psid, {
  minItems: 1, maxItems: MAX_EXPLICIT_AUDIENCE, description, examples: [[example]],
}))

/** The filters of a topic audience (src/domain/audience.ts); docs/BROADCASTS.md has recipes. */
export const AudienceSchema = Type.Object({
  opted_in_after: time('Token filter: opted in at or after this time (e.g. in the last 30 days).', '2026-11-02T00:00:00Z'),
  opted_in_before: time('Token filter: opted in before this time.', '2026-12-01T00:00:00Z'),
  token_kind: Type.Optional(Type.Union([Type.Literal('one_time_notif'), Type.Literal('notification_messages'), Type.Literal('any')], {
    description: 'Token filter: people holding a token of this kind; the broadcast then sends only with that kind (or through the window). any (default): either.',
    examples: ['one_time_notif'],
  })),
  expiring_before: time('Token filter: the token expires before this time (a last call before tokens lapse).', '2026-12-09T00:00:00Z'),
  last_interaction_after: time('Person filter: last wrote to the Page at or after this time (someone who never wrote does not match).', '2026-11-25T00:00:00Z'),
  last_interaction_before: time('Person filter: last wrote to the Page before this time (someone who never wrote matches).', '2026-11-25T00:00:00Z'),
  window: Type.Optional(Type.Union([Type.Literal('open'), Type.Literal('closed'), Type.Literal('any')], {
    description: 'Person filter: their 24-hour window is open (wrote in the last 24 hours) or closed, now. any (default): either.',
    examples: ['closed'],
  })),
  holds_topics: topicList('Person filter: also holds a usable token on each of these topics of the same Page (all of them).'),
  excludes_topics: topicList('Person filter: holds no usable token on any of these topics of the same Page.'),
  not_notified_since: time('Person filter: no message from this service reached them (sent or unconfirmed, any topic) at or after this time.', '2026-11-25T00:00:00Z'),
  psids: psidList('Person filter: only these people (who must hold a usable token on the topic, like everyone of a topic audience).', '24816063427895134'),
  exclude_psids: psidList('Person filter: never these people.', '24816063427895134'),
}, {
  title: 'BroadcastAudience',
  additionalProperties: false,
  description: 'Narrows the topic audience (everyone holding a usable token on the topic); not together with psids (audience.psids narrows it to a list instead). Every filter given must hold (AND); ' +
    '_after includes its instant, _before excludes it. Applied when planning lists the audience (send_at), not at creation.',
  examples: [{ opted_in_after: '2026-11-02T00:00:00Z', window: 'closed', not_notified_since: '2026-11-25T00:00:00Z' }],
})

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
      'People without a usable token (and outside the window) count as no_token. Not together with audience.',
  })),
  audience: Type.Optional(AudienceSchema),
}, { additionalProperties: false })
export type CreateBroadcastBody = Static<typeof CreateBroadcastBodySchema>

export const EstimateSchema = Type.Object({
  audience: Type.Integer({ description: 'People the broadcast would list if planned now.', examples: [1840] }),
  by_route: Type.Object({
    window: Type.Integer({ description: 'Would get a standard message (window open, use_window true): no token spent.' }),
    recurring: Type.Integer({ description: 'Would get a recurring notification (or wait for / skip its cooldown).' }),
    token: Type.Integer({ description: 'Would spend a one-time token.' }),
    without_token: Type.Integer({ description: 'Explicit psids only: listed people holding no usable token on the topic (reached only if their window is open, else no_token).' }),
  }, { description: 'How each person would be reached, as a send picks it now: window, else a recurring token that may send, else a one-time token.' }),
}, { $id: 'BroadcastEstimate', title: 'BroadcastEstimate' })

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
  no_token_by_reason: Type.Record(Type.String(), Type.Integer(), {
    description: 'no_token by why, as of their turn (the audience is frozen at planning): opted_out (stopped the topic), token_spent ' +
      '(used, refused or held by another send since), token_expired, no_record (no token on record: erased, or never opted in; an explicit list\'s strangers).',
    examples: [{ opted_out: 3, token_spent: 12, no_record: 1 }],
  }),
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
  audience_estimate: Type.Integer({ description: 'At creation: the audience (as POST /v1/broadcasts/estimate counts it), or the size of the explicit list.' }),
  audience_filter: Type.Union([AudienceSchema, Type.Null()], { description: 'The filters given at creation, normalized (UTC times, sorted lists); null: none.' }),
  audience_final: Type.Union([Type.Integer(), Type.Null()], { description: 'People planning listed: the audience, frozen when planning ended (planned_at); null until then.' }),
  audience_change: Type.Union([Type.Integer(), Type.Null()], {
    description: 'audience_final − audience_estimate: people who opted in (+) or whose tokens went (−) between creation and planning; null until planned.',
  }),
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
