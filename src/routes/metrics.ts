import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { apiKeyAuth } from '../plugins/auth.js'
import { METRICS_PATH } from '../plugins/metrics.js'
import { problems } from '../schemas/common.js'

const tokenMessages = {
  missing: 'Send the metrics token as "Authorization: Bearer <METRICS_TOKEN>".',
  invalid: 'The metrics token is not valid.',
}

/** The Prometheus scrape; open unless METRICS_TOKEN is set (then a bearer token, compared in constant time). */
const routes: FastifyPluginAsyncTypebox = async (app) => {
  const token = app.config.METRICS_TOKEN
  // Scrapes that arrive while one is being rendered get the same text: 50 at once cost one.
  let rendering: Promise<string> | undefined
  app.get(METRICS_PATH, {
    schema: {
      operationId: 'metrics',
      summary: 'Prometheus metrics: process, HTTP requests, Graph API calls, database backlog and pool, job queues',
      description: 'Open unless METRICS_TOKEN is set; then it requires "Authorization: Bearer <METRICS_TOKEN>".',
      tags: ['operations'],
      response: {
        200: { description: 'Prometheus text exposition format', content: { 'text/plain; version=0.0.4': { schema: Type.String() } } },
        ...problems('unauthorized'),
      },
    },
    ...(token ? { onRequest: apiKeyAuth([token], tokenMessages) } : {}),
  }, async (_request, reply) => {
    rendering ??= app.metrics.metrics().finally(() => { rendering = undefined })
    const text = await rendering
    return reply.type(app.metrics.contentType).send(text)
  })
}

export default routes
