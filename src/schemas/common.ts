import { Type, type Static, type TSchema } from 'typebox'
import { PAGE_ID_PATTERN, PSID_PATTERN } from '../domain/ids.js'

export const ProblemSchema = Type.Object({
  type: Type.String({ description: 'A URI naming the problem type.' }),
  title: Type.String(),
  status: Type.Integer(),
  detail: Type.String(),
  code: Type.String({ description: 'Stable machine-readable code.' }),
  errors: Type.Optional(Type.Array(Type.Object({
    field: Type.String({ description: 'Where the bad value is, e.g. body/title.' }),
    message: Type.String(),
  }))),
  graph: Type.Optional(Type.Object({
    code: Type.Union([Type.Integer(), Type.Null()]),
    subcode: Type.Union([Type.Integer(), Type.Null()]),
    message: Type.String(),
    fbtrace_id: Type.Union([Type.String(), Type.Null()]),
  }, { description: 'What the Graph API answered, when Meta refused.' })),
  retry_after_seconds: Type.Optional(Type.Integer()),
  usable_tokens: Type.Optional(Type.Integer()),
  notification: Type.Optional(Type.Any({ description: 'The recorded attempt, when one was recorded.' })),
  optin_request: Type.Optional(Type.Any({ description: 'The recorded opt-in request, when one was sent.' })),
}, { $id: 'Problem', description: 'application/problem+json' })
export type Problem = Static<typeof ProblemSchema>

const ProblemRef = Type.Ref('Problem')

/** Error responses a route may answer, each the one problem shape. */
export function problems (...codes: number[]): Record<number, TSchema> {
  return Object.fromEntries(codes.map((c) => [c, ProblemRef]))
}

export const ListQuerySchema = Type.Object({
  limit: Type.Integer({ minimum: 1, maximum: 200, default: 50, description: 'Items per page.' }),
  cursor: Type.Optional(Type.String({ description: 'next_cursor of the previous page.', maxLength: 500 })),
})

export function ListOf<T extends TSchema> (item: T) {
  return Type.Object({
    items: Type.Array(item),
    next_cursor: Type.Union([Type.String(), Type.Null()], { description: 'Pass as cursor for the next page; null on the last.' }),
  })
}

export const Timestamp = Type.String({ format: 'date-time' })
export const PageId = Type.String({ pattern: PAGE_ID_PATTERN, description: 'Facebook Page id.' })
export const Psid = Type.String({ pattern: PSID_PATTERN, description: 'Page-scoped id of a person.' })
export const Uuid = Type.String({ format: 'uuid' })

/** Every /v1 route: a bearer key from API_KEYS. */
export const apiKeySecurity = [{ apiKey: [] }]

/** Path parameters of a resource addressed by its uuid. */
export const IdParamsSchema = Type.Object({ id: Uuid })
