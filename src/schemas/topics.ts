import { Type, type Static } from 'typebox'
import { PAYLOAD_MAX_BYTES, PAYLOAD_MAX_CHARS } from '../domain/ids.js'
import { IdParamsSchema, ListOf, ListQuerySchema, PageId, Timestamp, Uuid } from './common.js'

const Name = Type.String({ minLength: 1, maxLength: 100, pattern: '\\S', description: 'Unique per Page, ignoring case.' })
const Title = Type.String({ minLength: 1, maxLength: 65, pattern: '\\S', description: 'Shown to the person in the "Notify Me" request (Meta allows 65 characters).' })

export const TopicParamsSchema = IdParamsSchema

export const CreateTopicBodySchema = Type.Object({
  page_id: PageId,
  name: Name,
  title: Type.Optional(Title),
  payload: Type.Optional(Type.String({
    minLength: 1, maxLength: PAYLOAD_MAX_CHARS,
    description: `Key put into opt-in requests and echoed back by Meta; unique per Page; generated when omitted; never changes. Any text (JSON, spaces, any script) up to ${PAYLOAD_MAX_CHARS} characters and ${PAYLOAD_MAX_BYTES} bytes in UTF-8, so that a Page's existing opt-ins can be adopted as they are.`,
  })),
}, { additionalProperties: false })
export type CreateTopicBody = Static<typeof CreateTopicBodySchema>

export const UpdateTopicBodySchema = Type.Object({
  name: Type.Optional(Name),
  title: Type.Optional(Title),
}, { additionalProperties: false, minProperties: 1 })

export const TopicSchema = Type.Object({
  id: Uuid,
  page_id: PageId,
  name: Type.String(),
  title: Type.String(),
  payload: Type.String(),
  counts: Type.Object({
    usable_tokens: Type.Integer({ description: 'One-time tokens that can still be spent (a token a send in flight holds counts until it is spent or released).' }),
    subscribers: Type.Integer({ description: 'People a notification on the topic could reach: holding a usable one-time token or an active recurring token.' }),
    expiring_soon: Type.Integer({ description: 'Usable one-time tokens that expire within 7 days.' }),
    recurring: Type.Object({
      active: Type.Integer({
        description: 'People (distinct PSIDs) holding an active recurring token on the topic: not stopped, not expired, whether or not it may send right now (its pacing) and whether or not a send holds it.',
        examples: [42],
      }),
      stopped: Type.Integer({
        description: 'People holding a recurring token on the topic that they stopped (Meta\'s STOP NOTIFICATIONS); a resume makes it active again. Replaced and expired tokens count nowhere.',
        examples: [3],
      }),
    }, { description: 'Recurring notifications (notification_messages) on the topic, counted in people; a person holds at most one live recurring token per topic (a re-opt-in replaces it).' }),
  }),
  created_at: Timestamp,
  updated_at: Timestamp,
}, { title: 'Topic', $id: 'Topic' })

export const TopicListQuerySchema = Type.Object({
  ...ListQuerySchema.properties,
  page_id: Type.Optional(PageId),
  name: Type.Optional(Type.String({ minLength: 1, maxLength: 100, description: 'Exact name, ignoring case.' })),
})
export const TopicListSchema = ListOf(TopicSchema, 'TopicList')

export const DeleteTopicQuerySchema = Type.Object({
  force: Type.Optional(Type.Boolean({ default: false, description: 'Discard the usable tokens the topic still holds (default false: refuse while it holds any).' })),
})
export const DeletedTopicSchema = Type.Object({
  id: Uuid,
  deleted: Type.Literal(true),
  discarded_tokens: Type.Integer({ description: 'Usable tokens discarded by force.' }),
}, { title: 'DeletedTopic', $id: 'DeletedTopic' })
