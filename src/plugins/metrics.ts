import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { sql } from 'kysely'
import { sendBacklog } from '../domain/token-store.js'
import type pg from 'pg'
import { collectDefaultMetrics, Counter, Gauge, Histogram, type Registry } from 'prom-client'

export const METRICS_PATH = '/metrics'

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Registry
  }
}

type HttpLabels = Record<'method' | 'route' | 'status_code', string>

/** Requests by route pattern (never the raw URL: no PSID, token or query string becomes a label). */
function httpMetrics (app: FastifyInstance, register: Registry): void {
  const labelNames = ['method', 'route', 'status_code'] as const
  const requests = new Counter({ name: 'otn_http_requests_total', help: 'HTTP requests answered, by route pattern ("unmatched" when no route matched).', labelNames, registers: [register] })
  const duration = new Histogram({ name: 'otn_http_request_duration_seconds', help: 'Time from receiving an HTTP request to the end of its answer.', labelNames, registers: [register] })
  // One labels object per series, made on its first request and reused by every later one.
  const series = new Map<string, HttpLabels>()
  app.addHook('onResponse', (request, reply, done) => {
    const route = request.routeOptions.url ?? 'unmatched'
    if (route !== METRICS_PATH) {
      const key = `${request.method} ${reply.statusCode} ${route}`
      let labels = series.get(key)
      if (labels === undefined) {
        labels = { method: request.method, route, status_code: String(reply.statusCode) }
        series.set(key, labels)
      }
      requests.inc(labels)
      duration.observe(labels, reply.elapsedTime / 1000)
    }
    done()
  })
}

/**
 * Notifications brought to a final status, by status and route, counted by the process that wrote
 * the status (an API send, a broadcast's, lease recovery's), so that summed over instances each
 * notification is counted once. `route` is empty when no route was taken.
 */
export function notificationCounter (register: Registry): (n: { status: string, route: string | null }) => void {
  const counter = new Counter({
    name: 'otn_notifications_total',
    help: 'Notifications brought to a final status (sent, no_token, failed, unconfirmed), by status and route (token, window).',
    labelNames: ['status', 'route'] as const,
    registers: [register],
  })
  return (n) => counter.inc({ status: n.status, route: n.route ?? '' })
}

/**
 * Backlog gauges read on each scrape, by a query on the partial index notifications_open_idx and
 * pg-boss's queue size. If the database does not answer, the scrape still does: these gauges are
 * left out and otn_metrics_database_up is 0.
 */
function databaseMetrics (app: FastifyInstance, register: Registry): void {
  // Every gauge's collect() runs at once on a scrape; they share one read.
  let reading: Promise<void> | undefined
  const collect = (): Promise<void> => (reading ??= read().finally(() => { reading = undefined }))
  const up = new Gauge({ name: 'otn_metrics_database_up', help: '1 when the database answered this scrape\'s queries; 0 when it did not (the gauges read from it are then left out).', registers: [register], collect })
  const tokens = new Gauge({ name: 'otn_tokens', help: 'Tokens in a state; only held (claimed by a send in flight, not yet settled) is counted.', labelNames: ['state'] as const, registers: [register], collect })
  const notifications = new Gauge({ name: 'otn_notifications', help: 'Notifications in a status; only pending (not yet settled) is counted.', labelNames: ['status'] as const, registers: [register], collect })
  const oldest = new Gauge({ name: 'otn_notifications_oldest_age_seconds', help: 'Age of the oldest notification in a status (0 when there is none); only pending.', labelNames: ['status'] as const, registers: [register], collect })
  const queued = new Gauge({ name: 'otn_jobs_queued', help: 'Jobs waiting in each job queue (created or retrying, not yet active).', labelNames: ['queue'] as const, registers: [register], collect })
  const pages = new Gauge({ name: 'otn_pages', help: 'Registered Pages by health: healthy="false" after a Graph API error that concerns the Page itself (its access token or permissions; GET /v1/pages/{pageId} shows last_error), until its token is replaced.', labelNames: ['healthy'] as const, registers: [register], collect })
  const fromDatabase = [tokens, notifications, oldest, queued, pages]

  async function read (): Promise<void> {
    try {
      const backlog = await sendBacklog(app.db)
      const { rows: [health] } = await sql<{ healthy: number, unhealthy: number }>`
        select count(*) filter (where healthy)::float8 as healthy, count(*) filter (where not healthy)::float8 as unhealthy from pages`.execute(app.db)
      const queues: Array<[string, number]> = []
      for (const { name } of await app.jobs.getQueues()) queues.push([name, await app.jobs.getQueueSize(name)])
      for (const gauge of fromDatabase) gauge.reset()
      tokens.set({ state: 'held' }, backlog.held)
      notifications.set({ status: 'pending' }, backlog.pending)
      oldest.set({ status: 'pending' }, backlog.oldest_pending_seconds)
      for (const [queue, size] of queues) queued.set({ queue }, size)
      pages.set({ healthy: 'true' }, health.healthy)
      pages.set({ healthy: 'false' }, health.unhealthy)
      up.set(1)
    } catch (err) {
      app.log.warn({ err }, 'metrics: the database did not answer; its gauges are left out of this scrape')
      for (const gauge of fromDatabase) gauge.reset()
      up.set(0)
    }
  }
}

function poolMetrics (register: Registry, pool: pg.Pool): void {
  const gauge = (name: string, help: string, value: () => number) =>
    new Gauge({ name, help, registers: [register], collect () { this.set(value()) } })
  gauge('otn_db_pool_clients', 'Connections the pg pool holds, busy or idle.', () => pool.totalCount)
  gauge('otn_db_pool_idle_clients', 'Connections of the pg pool that are idle.', () => pool.idleCount)
  gauge('otn_db_pool_waiting_requests', 'Queries waiting for a connection because every one is busy.', () => pool.waitingCount)
}

/**
 * Prometheus metrics in `register`: process defaults (standard names), HTTP requests, database
 * backlog and, on Postgres, the pg pool. The /metrics route itself is in routes/metrics.ts.
 */
export default fp<{ register: Registry, pool?: pg.Pool }>(async (app, { register, pool }) => {
  collectDefaultMetrics({ register })
  app.decorate('metrics', register)
  httpMetrics(app, register)
  databaseMetrics(app, register)
  if (pool) poolMetrics(register, pool)
}, { name: 'metrics', dependencies: ['database', 'jobs'] })
