import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { parseAllowedHosts } from '../domain/event-addresses.js'
import {
  createSubscription, deleteSubscription, getSubscription, listDeliveries, listSubscriptions, redeliverEvent, rotateSecret,
  sendPing, subscriptionView, updateSubscription,
} from '../domain/events.js'
import { API_PROBLEMS, apiKeySecurity, BODY_PROBLEMS, IdParamsSchema, named, problems } from '../schemas/common.js'
import {
  CreateEventSubscriptionBodySchema, DeliveryQuerySchema, EventDeliveryListSchema, EventSubscriptionListQuerySchema,
  EventSubscriptionListSchema, EventSubscriptionSchema, EventSubscriptionWithSecretSchema, PingAnswerSchema, RedeliverBodySchema,
  RedeliveryAnswerSchema, UpdateEventSubscriptionBodySchema,
} from '../schemas/events.js'

const tags = ['events']
const security = apiKeySecurity

/** Outbound events (docs/EVENTS.md): subscriptions, their deliveries, redelivery and the test ping. */
const routes: FastifyPluginAsyncTypebox = async (app) => {
  const policy = {
    allowHttp: app.config.EVENTS_ALLOW_HTTP,
    allowPrivateNetworks: app.config.EVENTS_ALLOW_PRIVATE_NETWORKS,
    allowedHosts: parseAllowedHosts(app.config.EVENTS_ALLOWED_HOSTS),
  }
  const URL_PROBLEMS = ['event_url_invalid', 'event_url_not_https', 'event_url_private_address'] as const

  app.post('/event-subscriptions', {
    schema: {
      operationId: 'createEventSubscription', 'x-access': { rights: 'admin' },
      summary: 'Subscribe a URL to events; the answer holds the signing secret, shown only here',
      tags, security, body: CreateEventSubscriptionBodySchema,
      response: { 201: named(EventSubscriptionWithSecretSchema, 'Created, with its secret'), ...problems(...API_PROBLEMS, ...BODY_PROBLEMS, ...URL_PROBLEMS) },
    },
  }, async (request, reply) => {
    const { subscription, secret } = await createSubscription(app.db, policy, request.body)
    return reply.code(201).send({ ...subscriptionView(subscription), secret })
  })

  app.get('/event-subscriptions', {
    schema: {
      operationId: 'listEventSubscriptions', 'x-access': { rights: 'admin' }, summary: 'List event subscriptions, oldest first (never their secrets)', tags, security,
      querystring: EventSubscriptionListQuerySchema,
      response: { 200: named(EventSubscriptionListSchema, 'A page of subscriptions'), ...problems(...API_PROBLEMS, 'invalid_cursor') },
    },
  }, async (request) => {
    const { items, next_cursor } = await listSubscriptions(app.db, request.query.limit, request.query.cursor)
    return { items: items.map(subscriptionView), next_cursor }
  })

  app.get('/event-subscriptions/:id', {
    schema: {
      operationId: 'getEventSubscription', 'x-access': { rights: 'admin' }, summary: 'Read an event subscription (never its secret)', tags, security, params: IdParamsSchema,
      response: { 200: named(EventSubscriptionSchema, 'The subscription'), ...problems(...API_PROBLEMS, 'event_subscription_not_found') },
    },
  }, async (request) => subscriptionView(await getSubscription(app.db, request.params.id)))

  app.patch('/event-subscriptions/:id', {
    schema: {
      operationId: 'updateEventSubscription', 'x-access': { rights: 'admin' }, summary: 'Change an event subscription\'s url, events, Page filter, description, include_message or enabled',
      tags, security, params: IdParamsSchema, body: UpdateEventSubscriptionBodySchema,
      response: { 200: named(EventSubscriptionSchema, 'Updated'), ...problems(...API_PROBLEMS, ...BODY_PROBLEMS, ...URL_PROBLEMS, 'event_subscription_not_found', 'empty_update') },
    },
  }, async (request) => subscriptionView(await updateSubscription(app.db, policy, request.params.id, request.body)))

  app.delete('/event-subscriptions/:id', {
    schema: {
      operationId: 'deleteEventSubscription', 'x-access': { rights: 'admin' }, summary: 'Delete an event subscription with its deliveries', tags, security, params: IdParamsSchema,
      response: { 204: Type.Null({ description: 'Deleted' }), ...problems(...API_PROBLEMS, 'event_subscription_not_found') },
    },
  }, async (request, reply) => {
    await deleteSubscription(app.db, request.params.id)
    return reply.code(204).send(null)
  })

  app.post('/event-subscriptions/:id/rotate-secret', {
    schema: {
      operationId: 'rotateEventSubscriptionSecret', 'x-access': { rights: 'admin' },
      summary: 'Issue a new signing secret; the previous one also signs for EVENTS_SECRET_GRACE_HOURS',
      tags, security, params: IdParamsSchema,
      response: { 200: named(EventSubscriptionWithSecretSchema, 'The subscription with its new secret, shown only here'), ...problems(...API_PROBLEMS, 'event_subscription_not_found') },
    },
  }, async (request) => {
    const { subscription, secret } = await rotateSecret(app.db, request.params.id, app.config.EVENTS_SECRET_GRACE_HOURS)
    return { ...subscriptionView(subscription), secret }
  })

  app.get('/event-subscriptions/:id/deliveries', {
    schema: {
      operationId: 'listEventDeliveries', 'x-access': { rights: 'admin' }, summary: 'A subscription\'s deliveries, oldest first, with their attempts (status, duration, response code) and next retry',
      tags, security, params: IdParamsSchema, querystring: DeliveryQuerySchema,
      response: { 200: named(EventDeliveryListSchema, 'A page of deliveries'), ...problems(...API_PROBLEMS, 'event_subscription_not_found', 'invalid_cursor') },
    },
  }, async (request) => listDeliveries(app.db, request.params.id, request.query))

  app.post('/event-subscriptions/:id/test', {
    schema: {
      operationId: 'testEventSubscription', 'x-access': { rights: 'admin' }, summary: 'Send a ping event to the subscription (delivered, signed and retried like any event)',
      tags, security, params: IdParamsSchema,
      response: { 202: Type.Object(PingAnswerSchema.properties, { description: 'Queued' }), ...problems(...API_PROBLEMS, 'event_subscription_not_found', 'event_subscription_disabled') },
    },
  }, async (request, reply) => reply.code(202).send(await sendPing(app.db, request.params.id)))

  app.post('/events/:id/redeliver', {
    schema: {
      operationId: 'redeliverEvent', 'x-access': { rights: 'admin' },
      summary: 'Deliver an event again (same webhook-id) to the subscriptions that had it, or to one',
      tags, security, params: IdParamsSchema, body: RedeliverBodySchema,
      response: {
        202: Type.Object(RedeliveryAnswerSchema.properties, { description: 'The deliveries queued (one still waiting is reused)' }),
        ...problems(...API_PROBLEMS, ...BODY_PROBLEMS, 'event_not_found', 'event_subscription_not_found', 'event_subscription_disabled'),
      },
    },
  }, async (request, reply) => {
    const ids = await redeliverEvent(app.db, request.params.id, request.body?.subscription_id)
    return reply.code(202).send({ delivery_ids: ids })
  })
}

export default routes
