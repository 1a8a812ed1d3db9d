import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { pacingShares } from '../domain/broadcast-pacing.js'
import { runningBroadcasts } from '../domain/broadcast-run.js'
import { pageHealth } from '../domain/pages.js'
import { sendBacklog } from '../domain/token-store.js'
import { DELIVERY_OUTCOMES, deliveryBacklog, type DeliveryOutcome } from '../domain/event-delivery.js'
import { IGNORED_REASONS, REJECTED_REASONS, type Delivery } from '../domain/webhook-body.js'
import type { BuildInfo } from '../build-info.js'
import type pg from 'pg'
import { collectDefaultMetrics, Counter, Gauge, Histogram, type Registry } from 'prom-client'

export const METRICS_PATH = '/metrics'

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Registry
  }
}

type HttpLabels = Record<'method' | 'route' | 'status_code', string>

// Node's parser admits some thirty methods (PROPFIND, MKCOL, ...); the ones the API serves keep
// their name, the rest are one label value, so a scanner cannot add series.
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'])

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
      const method = METHODS.has(request.method) ? request.method : 'other'
      const key = `${method} ${reply.statusCode} ${route}`
      let labels = series.get(key)
      if (labels === undefined) {
        labels = { method, route, status_code: String(reply.statusCode) }
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
 * Webhook events by outcome and reason (the receipt's reasons: a fixed list, so the labels are
 * bounded), and deliveries stored or answered as duplicates. A duplicate's events are not counted
 * again.
 */
export function webhookCounter (register: Registry): (delivery: Delivery, duplicate: boolean) => void {
  const events = new Counter({
    name: 'otn_webhook_events_total',
    help: 'Webhook events read from stored deliveries, by outcome: recorded (reason optin or interaction), ignored or rejected (reason as in the receipt).',
    labelNames: ['outcome', 'reason'] as const,
    registers: [register],
  })
  const deliveries = new Counter({
    name: 'otn_webhook_deliveries_total',
    help: 'Signed webhook deliveries answered 200, by outcome: stored, or duplicate (the same bytes were stored before; nothing stored again).',
    labelNames: ['outcome'] as const,
    registers: [register],
  })
  const rejected = new Set<string>(REJECTED_REASONS)
  // Every series exists from the start, at 0, so that rate() and alerts see the first event.
  for (const reason of ['optin', 'interaction']) events.inc({ outcome: 'recorded', reason }, 0)
  for (const reason of IGNORED_REASONS) events.inc({ outcome: 'ignored', reason }, 0)
  for (const reason of REJECTED_REASONS) events.inc({ outcome: 'rejected', reason }, 0)
  for (const outcome of ['stored', 'duplicate']) deliveries.inc({ outcome }, 0)
  return (delivery, duplicate) => {
    deliveries.inc({ outcome: duplicate ? 'duplicate' : 'stored' })
    if (duplicate) return
    if (delivery.tokens.length > 0) events.inc({ outcome: 'recorded', reason: 'optin' }, delivery.tokens.length)
    if (delivery.interactions > 0) events.inc({ outcome: 'recorded', reason: 'interaction' }, delivery.interactions)
    for (const [reason, count] of Object.entries(delivery.skipped)) {
      events.inc({ outcome: rejected.has(reason) ? 'rejected' : 'ignored', reason }, count)
    }
  }
}

/** Event delivery attempts by outcome (delivered, retried, failed, gone: 410, cancelled), counted by the instance that made them. */
export function eventDeliveryCounter (register: Registry): (outcome: DeliveryOutcome) => void {
  const counter = new Counter({
    name: 'otn_event_deliveries_total',
    help: 'Event delivery attempts by outcome: delivered (2xx), retried, failed (attempts exhausted), gone (410: subscription disabled), cancelled (subscription disabled or taken over).',
    labelNames: ['outcome'] as const,
    registers: [register],
  })
  for (const outcome of DELIVERY_OUTCOMES) counter.inc({ outcome }, 0)
  return (outcome) => counter.inc({ outcome })
}

/**
 * Backlog gauges, by a query on the partial index notifications_open_idx and pg-boss's queue size,
 * read at a scrape and reused for `cacheSeconds` by later ones; scrapes that come while a read is
 * under way wait for it rather than start another. 50 scrapers for 30 s (a script over a real
 * process, 2026-12-02): on Postgres 2,183 database transactions before, 138 after, of which 118 are
 * pg-boss's own polling; on PGlite 179 scrapes/s before, 948 after, the peak RSS rise 47 MB before,
 * 21 after. If the database does not answer, the scrape still does: these gauges are left out and
 * otn_metrics_database_up is 0 (a failed read is not reused).
 */
function databaseMetrics (app: FastifyInstance, register: Registry, cacheSeconds: number): void {
  // Every gauge's collect() runs at once on a scrape; they share one read.
  let reading: Promise<void> | undefined
  let freshUntil = 0
  const collect = (): Promise<void> | undefined => {
    if (reading) return reading
    if (performance.now() < freshUntil) return undefined
    reading = read().then((ok) => { if (ok) freshUntil = performance.now() + cacheSeconds * 1000 })
      .finally(() => { reading = undefined })
    return reading
  }
  const up = new Gauge({ name: 'otn_metrics_database_up', help: '1 when the database answered the last read of the backlog gauges (reused for METRICS_CACHE_SECONDS); 0 when it did not (they are then left out).', registers: [register], collect })
  const tokens = new Gauge({ name: 'otn_tokens', help: 'Tokens in a state; only held (claimed by a send in flight, not yet settled) is counted.', labelNames: ['state'] as const, registers: [register], collect })
  const notifications = new Gauge({ name: 'otn_notifications', help: 'Notifications in a status; only pending (not yet settled) is counted.', labelNames: ['status'] as const, registers: [register], collect })
  const oldest = new Gauge({ name: 'otn_notifications_oldest_age_seconds', help: 'Age of the oldest notification in a status (0 when there is none); only pending.', labelNames: ['status'] as const, registers: [register], collect })
  const queued = new Gauge({ name: 'otn_jobs_queued', help: 'Jobs waiting in each job queue (created or retrying, not yet active).', labelNames: ['queue'] as const, registers: [register], collect })
  const remaining = new Gauge({ name: 'otn_broadcast_remaining', help: 'People still pending in each running broadcast (a broadcast leaves the metric when it ends).', labelNames: ['broadcast_id', 'page_id'] as const, registers: [register], collect })
  const share = new Gauge({ name: 'otn_broadcast_rate_share', help: 'The share of its broadcast rate a Page may use now: halved by each rate limit from Meta, given back as sends succeed (Pages that broadcast in the last 10 minutes).', labelNames: ['page_id'] as const, registers: [register], collect })
  
  const pages = new Gauge({ name: 'otn_pages', help: 'Registered Pages by health: healthy="false" after a Graph API error that concerns the Page itself (its access token or permissions; GET /v1/pages/{pageId} shows last_error), until its token is replaced.', labelNames: ['healthy'] as const, registers: [register], collect })
  const eventBacklog = new Gauge({ name: 'otn_event_deliveries_waiting', help: 'Event deliveries not yet ended (pending or being attempted), per subscription (docs/EVENTS.md).', labelNames: ['subscription_id'] as const, registers: [register], collect })
  const eventOldest = new Gauge({ name: 'otn_event_deliveries_oldest_waiting_seconds', help: 'Age of the oldest event delivery not yet ended, per subscription.', labelNames: ['subscription_id'] as const, registers: [register], collect })
  const fromDatabase = [tokens, notifications, oldest, queued, remaining, share, pages, eventBacklog, eventOldest]

  async function read (): Promise<boolean> {
    try {
      const backlog = await sendBacklog(app.db)
      const health = await pageHealth(app.db)
      const queues: Array<[string, number]> = []
      for (const { name } of await app.jobs.getQueues()) queues.push([name, await app.jobs.getQueueSize(name)])
      const [running, shares] = [await runningBroadcasts(app.db), await pacingShares(app.db)]
      const events = await deliveryBacklog(app.db)
      for (const gauge of fromDatabase) gauge.reset()
      for (const b of running) remaining.set({ broadcast_id: b.id, page_id: b.page_id }, b.remaining)
      for (const p of shares) share.set({ page_id: p.page_id }, p.rate_factor)
      tokens.set({ state: 'held' }, backlog.held)
      notifications.set({ status: 'pending' }, backlog.pending)
      oldest.set({ status: 'pending' }, backlog.oldest_pending_seconds)
      for (const [queue, size] of queues) queued.set({ queue }, size)
      pages.set({ healthy: 'true' }, health.healthy)
      pages.set({ healthy: 'false' }, health.unhealthy)
      for (const e of events) {
        eventBacklog.set({ subscription_id: e.subscription_id }, e.waiting)
        eventOldest.set({ subscription_id: e.subscription_id }, e.oldest_seconds)
      }
      up.set(1)
      return true
    } catch (err) {
      app.log.warn({ err }, 'metrics: the database did not answer; its gauges are left out of this scrape')
      for (const gauge of fromDatabase) gauge.reset()
      up.set(0)
      return false
    }
  }
}

/**
 * The pg pool, read at each scrape. Registered before the database gauges: prom-client calls every
 * collect() in registration order, synchronously, before any resolves, so these are read before the
 * scrape's own database read asks the pool for a connection (which pg-pool queues for a tick even
 * when one is idle: read after it, an idle instance showed 1 waiting).
 */
function poolMetrics (register: Registry, pool: pg.Pool): void {
  const gauge = (name: string, help: string, value: () => number) =>
    new Gauge({ name, help, registers: [register], collect () { this.set(value()) } })
  gauge('otn_db_pool_clients', 'Connections the pg pool holds, busy or idle.', () => pool.totalCount)
  gauge('otn_db_pool_idle_clients', 'Connections of the pg pool that are idle.', () => pool.idleCount)
  gauge('otn_db_pool_waiting_requests', 'Queries waiting for a connection because every one is busy.', () => pool.waitingCount)
}

/** otn_build_info: 1, labelled with the version and commit of the running build. */
function buildInfoMetric (register: Registry, build: BuildInfo): void {
  const info = new Gauge({ name: 'otn_build_info', help: 'The running build: its version (package.json) and source commit; always 1.', labelNames: ['version', 'commit'] as const, registers: [register] })
  info.set({ version: build.version, commit: build.commit }, 1)
}

export interface MetricsOptions {
  register: Registry
  pool?: pg.Pool
  build: BuildInfo
  /** How long database gauges are reused (METRICS_CACHE_SECONDS). */
  cacheSeconds: number
}

/**
 * Prometheus metrics in `register`: process defaults (standard names), build info, HTTP requests,
 * the pg pool (Postgres only) and the database backlog. The /metrics route itself is in
 * routes/metrics.ts.
 */
export default fp<MetricsOptions>(async (app, { register, pool, build, cacheSeconds }) => {
  collectDefaultMetrics({ register })
  app.decorate('metrics', register)
  buildInfoMetric(register, build)
  httpMetrics(app, register)
  if (pool) poolMetrics(register, pool)
  databaseMetrics(app, register, cacheSeconds)
}, { name: 'metrics', dependencies: ['database', 'jobs'] })
