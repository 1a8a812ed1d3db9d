import { Type, type Static, type TSchema, type TUnsafe } from 'typebox'
import { PAGE_ID_PATTERN, PSID_PATTERN } from '../domain/ids.js'
import { PROBLEMS, type ProblemCode } from './problems.js'

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
  next_send_at: Type.Optional(Type.String({ format: 'date-time', description: 'recurring_cooldown: when the person\'s recurring token may send again.' })),
  next_request_at: Type.Optional(Type.String({
    format: 'date-time',
    description: 'recurring_optin_weekly_limit: when Meta\'s weekly rule lets this title be asked of this person again.',
    examples: ['2026-12-09T15:04:05.000Z'],
  })),
  usable_tokens: Type.Optional(Type.Integer()),
  notification: Type.Optional(Type.Any({ description: 'The recorded attempt, when one was recorded.' })),
  optin_request: Type.Optional(Type.Any({ description: 'The recorded opt-in request, when one was sent.' })),
}, { $id: 'Problem', description: 'application/problem+json' })
export type Problem = Static<typeof ProblemSchema>

/** Every operation may answer these: a request not received in time, a fault of ours, the database gone. */
const EVERY_OPERATION: ProblemCode[] = ['request_timeout', 'internal_error', 'database_unavailable']
/** Every /v1 operation: a key and a well-formed request. */
export const API_PROBLEMS: ProblemCode[] = ['unauthorized', 'validation_failed']
/** Every operation that takes a JSON body. */
export const BODY_PROBLEMS: ProblemCode[] = [
  'body_too_large', 'unsupported_media_type', 'invalid_json', 'body_too_deep', 'invalid_content_length', 'invalid_characters', 'invalid_value', 'value_too_long',
]

/** How an error response names its codes in its description; the OpenAPI document turns them into an enum (plugins/docs.ts). */
export const PROBLEM_CODES_LEAD = 'Problem codes: '

/**
 * The error responses of an operation that can answer `codes` (and EVERY_OPERATION's), one per
 * status the catalogue gives them (schemas/problems.ts), each the one problem shape.
 */
export function problems (...codes: ProblemCode[]): Record<number, TSchema> {
  const byStatus = new Map<number, ProblemCode[]>()
  for (const code of new Set([...codes, ...EVERY_OPERATION])) {
    const status = PROBLEMS[code].status
    byStatus.set(status, [...(byStatus.get(status) ?? []), code])
  }
  return Object.fromEntries([...byStatus].sort(([a], [b]) => a - b).map(([status, cs]) =>
    [status, Type.Ref('Problem', { description: `${PROBLEM_CODES_LEAD}${cs.sort().join(', ')}.` })]))
}

/** A shared schema (with an $id, in sharedSchemas) by reference: a named component in the OpenAPI document, its type kept. */
export function named<T extends TSchema & { $id?: string }> (schema: T, description?: string): TUnsafe<Static<T>> {
  if (!schema.$id) throw new Error('named() needs a schema with an $id')
  return Type.Unsafe<Static<T>>(Type.Ref(schema.$id, description ? { description } : {}))
}

export const ListQuerySchema = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 200, default: 50, description: 'Items per page (default 50).' })),
  cursor: Type.Optional(Type.String({ description: 'next_cursor of the previous page.', maxLength: 500 })),
})

/** A page of a list of a shared schema, its items by reference. */
export function ListOf<T extends TSchema & { $id?: string }> (item: T, $id: string) {
  return Type.Object({
    items: Type.Array(named(item)),
    next_cursor: Type.Union([Type.String(), Type.Null()], { description: 'Pass as cursor for the next page; null on the last.' }),
  }, { $id })
}

export const Timestamp = Type.String({ format: 'date-time' })
export const PageId = Type.String({ pattern: PAGE_ID_PATTERN, description: 'Facebook Page id.' })
export const Psid = Type.String({ pattern: PSID_PATTERN, description: 'Page-scoped id of a person.' })
export const Uuid = Type.String({ format: 'uuid' })

/** Every /v1 route: a bearer key from API_KEYS. */
export const apiKeySecurity = [{ apiKey: [] }]

/** Path parameters of a resource addressed by its uuid. */
export const IdParamsSchema = Type.Object({ id: Uuid })
