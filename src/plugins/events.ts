import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { parseAllowedHosts } from '../domain/event-addresses.js'
import { deliverDue, deliveryAgent, type DeliveryOptions, type DeliveryOutcome } from '../domain/event-delivery.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Delivers what is due now (tests call it to wait on a round); resolves with the attempts made. */
    deliverEvents: () => Promise<number>
  }
}

export function deliveryOptions (config: Config): DeliveryOptions & { concurrency: number } {
  return {
    attemptTimeoutMs: config.EVENTS_ATTEMPT_TIMEOUT_MS,
    retryBaseSeconds: config.EVENTS_RETRY_BASE_SECONDS,
    maxAttempts: config.EVENTS_MAX_ATTEMPTS,
    disableAfterHours: config.EVENTS_DISABLE_AFTER_HOURS,
    allowPrivateNetworks: config.EVENTS_ALLOW_PRIVATE_NETWORKS,
    allowedHosts: parseAllowedHosts(config.EVENTS_ALLOWED_HOSTS),
    concurrency: config.EVENTS_CONCURRENCY,
  }
}

/**
 * Event delivery (docs/EVENTS.md): every instance looks for due deliveries each
 * EVENTS_POLL_INTERVAL_MS and works through them; the claim (SKIP LOCKED, with a lease) is what
 * shares them between instances, as the maintenance sweeps do. One round at a time per instance;
 * on close its attempts in flight are ended and recorded before the database goes.
 */
export default fp<{ onOutcome?: (o: DeliveryOutcome) => void }>(async (app, { onOutcome }) => {
  const opts = deliveryOptions(app.config)
  const agent = deliveryAgent(opts)
  const stop = new AbortController()
  let timer: NodeJS.Timeout | undefined
  let running: Promise<number> = Promise.resolve(0)
  const round = (): Promise<number> => {
    running = running.catch(() => 0).then(() => stop.signal.aborted ? 0 : deliverDue(app.db, agent, opts, onOutcome, stop.signal))
      .catch((err: unknown) => { app.log.warn({ err }, 'event delivery round failed; the next one retries'); return 0 })
    return running
  }
  app.decorate('deliverEvents', round)
  app.addHook('onReady', async () => {
    void round()
    let busy = false
    timer = setInterval(() => {
      if (busy) return
      busy = true
      void round().finally(() => { busy = false })
    }, app.config.EVENTS_POLL_INTERVAL_MS)
    timer.unref()
  })
  app.addHook('onClose', async () => {
    // Attempts in flight end now (each is recorded and retried), so closing never waits for a slow receiver.
    stop.abort()
    clearInterval(timer)
    await running
    await agent.close()
  })
}, { name: 'events', dependencies: ['database'] })
