import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { estimateBroadcast } from '../domain/audience.js'
import { cancelBroadcast, createBroadcast, getBroadcast, listBroadcasts, withProgress } from '../domain/broadcasts.js'
import { enqueueBroadcast } from '../jobs/broadcast-worker.js'
import {
  BroadcastListQuerySchema, BroadcastListSchema, BroadcastParamsSchema, BroadcastSchema, CreateBroadcastBodySchema,
  CreateBroadcastHeadersSchema, EstimateSchema,
} from '../schemas/broadcasts.js'
import { API_PROBLEMS, apiKeySecurity, BODY_PROBLEMS, named, problems } from '../schemas/common.js'

const tags = ['broadcasts']
const security = apiKeySecurity
const topicInBody = { table: 'topics', in: 'body', field: 'topic_id', what: 'topic' } as const
const broadcastOwner = { table: 'broadcasts', in: 'params', field: 'id', what: 'broadcast' } as const

const routes: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/broadcasts', {
    schema: {
      operationId: 'createBroadcast',
      summary: 'Send one message on a topic to everyone holding a usable token (narrowed by audience filters, or to a list), now or at send_at',
      description: '202: accepted; it runs on the job queue (any instance, surviving restarts), each person at most once, ' +
        'through the same window/token path as POST /v1/notifications, at BROADCAST_RATE_PER_SECOND per Page. ' +
        'The audience is frozen when planning runs (send_at): audience_final beside audience_estimate. ' +
        'Poll GET /v1/broadcasts/{id} for progress. 404 unknown topic; 409 page_without_access_token; 422 idempotency_conflict, audience_topic_not_found; ' +
        '400 audience_range_empty, audience_with_psids.',
      tags, security, 'x-access': { rights: 'write', owner: topicInBody },
      headers: CreateBroadcastHeadersSchema,
      body: CreateBroadcastBodySchema,
      response: { 202: named(BroadcastSchema, 'The broadcast, accepted (also when replayed under the same Idempotency-Key)'), ...problems(...API_PROBLEMS, ...BODY_PROBLEMS, 'topic_not_found', 'page_not_found', 'page_without_access_token', 'idempotency_conflict', 'idempotency_in_progress', 'tag_required', 'tag_without_message_tag', 'audience_range_empty', 'audience_with_psids', 'audience_topic_not_found') },
    },
  }, async (request, reply) => {
    const { broadcast, replayed } = await createBroadcast(app.db, request.body, {
      idempotencyKey: request.headers['idempotency-key'],
      ...(request.apiKey ? { createdBy: request.apiKey.name } : {}),
      batchSize: app.config.BROADCAST_BATCH_SIZE,
      enqueue: (trx, b) => enqueueBroadcast(app.jobs, trx, b),
    })
    if (replayed) reply.header('idempotent-replayed', 'true')
    else request.log.info({ broadcast_id: broadcast.id, topic_id: broadcast.topic_id, state: broadcast.state }, 'broadcast created')
    return reply.code(202).send(await withProgress(app.db, broadcast))
  })

  app.post('/broadcasts/estimate', {
    schema: {
      operationId: 'estimateBroadcast',
      summary: 'Count the audience a broadcast with this body would have now, by route, without creating anything',
      description: 'The same body as POST /v1/broadcasts. One index-backed count over the same rows planning lists, so with nothing ' +
        'changed in between it equals the planned audience (audience_final). 404 unknown topic; 422 audience_topic_not_found. ' +
        'It changes nothing: a read-only key may ask.',
      tags, security, 'x-access': { rights: 'read', owner: topicInBody },
      body: CreateBroadcastBodySchema,
      response: { 200: named(EstimateSchema, 'The audience now and the route each person would take'), ...problems(...API_PROBLEMS, ...BODY_PROBLEMS, 'topic_not_found', 'audience_range_empty', 'audience_with_psids', 'audience_topic_not_found') },
    },
  }, async (request) => estimateBroadcast(app.db, request.body))

  app.get('/broadcasts/:id', {
    schema: {
      operationId: 'getBroadcast', summary: 'Read a broadcast: state, progress counted per person, and timestamps', tags, security, 'x-access': { rights: 'read', owner: broadcastOwner },
      params: BroadcastParamsSchema, response: { 200: named(BroadcastSchema, 'The broadcast and its progress'), ...problems(...API_PROBLEMS, 'broadcast_not_found') },
    },
  }, async (request) => getBroadcast(app.db, request.params.id))

  app.get('/broadcasts', {
    schema: {
      operationId: 'listBroadcasts', summary: 'List broadcasts, oldest first, filtered by topic and state', tags, security, 'x-access': { rights: 'read', filtered: true },
      querystring: BroadcastListQuerySchema, response: { 200: named(BroadcastListSchema, 'A page of broadcasts, oldest first'), ...problems(...API_PROBLEMS, 'invalid_cursor') },
    },
  }, async (request) => listBroadcasts(app.db, { ...request.query, pages: request.apiKey?.pages }))

  app.post('/broadcasts/:id/cancel', {
    schema: {
      operationId: 'cancelBroadcast',
      summary: 'Stop a scheduled or running broadcast; what was sent stays sent',
      description: 'Nobody else is sent to; a send already in flight finishes and is counted. Cancelling a cancelled broadcast ' +
        'returns it unchanged; a completed one is a 409 broadcast_completed.',
      tags, security, 'x-access': { rights: 'write', owner: broadcastOwner },
      params: BroadcastParamsSchema, response: { 200: named(BroadcastSchema, 'The broadcast, cancelled'), ...problems(...API_PROBLEMS, 'broadcast_not_found', 'broadcast_completed') },
    },
  }, async (request) => {
    const view = await cancelBroadcast(app.db, request.params.id)
    request.log.info({ broadcast_id: view.id, progress: view.progress }, 'broadcast cancelled')
    return view
  })
}

export default routes
