import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { DomainError, type DomainCode } from '../domain/errors.js'
import { getNotification, listNotifications } from '../domain/notifications.js'
import { API_PROBLEMS, apiKeySecurity, BODY_PROBLEMS, named, problems } from '../schemas/common.js'
import {
  CreateNotificationBodySchema, CreateNotificationHeadersSchema, NotificationListQuerySchema, NotificationListSchema,
  NotificationParamsSchema, NotificationSchema, notificationView,
} from '../schemas/notifications.js'

const tags = ['notifications']
const security = apiKeySecurity
// The send's own statement finds the topic among the key's Pages (filtered): no read before it; owner is for the audit.
const topicInBody = { table: 'topics', in: 'body', field: 'topic_id', what: 'topic' } as const

const routes: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/notifications', {
    schema: {
      operationId: 'sendNotification',
      summary: 'Send one message on a topic to a person (window first, else exactly one token)',
      description: '201 sent. 409 no_token (the attempt is recorded), page_without_access_token or idempotency_in_progress (Retry-After); ' +
        '404 unknown topic; 422 idempotency_conflict, graph_request_invalid or graph_message_refused; 429 graph_rate_limited or graph_frequency_limited (Retry-After), recurring_cooldown (the person can be reached only with a recurring token that may not send yet: Retry-After and next_send_at); ' +
        '502 Meta refused for another reason (person unavailable, Page token or permission, topic stopped); ' +
        '503 graph_temporary / graph_unreachable (nothing spent), token_busy (the person\'s token stayed locked by another statement, such as a key rotation batch, for the whole send: nothing spent; Retry-After); 504 graph_unconfirmed (Meta did not answer: maybe delivered, never re-sent). ' +
        'Every problem after an attempt carries `notification` (the recorded attempt, with token_state) and, when Meta answered, `graph`.',
      tags, security, 'x-access': { rights: 'write', owner: topicInBody, filtered: true },
      headers: CreateNotificationHeadersSchema,
      body: CreateNotificationBodySchema,
      response: { 201: named(NotificationSchema, 'Sent (also when replayed under the same Idempotency-Key)'), ...problems(...API_PROBLEMS, ...BODY_PROBLEMS, 'topic_not_found', 'page_without_access_token', 'page_token_unreadable', 'no_token', 'idempotency_in_progress', 'idempotency_conflict', 'tag_required', 'tag_without_message_tag', 'graph_token_refused', 'graph_request_invalid', 'graph_message_refused', 'graph_rate_limited', 'graph_frequency_limited', 'recurring_cooldown', 'graph_recipient_invalid', 'graph_topic_stopped', 'graph_person_unavailable', 'graph_page_restricted', 'graph_page_token_invalid', 'graph_permission_missing', 'graph_error', 'graph_temporary', 'graph_unreachable', 'graph_unconfirmed', 'token_unreadable', 'token_busy') },
    },
  }, async (request, reply) => {
    const result = await app.sender.send({
      ...request.body, idempotency_key: request.headers['idempotency-key'], created_by: request.apiKey?.name, pages: request.apiKey?.pages,
    }, request.log)
    if (result.replayed) reply.header('idempotent-replayed', 'true')
    if (result.code !== 'sent') {
      const p = result.problem ?? { code: result.code, detail: 'The notification was not sent.' }
      throw new DomainError(p.code as DomainCode, p.detail, {
        ...(p.graph ? { graph: p.graph } : {}),
        ...(p.retry_after_seconds !== undefined ? { retryAfterSeconds: p.retry_after_seconds } : {}),
        ...(p.next_send_at !== undefined ? { next_send_at: p.next_send_at } : {}),
        notification: result.notification,
      })
    }
    return reply.code(201).send(notificationView(result.notification))
  })

  app.get('/notifications/:id', {
    schema: {
      operationId: 'getNotification', summary: 'Read one notification and its outcome (never a token value)', tags, security,
      'x-access': { rights: 'read', owner: { table: 'notifications', in: 'params', field: 'id', what: 'notification' } },
      params: NotificationParamsSchema, response: { 200: named(NotificationSchema, 'The notification and its outcome'), ...problems(...API_PROBLEMS, 'notification_not_found') },
    },
  }, async (request) => notificationView(await getNotification(app.db, request.params.id)))

  app.get('/notifications', {
    schema: {
      operationId: 'listNotifications',
      summary: 'List notifications, oldest first, filtered by topic, Page, person, status and creation time', tags, security, 'x-access': { rights: 'read', filtered: true },
      querystring: NotificationListQuerySchema, response: { 200: named(NotificationListSchema, 'A page of notifications, oldest first'), ...problems(...API_PROBLEMS, 'invalid_cursor') },
    },
  }, async (request) => {
    const { items, next_cursor } = await listNotifications(app.db, { ...request.query, pages: request.apiKey?.pages })
    return { items: items.map(notificationView), next_cursor }
  })
}

export default routes
