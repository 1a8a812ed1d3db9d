import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { requestOptin } from '../domain/optin-requests.js'
import { apiKeySecurity, problems } from '../schemas/common.js'
import { CreateOptinRequestBodySchema, OptinRequestParamsSchema, OptinRequestSchema } from '../schemas/optin-requests.js'

const tags = ['topics']
const security = apiKeySecurity

const routes: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/topics/:id/optin-requests', {
    schema: {
      operationId: 'createOptinRequest',
      summary: 'Ask a person to opt in to a topic (the "Notify Me" request)',
      description: 'Sends the one_time_notif_req template with the topic\'s payload key. Only inside the person\'s 24-hour window ' +
        '(409 window_closed otherwise) and at most once per OPTIN_REQUEST_INTERVAL_SECONDS per topic and person ' +
        '(429 optin_request_throttled with Retry-After). Every request sent to Meta is recorded; Meta\'s refusals come back ' +
        'with `graph` (613/1893016 → 429), a lost answer is 504 graph_unconfirmed and still counts toward the throttle.',
      tags, security,
      params: OptinRequestParamsSchema, body: CreateOptinRequestBodySchema,
      response: { 201: OptinRequestSchema, ...problems(400, 401, 404, 409, 413, 415, 422, 429, 502, 503, 504) },
    },
  }, async (request, reply) => {
    const sent = await requestOptin({ db: app.db, graph: app.graph, config: app.config }, request.params.id, request.body)
    return reply.code(201).send(sent)
  })
}

export default routes
