import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { requestOptin } from '../domain/optin-requests.js'
import { sendProblem } from '../plugins/errors.js'
import { API_PROBLEMS, apiKeySecurity, BODY_PROBLEMS, named, problems } from '../schemas/common.js'
import { CreateOptinRequestBodySchema, OptinRequestParamsSchema, OptinRequestSchema, RECURRING_OPTIONS } from '../schemas/optin-requests.js'

const tags = ['topics']
const security = apiKeySecurity

const routes: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/topics/:id/optin-requests', {
    schema: {
      operationId: 'createOptinRequest',
      summary: 'Ask a person to opt in to a topic (the "Notify Me" request, one-time or recurring)',
      description: 'Sends the one_time_notif_req template (kind one_time_notif, the default) or the recurring notification_messages ' +
        'template (kind notification_messages, with its options frequency, image_url, cta_text, reoptin and timezone under Meta\'s names) ' +
        'with the topic\'s payload key. Only inside the person\'s 24-hour window (409 window_closed otherwise). One-time requests: at most ' +
        'once per OPTIN_REQUEST_INTERVAL_SECONDS per topic and person (429 optin_request_throttled with Retry-After). Recurring requests: ' +
        'Meta\'s rule, one per title and person a week, on any topic of the Page (429 recurring_optin_weekly_limit with Retry-After and ' +
        'next_request_at); the one-time interval does not apply to them. The recurring options with kind one_time_notif are a 400. ' +
        'Every request sent to Meta is recorded with its kind; Meta\'s refusals come back with `graph` (613/1893016 → 429), a lost ' +
        'answer is 504 graph_unconfirmed and still counts toward the throttle.',
      tags, security, 'x-access': { rights: 'write', owner: { table: 'topics', in: 'params', field: 'id', what: 'topic' } },
      params: OptinRequestParamsSchema, body: CreateOptinRequestBodySchema,
      response: { 201: named(OptinRequestSchema, 'Sent: the person sees the Notify Me request'), ...problems(...API_PROBLEMS, ...BODY_PROBLEMS, 'topic_not_found', 'page_not_found', 'page_without_access_token', 'page_token_unreadable', 'window_closed', 'optin_request_throttled', 'invalid_timezone', 'recurring_optin_weekly_limit', 'graph_optin_restricted', 'graph_request_invalid', 'graph_message_refused', 'graph_rate_limited', 'graph_recipient_invalid', 'graph_topic_stopped', 'graph_person_unavailable', 'graph_page_restricted', 'graph_page_token_invalid', 'graph_permission_missing', 'graph_error', 'graph_temporary', 'graph_unreachable', 'graph_unconfirmed') },
    },
  }, async (request, reply) => {
    if (request.body.kind !== 'notification_messages') {
      const misplaced = RECURRING_OPTIONS.filter((o) => request.body[o] !== undefined)
      if (misplaced.length > 0) {
        const errors = misplaced.map((o) => ({ field: `body/${o}`, message: 'only with kind notification_messages' }))
        return sendProblem(reply, 400, 'validation_failed', errors.map((e) => `${e.field}: ${e.message}`).join('; '), { errors })
      }
    }
    const sent = await requestOptin({ db: app.db, graph: app.graph, config: app.config }, request.params.id, request.body, request.apiKey?.name)
    return reply.code(201).send(sent)
  })
}

export default routes
