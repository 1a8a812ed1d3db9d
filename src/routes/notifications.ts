import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import {
  getNotification, listNotifications, notificationView, problemOf, SendWriter, sendNotification, type SendDeps,
} from '../domain/notifications.js'
import { apiKeySecurity, problems } from '../schemas/common.js'
import {
  CreateNotificationBodySchema, CreateNotificationHeadersSchema, NotificationListQuerySchema, NotificationListSchema,
  NotificationParamsSchema, NotificationSchema,
} from '../schemas/notifications.js'

const tags = ['notifications']
const security = apiKeySecurity

const routes: FastifyPluginAsyncTypebox = async (app) => {
  // Group commit: sends that start or end while a statement runs share the next one.
  const steps = new SendWriter(app.db, app.config.TOKEN_LEASE_SECONDS)

  app.post('/notifications', {
    schema: {
      operationId: 'sendNotification',
      summary: 'Send one message on a topic to a person (window first, else exactly one token)',
      description: '201 sent. 409 no_token (the attempt is recorded), page_without_access_token or idempotency_in_progress; ' +
        '404 unknown topic; 422 idempotency_conflict or graph_request_invalid; 429 graph_rate_limited (Retry-After); ' +
        '502 Meta refused for another reason (person unavailable, Page token or permission, topic stopped); ' +
        '503 graph_temporary / graph_unreachable (nothing spent); 504 graph_unconfirmed (Meta did not answer: maybe delivered, never re-sent). ' +
        'Every problem after an attempt carries `notification` (the recorded attempt, with token_state) and, when Meta answered, `graph`.',
      tags, security,
      headers: CreateNotificationHeadersSchema,
      body: CreateNotificationBodySchema,
      response: { 201: NotificationSchema, ...problems(400, 401, 404, 409, 413, 415, 422, 429, 502, 503, 504) },
    },
  }, async (request, reply) => {
    const deps: SendDeps = { db: app.db, graph: app.graph, config: app.config, log: request.log, steps, onFinal: app.notificationFinished }
    const result = await sendNotification(deps, { ...request.body, idempotency_key: request.headers['idempotency-key'] })
    if (result.replayed) reply.header('idempotent-replayed', 'true')
    if (result.httpStatus !== 201) throw problemOf(result)
    return reply.code(201).send(notificationView(result.notification))
  })

  app.get('/notifications/:id', {
    schema: {
      operationId: 'getNotification', summary: 'Read one notification and its outcome (never a token value)', tags, security,
      params: NotificationParamsSchema, response: { 200: NotificationSchema, ...problems(400, 401, 404) },
    },
  }, async (request) => notificationView(await getNotification(app.db, request.params.id)))

  app.get('/notifications', {
    schema: {
      operationId: 'listNotifications',
      summary: 'List notifications, oldest first, filtered by topic, Page, person, status and creation time', tags, security,
      querystring: NotificationListQuerySchema, response: { 200: NotificationListSchema, ...problems(400, 401) },
    },
  }, async (request) => {
    const { items, next_cursor } = await listNotifications(app.db, request.query)
    return { items: items.map(notificationView), next_cursor }
  })
}

export default routes
