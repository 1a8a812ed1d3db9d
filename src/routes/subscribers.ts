import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { getSubscriber } from '../domain/subscribers.js'
import { API_PROBLEMS, apiKeySecurity, named, problems } from '../schemas/common.js'
import { SubscriberParamsSchema, SubscriberSchema } from '../schemas/subscribers.js'

const tags = ['subscribers']
const security = apiKeySecurity

const routes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/pages/:pageId/subscribers/:psid', {
    schema: {
      operationId: 'getSubscriber', summary: "A person's 24-hour window and usable tokens per topic (masked)", tags, security, 'x-access': { rights: 'read' },
      params: SubscriberParamsSchema, response: { 200: named(SubscriberSchema, 'The person: window and usable tokens per topic'), ...problems(...API_PROBLEMS, 'page_not_found', 'subscriber_not_found') },
    },
  }, async (request) => getSubscriber(app.db, request.params.pageId, request.params.psid))
}

export default routes
