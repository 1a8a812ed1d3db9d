import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { requestOptin } from '../domain/optin-requests.js'
import { API_PROBLEMS, apiKeySecurity, BODY_PROBLEMS, named, problems } from '../schemas/common.js'
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
      response: { 201: named(OptinRequestSchema, 'Sent: the person sees the Notify Me request'), ...problems(...API_PROBLEMS, ...BODY_PROBLEMS, 'topic_not_found', 'page_not_found', 'page_without_access_token', 'window_closed', 'optin_request_throttled', 'graph_optin_restricted', 'graph_request_invalid', 'graph_message_refused', 'graph_rate_limited', 'graph_recipient_invalid', 'graph_topic_stopped', 'graph_person_unavailable', 'graph_page_restricted', 'graph_page_token_invalid', 'graph_permission_missing', 'graph_error', 'graph_temporary', 'graph_unreachable', 'graph_unconfirmed') },
    },
  }, async (request, reply) => {
    const sent = await requestOptin({ db: app.db, graph: app.graph, config: app.config }, request.params.id, request.body)
    return reply.code(201).send(sent)
  })
}

export default routes
