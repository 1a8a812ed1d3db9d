import fp from 'fastify-plugin'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import { sharedSchemas } from '../schemas/index.js'

const openApiInfo = {
  title: 'OTN service',
  version: '1.0.0',
  description: 'Keeps Messenger One-Time Notification tokens and spends each exactly once.',
}

export default fp(async (app) => {
  for (const schema of sharedSchemas) app.addSchema(schema)
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: openApiInfo,
      components: {
        securitySchemes: { apiKey: { type: 'http', scheme: 'bearer', description: 'A key from API_KEYS.' } },
      },
      tags: [
        { name: 'pages', description: 'Facebook Pages the service sends for' },
        { name: 'topics', description: 'OTN topics and their token counts' },
        { name: 'subscribers', description: 'People and their tokens' },
        { name: 'notifications', description: 'Sending the one follow-up message' },
        { name: 'broadcasts', description: 'One message on a topic to everyone who opted in, now or later' },
        { name: 'webhooks', description: 'Meta webhook deliveries' },
        { name: 'operations', description: 'Health, readiness and metrics' },
      ],
    },
    refResolver: { buildLocalReference: (json, _base, _fragment, i) => String(json.$id ?? `def-${i}`) },
  })
  await app.register(swaggerUi, { routePrefix: '/docs' })
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger())
}, { name: 'docs' })
