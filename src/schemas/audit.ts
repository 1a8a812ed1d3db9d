import { Type } from 'typebox'
import type { AuditEntry as AuditRow } from '../db/types.js'
import { KEY_NAME } from '../domain/access.js'
import { ListOf, ListQuerySchema, PageId, Timestamp } from './common.js'

export const AuditEntrySchema = Type.Object({
  id: Type.String({ description: 'The entry\'s id (digits).' }),
  key_name: Type.String({ description: 'The name of the API key that made the call (API_KEYS).' }),
  method: Type.String({ examples: ['POST'] }),
  route: Type.String({ description: 'The route pattern, not the URL.', examples: ['/v1/topics/:id'] }),
  page_id: Type.Union([PageId, Type.Null()], { description: 'The Page acted on; null when the call named none the service knows.' }),
  resource_id: Type.Union([Type.String(), Type.Null()], { description: 'The resource acted on (the id in the path, or of what was created).' }),
  status: Type.Integer({ description: 'The HTTP status the call was answered with.' }),
  request_id: Type.Union([Type.String(), Type.Null()], { description: 'The request\'s X-Request-Id, as in the logs.' }),
  at: Timestamp,
}, { title: 'AuditEntry', $id: 'AuditEntry', description: 'One /v1 call that may change something: who, what, when, and its answer; never a body or a secret.' })

export const AuditListSchema = ListOf(AuditEntrySchema, 'AuditList')

export const AuditListQuerySchema = Type.Object({
  ...ListQuerySchema.properties,
  key_name: Type.Optional(Type.String({ pattern: KEY_NAME.source, description: 'Only calls by this key.' })),
  page_id: Type.Optional(PageId),
  since: Type.Optional(Type.String({ format: 'date-time', description: 'Only calls at or after this time.' })),
  until: Type.Optional(Type.String({ format: 'date-time', description: 'Only calls before this time.' })),
})

export function auditEntryView (e: AuditRow) {
  return {
    id: String(e.id), key_name: e.key_name, method: e.method, route: e.route, page_id: e.page_id === '' ? null : e.page_id,
    resource_id: e.resource_id, status: e.status, request_id: e.request_id, at: e.created_at.toISOString(),
  }
}
