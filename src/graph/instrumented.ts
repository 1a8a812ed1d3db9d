import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import type { GraphClient, SendOutcome } from './client.js'

type OutcomeLabels = { outcome: SendOutcome['kind'], status_class?: string, reason?: string }

// Bounded labels: the outcome kind, the HTTP status class of a refusal, the reason nothing came back.
function labelsOf (outcome: SendOutcome): OutcomeLabels {
  if (outcome.kind === 'graph_error') return { outcome: outcome.kind, status_class: `${Math.floor(outcome.httpStatus / 100)}xx` }
  if (outcome.kind === 'no_answer') return { outcome: outcome.kind, reason: outcome.reason }
  return { outcome: outcome.kind }
}

/** `client`, with every Send API attempt counted and timed by outcome in `register`; close() closes `client`. */
export function instrumentGraphClient (client: GraphClient, register: Registry): GraphClient {
  const requests = new Counter({
    name: 'otn_graph_requests_total',
    help: 'Send API attempts by outcome: ok; graph_error (Meta refused) with its HTTP status class; no_answer with its reason (timeout, connection_lost, unreachable, busy).',
    labelNames: ['outcome', 'status_class', 'reason'] as const,
    registers: [register],
  })
  const duration = new Histogram({
    name: 'otn_graph_request_duration_seconds',
    help: 'Time from a Send API call to its outcome, a wait for a free connection included.',
    labelNames: ['outcome'] as const,
    registers: [register],
  })
  const load = client.load?.bind(client)
  if (load) {
    new Gauge({
      name: 'otn_graph_requests_in_flight',
      help: 'Send API calls holding one of the GRAPH_API_CONNECTIONS connections.',
      registers: [register],
      collect () { this.set(load().active) },
    })
    new Gauge({
      name: 'otn_graph_requests_waiting',
      help: 'Send API calls waiting for a connection because all GRAPH_API_CONNECTIONS are busy.',
      registers: [register],
      collect () { this.set(load().waiting) },
    })
  }
  return {
    ...(load ? { load } : {}),
    async sendMessage (page, body) {
      const started = performance.now()
      const outcome = await client.sendMessage(page, body)
      duration.observe({ outcome: outcome.kind }, (performance.now() - started) / 1000)
      requests.inc(labelsOf(outcome))
      return outcome
    },
    close: () => client.close(),
  }
}
