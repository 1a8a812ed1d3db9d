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
    usable_tokens: Type.Integer({ description: 'Tokens that can still be spent (a token a send in flight holds counts until it is spent or released).' }),
    subscribers: Type.Integer({ description: 'People holding at least one usable token.' }),
    expiring_soon: Type.Integer({ description: 'Usable tokens that expire within 7 days.' }),
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
