import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { getSubscriber } from '../domain/subscribers.js'
import { apiKeySecurity, problems } from '../schemas/common.js'
import { SubscriberParamsSchema, SubscriberSchema } from '../schemas/subscribers.js'

const tags = ['subscribers']
const security = apiKeySecurity

const routes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/pages/:pageId/subscribers/:psid', {
    schema: {
      operationId: 'getSubscriber', summary: "A person's 24-hour window and usable tokens per topic (masked)", tags, security,
      params: SubscriberParamsSchema, response: { 200: SubscriberSchema, ...problems(400, 401, 404) },
    },
  }, async (request) => getSubscriber(app.db, request.params.pageId, request.params.psid))
}

export default routes
