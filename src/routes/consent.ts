import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { personHistory } from '../domain/consent-history.js'
import { getPage } from '../domain/pages.js'
import { API_PROBLEMS, apiKeySecurity, named, problems } from '../schemas/common.js'
import { HistoryListSchema, HistoryQuerySchema, historyView } from '../schemas/consent.js'
import { SubscriberParamsSchema } from '../schemas/subscribers.js'

const tags = ['consent']
const security = apiKeySecurity

/** A person's consent: history (docs/PRIVACY.md). */
const routes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/pages/:pageId/subscribers/:psid/history', {
    schema: {
      operationId: 'getConsentHistory',
      summary: "A person's consent history, oldest first: opt-ins, stops, what became of each token, what was sent (never a message or a token)",
      description: 'An empty list when the service holds nothing about the person; after an erasure, only its `erased` entry.',
      tags, security, params: SubscriberParamsSchema, querystring: HistoryQuerySchema,
      response: { 200: named(HistoryListSchema, 'A page of entries, oldest first'), ...problems(...API_PROBLEMS, 'page_not_found', 'topic_not_found', 'invalid_cursor') },
    },
  }, async (request) => {
    const { pageId, psid } = request.params
    await getPage(app.db, pageId)
    const { items, next_cursor } = await personHistory(app.db, pageId, psid, request.query)
    return { items: items.map(historyView), next_cursor }
  })
}

export default routes
