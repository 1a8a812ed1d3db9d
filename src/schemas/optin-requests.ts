import { Type, type Static } from 'typebox'
import { IdParamsSchema, PageId, Psid, Timestamp, Uuid } from './common.js'

export const OptinRequestParamsSchema = IdParamsSchema

export const CreateOptinRequestBodySchema = Type.Object({
  psid: Psid,
  title: Type.Optional(Type.String({
    minLength: 1, maxLength: 65, pattern: '\\S',
    description: 'Shown above the "Notify Me" button (Meta allows 65 characters); default: the topic\'s title.',
  })),
}, { additionalProperties: false })
export type CreateOptinRequestBody = Static<typeof CreateOptinRequestBodySchema>

export const OptinRequestSchema = Type.Object({
  id: Uuid,
  topic_id: Uuid,
  page_id: PageId,
  psid: Psid,
  title: Type.String(),
  payload: Type.String({ description: 'The topic\'s payload key, echoed back by Meta with the token.' }),
  status: Type.Union([Type.Literal('pending'), Type.Literal('sent'), Type.Literal('failed')]),
  graph_message_id: Type.Optional(Type.String()),
  error: Type.Optional(Type.Object({
    code: Type.Union([Type.Integer(), Type.Null()]),
    subcode: Type.Union([Type.Integer(), Type.Null()]),
    message: Type.String(),
    fbtrace_id: Type.Union([Type.String(), Type.Null()]),
    ambiguous: Type.Optional(Type.Boolean({ description: 'Meta did not answer: the request may have reached the person.' })),
  })),
  created_at: Timestamp,
}, { title: 'OptinRequest', $id: 'OptinRequest' })
