import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { listAudit } from '../domain/audit.js'
import { AuditListQuerySchema, AuditListSchema, auditEntryView } from '../schemas/audit.js'
import { API_PROBLEMS, apiKeySecurity, named, problems } from '../schemas/common.js'

const routes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/audit', {
    schema: {
      operationId: 'listAudit',
      summary: 'The audit: every /v1 call that may change something, oldest first, filtered by key name, Page and time (admin keys only)',
      description: 'One entry per call, written once it is answered: the key\'s name, the method and route pattern, the Page and resource ' +
        'acted on, the status. Never a body or a secret. Kept AUDIT_RETENTION_DAYS. Only an admin key (every Page, not read-only) may read it: ' +
        'other keys get 403 forbidden.',
      tags: ['audit'], security: apiKeySecurity,
      'x-access': { rights: 'admin' },
      querystring: AuditListQuerySchema,
      response: { 200: named(AuditListSchema, 'A page of entries, oldest first'), ...problems(...API_PROBLEMS, 'invalid_cursor') },
    },
  }, async (request) => {
    const { items, next_cursor } = await listAudit(app.db, request.query)
    return { items: items.map(auditEntryView), next_cursor }
  })
}

export default routes
