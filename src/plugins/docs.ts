import fp from 'fastify-plugin'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import { PROBLEM_CODES_LEAD } from '../schemas/common.js'
import { sharedSchemas } from '../schemas/index.js'
import { EventSchemas } from '../schemas/events.js'
import { PROBLEMS, type ProblemCode } from '../schemas/problems.js'

const openApiInfo = {
  title: 'OTN service',
  version: '1.0.0',
  description: 'Keeps Messenger One-Time Notification tokens and spends each exactly once.',
}

// The service's mark in the top bar and the browser tab (in place of the Fastify logo and Swagger's icon).
const icon = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="7" fill="#0a66c2"/><path d="M9 10h14a3 3 0 0 1 3 3v6a3 3 0 0 1-3 3h-7l-5 4v-4H9a3 3 0 0 1-3-3v-6a3 3 0 0 1 3-3z" fill="#fff"/><circle cx="21" cy="11" r="4" fill="#ffb400" stroke="#0a66c2" stroke-width="1.5"/></svg>'
const logo = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 180 40" width="180" height="40"><g transform="translate(2 4)">${icon.replace(/^<svg[^>]*>|<\/svg>$/g, '')}</g><text x="44" y="27" font-family="system-ui,-apple-system,Segoe UI,Roboto,sans-serif" font-size="20" font-weight="700" fill="#fff">${openApiInfo.title}</text></svg>`
// One definition: the top bar's definition picker has nothing to pick.
const css = '.swagger-ui .topbar .download-url-wrapper { display: none }'

type Json = Record<string, any>

const header = (description: string, schema: Json = { type: 'string' }) => ({ description, schema })
const REQUEST_ID = header('The request\'s id, in every log line about it: the caller\'s X-Request-Id when short and of safe characters, else a new UUID.')
const RETRY_AFTER = header('Seconds to wait before trying again.', { type: 'integer' })
const REPLAYED = header('"true" when an earlier request with the same Idempotency-Key produced this answer; nothing was done again.', { type: 'string', enum: ['true'] })

/**
 * What the route schemas cannot say, written into the document: each error response is
 * application/problem+json with the codes its operation can answer (an enum a client can switch
 * on, from problems() in schemas/common.ts), the response headers every client meets, and no
 * security on the routes that are open.
 */
function finishDocument ({ openapiObject }: { openapiObject: Json }): Json {
  for (const item of Object.values(openapiObject.paths ?? {}) as Json[]) {
    for (const op of Object.values(item) as Json[]) {
      if (!op.security) op.security = []
      const idempotent = (op.parameters ?? []).some((p: Json) => p.in === 'header' && p.name === 'idempotency-key')
      for (const [status, response] of Object.entries(op.responses ?? {}) as Array<[string, Json]>) {
        response.headers = { ...response.headers, 'X-Request-Id': REQUEST_ID }
        const codes = String(response.description ?? '').startsWith(PROBLEM_CODES_LEAD)
          ? String(response.description).slice(PROBLEM_CODES_LEAD.length).replace(/\.$/, '').split(', ') as ProblemCode[]
          : undefined
        if (codes) {
          response.description = `A problem; \`code\` is one of: ${codes.join(', ')}.`
          response.content = {
            'application/problem+json': {
              schema: { allOf: [{ $ref: '#/components/schemas/Problem' }, { type: 'object', properties: { code: { type: 'string', enum: codes } } }] },
            },
          }
          if (codes.some((c) => PROBLEMS[c].retryable)) response.headers['Retry-After'] = RETRY_AFTER
        }
        if (idempotent && status.startsWith('2')) response.headers['Idempotent-Replayed'] = REPLAYED
      }
    }
  }
  openapiObject.webhooks = eventWebhooks()
  return openapiObject
}

/**
 * The outbound events (docs/EVENTS.md) as OpenAPI 3.1 webhooks: what a subscription's URL receives,
 * one POST per event type, its body the Event_<type> schema, signed per Standard Webhooks.
 */
function eventWebhooks (): Json {
  const header = (name: string, description: string) => ({ name, in: 'header', required: true, description, schema: { type: 'string' } })
  return Object.fromEntries((EventSchemas as Json[]).map((schema) => {
    const type = String(schema.properties.type.const)
    return [type, {
      post: {
        operationId: `event_${type.replace('.', '_')}`,
        summary: String(schema.description ?? type),
        tags: ['events'],
        // The receiver authenticates the sender by the signature, not by a key.
        security: [],
        parameters: [
          header('webhook-id', 'The event id: the same on every retry and redelivery (deduplicate on it).'),
          header('webhook-timestamp', 'Seconds since the epoch when this attempt was signed.'),
          header('webhook-signature', 'Space-separated `v1,<base64 HMAC-SHA256>` signatures (two during a secret rotation\'s grace period).'),
        ],
        requestBody: { required: true, content: { 'application/json': { schema: { $ref: `#/components/schemas/${String(schema.$id)}` } } } },
        responses: {
          200: { description: 'Any 2xx ends the delivery.' },
          410: { description: 'Disables the subscription.' },
        },
      },
    }]
  }))
}

export default fp(async (app) => {
  for (const schema of sharedSchemas) app.addSchema(schema)
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { ...openApiInfo, license: { name: 'Proprietary: the service\'s own; ask its owners', identifier: 'LicenseRef-Proprietary' } },
      servers: [{ url: 'http://127.0.0.1:3000', description: 'npm start on this machine (HOST, PORT)' }],
      components: {
        securitySchemes: { apiKey: { type: 'http', scheme: 'bearer', description: 'A key from API_KEYS. A key may be limited to some Pages (their resources only; others answer 404 as if absent) and to reading (a change answers 403 forbidden); each operation\'s x-access says what it needs (docs/SECURITY.md).' } },
      },
      tags: [
        { name: 'pages', description: 'Facebook Pages the service sends for' },
        { name: 'topics', description: 'OTN topics and their token counts' },
        { name: 'subscribers', description: 'People and their tokens' },
        { name: 'consent', description: 'A person\'s consent history, export and erasure (docs/PRIVACY.md)' },
        { name: 'notifications', description: 'Sending the one follow-up message' },
        { name: 'broadcasts', description: 'One message on a topic to everyone who opted in, now or later' },
        { name: 'events', description: 'Outbound events to client apps: subscriptions, deliveries, redelivery (docs/EVENTS.md). Each event payload is a component schema named Event_<type>.' },
        { name: 'audit', description: 'Who changed what through /v1 (admin keys only)' },
        { name: 'webhooks', description: 'Meta webhook deliveries' },
        { name: 'operations', description: 'Health, readiness and metrics' },
      ],
    },
    refResolver: { buildLocalReference: (json, _base, _fragment, i) => String(json.$id ?? `def-${i}`) },
    transformObject: (doc) => finishDocument(doc as { openapiObject: Json }),
  })
  await app.register(swaggerUi, {
    routePrefix: '/docs',
    // Everything the page loads is served here (no CDN, no validator badge): it works offline.
    logo: { type: 'image/svg+xml', content: Buffer.from(logo), href: './', target: '_self' },
    theme: {
      title: `${openApiInfo.title}: API reference`,
      favicon: [{ filename: 'favicon.svg', rel: 'icon', sizes: 'any', type: 'image/svg+xml', content: Buffer.from(icon) }],
      css: [{ filename: 'theme.css', content: css }],
    },
    uiConfig: {
      // The published spec, as the README and DESIGN name it. With `urls` Swagger UI loads this and
      // not the plugin's own copy at /docs/json (which it forces as `url`).
      urls: [{ url: '/openapi.json', name: `${openApiInfo.title} ${openApiInfo.version}` }],
      // The API key entered in "Authorize" is kept in this browser's localStorage across reloads.
      persistAuthorization: true,
      displayRequestDuration: true,
      filter: true,
      tryItOutEnabled: true,
    },
  })
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger())
}, { name: 'docs' })
