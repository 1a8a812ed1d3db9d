import { Type, type Static } from 'typebox'
import { ListOf, ListQuerySchema, PageId, Timestamp } from './common.js'

export const PageParamsSchema = Type.Object({ pageId: PageId })

export const PutPageBodySchema = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 200 }),
  access_token: Type.Optional(Type.String({ minLength: 1, maxLength: 1000, description: 'Page access token. Write-only: never returned. Omit to keep the current one.' })),
  broadcast_rate_per_second: Type.Optional(Type.Union([Type.Integer({ minimum: 1, maximum: 1000 }), Type.Null()], {
    description: 'Broadcast sends per second for this Page (every instance together). Null: the default, BROADCAST_RATE_PER_SECOND or else Meta\'s limit for the message (300/s text, links, stickers; 10/s audio, video). Omit to keep the current one.',
  })),
  timezone: Type.Optional(Type.String({
    minLength: 1, maxLength: 64,
    description: 'IANA time zone of the Page\'s calendar: the days, weeks (Monday to Sunday) and months that pace a recurring token Meta gave no time zone, and the default time zone of its recurring opt-in requests. UTC on a new Page; omit to keep the current one. An unknown name is refused with 400 invalid_timezone.',
    examples: ['Europe/Berlin'],
  })),
}, { additionalProperties: false })
export type PutPageBody = Static<typeof PutPageBodySchema>

export const PageSchema = Type.Object({
  id: PageId,
  name: Type.String(),
  has_access_token: Type.Boolean(),
  broadcast_rate_per_second: Type.Union([Type.Integer(), Type.Null()], { description: 'This Page\'s broadcast rate; null: the default.' }),
  timezone: Type.String({ description: 'IANA time zone of the Page\'s calendar (recurring notifications); UTC unless set.', examples: ['Europe/Berlin'] }),
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
}, { title: 'Page', $id: 'Page' })

export const PageListSchema = ListOf(PageSchema, 'PageList')
export const PageListQuerySchema = ListQuerySchema
