import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Registry } from 'prom-client'
import type { Config } from './config.js'
import { openDatabase, type Database, type DatabaseHandle } from './db/database.js'
import { migrate } from './db/migrate.js'
import type { Notification } from './db/types.js'
import type { Delivery } from './domain/webhook-body.js'
import { buildInfo } from './build-info.js'
import { upsertPage } from './domain/pages.js'
import { keyringFor } from './crypto/configured-keyring.js'
import { useKeyring } from './crypto/secret-box.js'
import { createGraphClient, type GraphClient } from './graph/client.js'
import { instrumentGraphClient } from './graph/instrumented.js'
import { versionStatus, versionWarning } from './graph/versions.js'
import access from './plugins/access.js'
import { v1KeyAuth } from './plugins/auth.js'
import database from './plugins/database.js'
import docs from './plugins/docs.js'
import errors, { clientErrors, frameworkErrors, routeNotFound } from './plugins/errors.js'
import jobs from './plugins/jobs.js'
import sender from './plugins/sender.js'
import jsonBody from './plugins/json-body.js'
import metrics, { eventDeliveryCounter, notificationCounter, webhookCounter } from './plugins/metrics.js'
import events from './plugins/events.js'
import eventRoutes from './routes/events.js'
import { broadcastWorkers } from './jobs/broadcast-worker.js'
import broadcastRoutes from './routes/broadcasts.js'
import healthRoutes from './routes/health.js'
import metricsRoutes from './routes/metrics.js'
import notificationRoutes from './routes/notifications.js'
import optinRequestRoutes from './routes/optin-requests.js'
import auditRoutes from './routes/audit.js'
import pageRoutes from './routes/pages.js'
import subscriberRoutes from './routes/subscribers.js'
import consentRoutes from './routes/consent.js'
import topicRoutes from './routes/topics.js'
import webhookRoutes from './routes/webhooks.js'
import { loggerOptions, maskUrl, requestId, RequestLog } from './logger.js'
import { validatorCompiler } from './plugins/validation.js'
import { scheduleMaintenance } from './maintenance.js'
import { maintenanceTasks } from './tasks.js'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
    dbKind: 'postgres' | 'pglite'
    graph: GraphClient
    /** Counts a notification brought to a final status (otn_notifications_total); does nothing when metrics are off. */
    notificationFinished: (n: Notification) => void
    /** Counts a signed delivery answered 200 and its events (otn_webhook_*_total); does nothing when metrics are off. */
    webhookReceived: (delivery: Delivery, duplicate: boolean) => void
    /** Resolves when the audit entries of every answered request are written (tests; closing waits for them too). */
    auditWritten: () => Promise<void>
  }
}

export interface AppDeps {
  /** A database the caller owns (tests share one per file); it is migrated but not closed by the app. */
  db?: Database
  dbKind?: 'postgres' | 'pglite'
  /** Where logs go (tests capture them); default stdout. */
  logStream?: NodeJS.WritableStream
  /** A Graph API client the caller owns (not closed by the app); default: one built from config, closed with the app. */
  graph?: GraphClient
}

export async function buildApp (config: Config, deps: AppDeps = {}): Promise<FastifyInstance> {
  const app = Fastify({
    logger: loggerOptions(config.LOG_LEVEL, deps.logStream) as FastifyServerOptions['logger'],
    logController: new RequestLog(),
    bodyLimit: config.BODY_LIMIT_BYTES,
    genReqId: requestId,
    return503OnClosing: true,
    frameworkErrors,
    clientErrorHandler: clientErrors,
    // Slow and silent clients (docs/OPERATIONS.md): Node closes a connection whose headers or whole
    // request take longer than these, checking every second or so (its default is every 30 s).
    requestTimeout: config.HTTP_REQUEST_TIMEOUT_MS,
    keepAliveTimeout: config.HTTP_KEEP_ALIVE_TIMEOUT_MS,
    http: {
      headersTimeout: config.HTTP_HEADERS_TIMEOUT_MS,
      requestTimeout: config.HTTP_REQUEST_TIMEOUT_MS,
      connectionsCheckingInterval: Math.min(1000, Math.ceil(config.HTTP_HEADERS_TIMEOUT_MS / 2)),
    },
  }).withTypeProvider<TypeBoxTypeProvider>()
  app.server.maxConnections = config.HTTP_MAX_CONNECTIONS
  app.setValidatorCompiler(validatorCompiler)

  let handle: { db: Database, kind: 'postgres' | 'pglite', location: string, pool?: DatabaseHandle['pool'], previousHolder?: DatabaseHandle['previousHolder'], close?: () => Promise<void> }
  if (deps.db) {
    handle = { db: deps.db, kind: deps.dbKind ?? 'postgres', location: 'injected' }
  } else {
    handle = await openDatabase({
      databaseUrl: config.DATABASE_URL,
      poolSize: config.DATABASE_POOL_SIZE,
      statementCacheSize: config.DATABASE_STATEMENT_CACHE_SIZE,
      pgliteDataDir: config.PGLITE_DATA_DIR,
    })
    const location = maskUrl(handle.location)
    app.log.info({ database: handle.kind, location }, `database: ${handle.kind} at ${location}`)
    const killed = handle.previousHolder
    if (killed) app.log.warn({ previous_pid: killed.pid, previous_host: killed.host, since: killed.since }, `the process that used ${handle.location} before (pid ${killed.pid}) stopped without closing it; the database recovers as after a crash`)
  }

  try {
    useKeyring(keyringFor(config, handle.kind, app.log))
    const { newer } = await migrate(handle.db)
    if (newer.length > 0) {
      app.log.warn({ newer_migrations: newer }, `the database is ahead of this build: a newer build applied ${newer.join(', ')}; ` +
        'running against them, as migrations are expand-then-contract (docs/OPERATIONS.md)')
    }
  } catch (error) {
    await handle.close?.()
    throw error
  }
  app.decorate('config', config)
  app.decorate('dbKind', handle.kind)
  const versionWarned = versionWarning(config.GRAPH_API_VERSION)
  if (versionWarned) app.log.warn({ graph_api_version: config.GRAPH_API_VERSION, status: versionStatus(config.GRAPH_API_VERSION).status }, versionWarned)
  // One registry per app (tests build many apps in one process); none at all when metrics are off.
  const register = config.METRICS_ENABLED ? new Registry() : undefined
  const client = deps.graph ?? createGraphClient({
    baseUrl: config.GRAPH_API_BASE_URL,
    version: config.GRAPH_API_VERSION,
    appSecret: config.META_APP_SECRET,
    timeoutMs: config.GRAPH_API_TIMEOUT_MS,
    connectTimeoutMs: config.GRAPH_API_CONNECT_TIMEOUT_MS,
    connections: config.GRAPH_API_CONNECTIONS,
    onServedVersion: (served) => {
      app.log.warn({ graph_api_version: config.GRAPH_API_VERSION, served_as: served },
        `Meta answers GRAPH_API_VERSION ${config.GRAPH_API_VERSION} from ${served}: the configured version is retired or unknown; set a current one.`)
    },
  })
  const graph = register ? instrumentGraphClient(client, register) : client
  app.decorate('graph', graph)
  app.decorate('notificationFinished', register ? notificationCounter(register) : () => {})
  app.decorate('webhookReceived', register ? webhookCounter(register) : () => {})
  if (!deps.graph) app.addHook('onClose', async () => { await graph.close() })
  app.addHook('onSend', async (request, reply) => { reply.header('x-request-id', request.id) })

  await app.register(errors)
  await app.register(jsonBody, { maxDepth: config.BODY_MAX_DEPTH })
  await app.register(database, { db: handle.db, close: handle.close })
  await app.register(sender)
  await app.register(jobs, { workers: [broadcastWorkers] })
  await app.register(events, register ? { onOutcome: eventDeliveryCounter(register) } : {})
  if (register) await app.register(metrics, { register, pool: handle.pool, build: buildInfo(config.BUILD_COMMIT), cacheSeconds: config.METRICS_CACHE_SECONDS })
  await app.register(docs)
  await app.register(healthRoutes)
  if (register) await app.register(metricsRoutes)
  await app.register(webhookRoutes)
  const auditWrites = new Set<Promise<void>>()
  app.decorate('auditWritten', async () => { await Promise.all([...auditWrites]) })
  app.addHook('preClose', async () => { await app.auditWritten() })
  await app.register(async (v1) => {
    v1.addHook('onRequest', v1KeyAuth(config.apiKeys))
    // The access rule and the audit of every /v1 route (docs/SECURITY.md), declared per route as x-access.
    await v1.register(access, { writes: auditWrites })
    // An unknown /v1 path is a 404 only to a caller with a key: without one, 401 like every /v1 path.
    v1.setNotFoundHandler(routeNotFound)
    await v1.register(pageRoutes)
    await v1.register(topicRoutes)
    await v1.register(subscriberRoutes)
    await v1.register(consentRoutes)
    await v1.register(notificationRoutes)
    await v1.register(broadcastRoutes)
    await v1.register(optinRequestRoutes)
    await v1.register(eventRoutes)
    await v1.register(auditRoutes)
  }, { prefix: '/v1' })

  scheduleMaintenance(app, maintenanceTasks())

  if (config.PAGE_ID && config.PAGE_ACCESS_TOKEN) {
    await upsertPage(handle.db, config.PAGE_ID, { name: config.PAGE_NAME, access_token: config.PAGE_ACCESS_TOKEN })
  }
  return app
}
