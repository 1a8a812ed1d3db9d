import { Type, type Static } from 'typebox'
import { ListOf, ListQuerySchema, PageId, Timestamp } from './common.js'

export const PageParamsSchema = Type.Object({ pageId: PageId })

export const PutPageBodySchema = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 200 }),
  access_token: Type.Optional(Type.String({ minLength: 1, maxLength: 1000, description: 'Page access token. Write-only: never returned. Omit to keep the current one.' })),
}, { additionalProperties: false })
export type PutPageBody = Static<typeof PutPageBodySchema>

export const PageSchema = Type.Object({
  id: PageId,
  name: Type.String(),
  has_access_token: Type.Boolean(),
  healthy: Type.Boolean({ description: 'False after Meta rejected the Page token or refused the Page; a new access_token resets it.' }),
  last_error: Type.Optional(Type.Object({
    code: Type.Union([Type.Integer(), Type.Null()]),
    subcode: Type.Union([Type.Integer(), Type.Null()]),
    message: Type.String(),
    fbtrace_id: Type.Union([Type.String(), Type.Null()]),
    at: Timestamp,
  })),
  created_at: Timestamp,
  updated_at: Timestamp,
}, { title: 'Page' })

export const PageListSchema = ListOf(PageSchema)
export const PageListQuerySchema = ListQuerySchema
