import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { createTopic, deleteTopic, getTopic, listTopics, topicView, updateTopic } from '../domain/topics.js'
import { API_PROBLEMS, apiKeySecurity, BODY_PROBLEMS, named, problems } from '../schemas/common.js'
import {
  CreateTopicBodySchema, DeletedTopicSchema, DeleteTopicQuerySchema, TopicListQuerySchema, TopicListSchema,
  TopicParamsSchema, TopicSchema, UpdateTopicBodySchema,
} from '../schemas/topics.js'

const tags = ['topics']
const security = apiKeySecurity
const topicOwner = { table: 'topics', in: 'params', field: 'id', what: 'topic' } as const

const routes: FastifyPluginAsyncTypebox = async (app) => {
  app.post('/topics', {
    schema: {
      operationId: 'createTopic', summary: 'Create an OTN topic on a Page', tags, security, 'x-access': { rights: 'write' },
      body: CreateTopicBodySchema, response: { 201: named(TopicSchema, 'Created'), ...problems(...API_PROBLEMS, ...BODY_PROBLEMS, 'page_not_found', 'topic_name_taken', 'topic_payload_taken', 'invalid_payload') },
    },
  }, async (request, reply) => reply.code(201).send(topicView(await createTopic(app.db, request.body, request.apiKey?.name))))

  app.get('/topics', {
    schema: {
      operationId: 'listTopics', summary: 'List topics with their token counts (of the Pages the key may see)', tags, security, 'x-access': { rights: 'read', filtered: true },
      querystring: TopicListQuerySchema, response: { 200: named(TopicListSchema, 'A page of topics, oldest first'), ...problems(...API_PROBLEMS, 'invalid_cursor') },
    },
  }, async (request) => {
    const { items, next_cursor } = await listTopics(app.db, { ...request.query, pages: request.apiKey?.pages })
    return { items: items.map(topicView), next_cursor }
  })

  app.get('/topics/:id', {
    schema: {
      operationId: 'getTopic', summary: 'Read a topic with its token counts', tags, security, 'x-access': { rights: 'read', owner: topicOwner },
      params: TopicParamsSchema, response: { 200: named(TopicSchema, 'The topic and its counts'), ...problems(...API_PROBLEMS, 'topic_not_found') },
    },
  }, async (request) => topicView(await getTopic(app.db, request.params.id)))

  app.patch('/topics/:id', {
    schema: {
      operationId: 'updateTopic', summary: 'Rename or retitle a topic (id and payload stay)', tags, security, 'x-access': { rights: 'write', owner: topicOwner },
      params: TopicParamsSchema, body: UpdateTopicBodySchema,
      response: { 200: named(TopicSchema, 'Updated'), ...problems(...API_PROBLEMS, ...BODY_PROBLEMS, 'topic_not_found', 'topic_name_taken', 'empty_update') },
    },
  }, async (request) => topicView(await updateTopic(app.db, request.params.id, request.body)))

  app.delete('/topics/:id', {
    schema: {
      operationId: 'deleteTopic', summary: 'Delete a topic; refused while it holds usable tokens unless force=true', tags, security, 'x-access': { rights: 'write', owner: topicOwner },
      params: TopicParamsSchema, querystring: DeleteTopicQuerySchema,
      response: { 200: named(DeletedTopicSchema, 'Deleted'), ...problems(...API_PROBLEMS, 'topic_not_found', 'topic_has_tokens') },
    },
  }, async (request) => {
    const { discarded_tokens } = await deleteTopic(app.db, request.params.id, request.query.force ?? false)
    return { id: request.params.id, deleted: true as const, discarded_tokens }
  })
}

export default routes
