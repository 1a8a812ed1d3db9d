/**
 * Delivery of events to subscriptions, per the Standard Webhooks specification (docs/EVENTS.md).
 * A delivery is claimed (FOR UPDATE SKIP LOCKED, so any number of instances share the work) with a
 * lease: its next_attempt_at moves past the attempt's timeout, so one claimed by an instance that
 * died is due again and claimed by another. Each attempt is recorded; a 2xx ends it, 410 disables
 * the subscription, anything else (an error, a timeout, another status) is retried after a pause
 * that triples each time up to a cap, with ±20% jitter, until EVENTS_MAX_ATTEMPTS; a subscription
 * with no success for EVENTS_DISABLE_AFTER_HOURS is disabled, saying why.
 */
import { createHmac } from 'node:crypto'
import { sql } from 'kysely'
import { Agent, request } from 'undici'
import type { Database } from '../db/database.js'
import { openSecret } from '../crypto/secret-box.js'
import { checkedLookup, literalRefused, type AllowedHosts } from './event-addresses.js'
import { disableSubscription } from './events.js'

export interface DeliveryOptions {
  attemptTimeoutMs: number
  retryBaseSeconds: number
  maxAttempts: number
  /** 0: never disabled for failing. */
  disableAfterHours: number
  allowPrivateNetworks: boolean
  allowedHosts?: AllowedHosts
}

export type DeliveryOutcome = 'delivered' | 'retried' | 'failed' | 'gone' | 'cancelled'
export const DELIVERY_OUTCOMES: DeliveryOutcome[] = ['delivered', 'retried', 'failed', 'gone', 'cancelled']

/** The longest pause between two attempts, in units of the first one (12 hours at the default 5 s). */
export const MAX_PAUSE_FACTOR = 8640

/** Seconds to wait after failed attempt number `attempt` (1-based): base × 3^(attempt-1), capped, ±20%. */
export function retryDelaySeconds (attempt: number, baseSeconds: number, random = Math.random): number {
  const nominal = Math.min(baseSeconds * 3 ** (attempt - 1), baseSeconds * MAX_PAUSE_FACTOR)
  return nominal * (0.8 + 0.4 * random())
}

/** The signature header's value: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` per secret, space-separated. */
export function signatures (secrets: string[], id: string, timestamp: number, body: string): string {
  return secrets.map((secret) => {
    const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64')
    return `v1,${createHmac('sha256', key).update(`${id}.${timestamp}.${body}`).digest('base64')}`
  }).join(' ')
}

interface Claimed {
  id: string
  page_id: string
  event_id: string
  subscription_id: string
  attempts: number
  type: string
  data: Record<string, unknown>
  sequence: string
  occurred_at: Date
  url: string
  secret: string
  previous_secret: string | null
  previous_secret_expires_at: Date | null
  include_message: boolean
  enabled: boolean
}

/** Claims up to `limit` due deliveries for one attempt each, leased for the attempt's timeout and a margin. */
export async function claimDue (db: Database, limit: number, leaseMs: number): Promise<Claimed[]> {
  const { rows } = await sql<Claimed>`
    with due as (
      select page_id, id from event_deliveries
       where state in ('pending', 'delivering') and next_attempt_at <= now()
       order by next_attempt_at
       limit ${limit}
       for update skip locked
    )
    update event_deliveries d
       set state = 'delivering', attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => ${leaseMs / 1000})
      from due, events e, event_subscriptions s
     where d.page_id = due.page_id and d.id = due.id
       and e.page_id = d.page_id and e.id = d.event_id and s.id = d.subscription_id
    returning d.id, d.page_id, d.event_id, d.subscription_id, d.attempts, e.type, e.data, e.sequence::text as sequence, e.occurred_at,
              s.url, s.secret, s.previous_secret, s.previous_secret_expires_at, s.include_message, s.enabled`.execute(db)
  return rows
}

/** The body a subscription receives: `{type, timestamp, data}`, data with the event's sequence (and the message when asked for). */
export async function eventBody (db: Database, d: Pick<Claimed, 'type' | 'data' | 'sequence' | 'occurred_at' | 'include_message' | 'page_id'>): Promise<string> {
  const data: Record<string, unknown> = { ...d.data, sequence: Number(d.sequence) }
  if (d.include_message && d.type.startsWith('notification.') && typeof d.data.notification_id === 'string') {
    const n = await db.selectFrom('notifications').select('message').where('page_id', '=', d.page_id).where('id', '=', d.data.notification_id).executeTakeFirst()
    if (n) data.message = n.message
  }
  return JSON.stringify({ type: d.type, timestamp: d.occurred_at.toISOString(), data })
}

interface AttemptResult { status: number | null, error: string | null, durationMs: number }

/** How many bytes of an answer's body are read (then dropped): enough to keep the connection reusable. */
const BODY_READ_LIMIT = 16 * 1024

async function attempt (agent: Agent, d: Claimed, body: string, opts: DeliveryOptions, stop?: AbortSignal): Promise<AttemptResult> {
  const started = performance.now()
  const done = (status: number | null, error: string | null): AttemptResult => ({ status, error, durationMs: Math.round(performance.now() - started) })
  let url: URL
  try {
    url = new URL(d.url)
  } catch {
    return done(null, 'invalid url')
  }
  const refused = literalRefused(url, opts.allowPrivateNetworks, opts.allowedHosts)
  if (refused) return done(null, `refused: ${refused}`)
  const timestamp = Math.floor(Date.now() / 1000)
  let secrets: string[]
  try {
    // Stored encrypted (docs/SECURITY.md); one that cannot be read fails closed: nothing is sent unsigned.
    secrets = [d.secret, ...(d.previous_secret && d.previous_secret_expires_at && d.previous_secret_expires_at > new Date() ? [d.previous_secret] : [])]
      .map((s) => openSecret('event_subscriptions.secret', s))
  } catch (err) {
    return done(null, `not sent: ${(err as Error).message}`)
  }
  try {
    const res = await request(url, {
      method: 'POST',
      dispatcher: agent,
      body,
      headers: {
        'content-type': 'application/json',
        'user-agent': 'otn-service-events/1',
        'webhook-id': d.event_id,
        'webhook-timestamp': String(timestamp),
        'webhook-signature': signatures(secrets, d.event_id, timestamp, body),
      },
      signal: stop ? AbortSignal.any([AbortSignal.timeout(opts.attemptTimeoutMs), stop]) : AbortSignal.timeout(opts.attemptTimeoutMs),
    })
    await res.body.dump({ limit: BODY_READ_LIMIT }).catch(() => {})
    return done(res.statusCode, res.statusCode >= 200 && res.statusCode < 300 ? null : `HTTP ${res.statusCode}`)
  } catch (err) {
    const e = err as { name?: string, code?: string, message?: string, cause?: { code?: string, message?: string } }
    if (stop?.aborted) return done(null, 'the instance stopped during the attempt')
    if (e.name === 'TimeoutError' || e.name === 'AbortError') return done(null, `timeout after ${opts.attemptTimeoutMs} ms`)
    const code = e.cause?.code ?? e.code
    const message = (e.cause?.message ?? e.message ?? 'request failed').slice(0, 300)
    return done(null, code === 'EVENT_ADDRESS_REFUSED' ? `refused: ${message}` : `${code ? `${code}: ` : ''}${message}`)
  }
}

/** An undici Agent that connects only to addresses the policy admits (checked on the resolved address). */
export function deliveryAgent (opts: Pick<DeliveryOptions, 'attemptTimeoutMs' | 'allowPrivateNetworks' | 'allowedHosts'>): Agent {
  return new Agent({
    connect: { timeout: opts.attemptTimeoutMs, lookup: checkedLookup(opts.allowPrivateNetworks, opts.allowedHosts) as never },
    headersTimeout: opts.attemptTimeoutMs,
    bodyTimeout: opts.attemptTimeoutMs,
    connections: 8,
  })
}

/** Records one attempt and what follows it; a delivery another instance took over meanwhile is left to it. */
async function record (db: Database, d: Claimed, r: AttemptResult, opts: DeliveryOptions): Promise<DeliveryOutcome> {
  const ok = r.status !== null && r.status >= 200 && r.status < 300
  const gone = r.status === 410
  const outcome: DeliveryOutcome = ok ? 'delivered' : gone ? 'gone' : d.attempts >= opts.maxAttempts ? 'failed' : 'retried'
  const next = outcome === 'retried' ? retryDelaySeconds(d.attempts, opts.retryBaseSeconds) : null
  let failingSince: Date | undefined
  const mine = await db.transaction().execute(async (trx) => {
    const updated = await sql`
      update event_deliveries
         set state = ${outcome === 'delivered' ? 'delivered' : outcome === 'retried' ? 'pending' : 'failed'},
             next_attempt_at = ${next === null ? null : sql`now() + make_interval(secs => ${next})`},
             last_status = ${r.status}, last_error = ${r.error}, last_duration_ms = ${r.durationMs},
             delivered_at = ${ok ? sql`now()` : null}
       where page_id = ${d.page_id} and id = ${d.id} and state = 'delivering' and attempts = ${d.attempts}`.execute(trx)
    if (Number(updated.numAffectedRows ?? 0n) === 0) return false
    await sql`insert into event_delivery_attempts (page_id, delivery_id, duration_ms, response_status, error)
              values (${d.page_id}, ${d.id}, ${r.durationMs}, ${r.status}, ${r.error})`.execute(trx)
    if (ok) {
      await sql`update event_subscriptions set failing_since = null where id = ${d.subscription_id} and failing_since is not null`.execute(trx)
    } else {
      const { rows: [s] } = await sql<{ failing_since: Date }>`
        update event_subscriptions set failing_since = coalesce(failing_since, now())
         where id = ${d.subscription_id} returning failing_since`.execute(trx)
      failingSince = s?.failing_since
    }
    return true
  })
  if (!mine) return 'cancelled'
  if (gone) {
    await disableSubscription(db, d.subscription_id, `the endpoint answered 410 Gone at ${new Date().toISOString()}`)
  } else if (!ok && failingSince && opts.disableAfterHours > 0 && Date.now() - failingSince.getTime() >= opts.disableAfterHours * 3_600_000) {
    await disableSubscription(db, d.subscription_id,
      `no delivery succeeded since ${failingSince.toISOString()} (EVENTS_DISABLE_AFTER_HOURS=${opts.disableAfterHours}); last: ${r.error ?? `HTTP ${r.status}`}`)
  }
  return outcome
}

/** One attempt at a claimed delivery, start to record. */
export async function deliverOne (db: Database, agent: Agent, d: Claimed, opts: DeliveryOptions, stop?: AbortSignal): Promise<DeliveryOutcome> {
  if (!d.enabled) {
    await sql`update event_deliveries set state = 'cancelled', next_attempt_at = null, last_error = 'subscription disabled'
               where page_id = ${d.page_id} and id = ${d.id} and state = 'delivering'`.execute(db)
    return 'cancelled'
  }
  const body = await eventBody(db, d)
  return record(db, d, await attempt(agent, d, body, opts, stop), opts)
}

/**
 * Delivers what is due, up to `concurrency` attempts in flight: a window that claims the next due
 * delivery as each attempt ends, so one slow receiver holds one slot, not the round. Stops when
 * nothing is due or `stop` is aborted (which also ends the attempts in flight: recorded as failed,
 * retried after the usual pause); each outcome is reported to `onOutcome` (metrics). Returns the
 * number of attempts made. An idle round is one claim statement.
 */
export async function deliverDue (db: Database, agent: Agent, opts: DeliveryOptions & { concurrency: number },
  onOutcome: (o: DeliveryOutcome) => void = () => {}, stop?: AbortSignal): Promise<number> {
  const leaseMs = opts.attemptTimeoutMs + 30_000
  const queue = await claimDue(db, opts.concurrency, leaseMs)
  let more = queue.length === opts.concurrency
  let total = 0
  const slot = async (): Promise<void> => {
    while (!stop?.aborted) {
      let d = queue.shift()
      if (d === undefined && more) {
        [d] = await claimDue(db, 1, leaseMs)
        if (d === undefined) more = false
      }
      if (d === undefined) return
      onOutcome(await deliverOne(db, agent, d, opts, stop))
      total++
    }
  }
  await Promise.all(Array.from({ length: Math.min(opts.concurrency, Math.max(queue.length, 1)) }, slot))
  // Stopped with claims not yet attempted: hand them back as they were.
  for (const d of queue) {
    await sql`update event_deliveries set state = 'pending', attempts = attempts - 1, next_attempt_at = now()
               where page_id = ${d.page_id} and id = ${d.id} and state = 'delivering' and attempts = ${d.attempts}`.execute(db)
  }
  return total
}

/** Backlog per subscription: deliveries waiting and the age of the oldest (metrics). */
export async function deliveryBacklog (db: Database): Promise<Array<{ subscription_id: string, waiting: number, oldest_seconds: number }>> {
  const { rows } = await sql<{ subscription_id: string, waiting: string, oldest_seconds: number }>`
    select subscription_id, count(*)::text as waiting, extract(epoch from now() - min(created_at))::float8 as oldest_seconds
      from event_deliveries where state in ('pending', 'delivering')
     group by subscription_id`.execute(db)
  return rows.map((r) => ({ subscription_id: r.subscription_id, waiting: Number(r.waiting), oldest_seconds: Number(r.oldest_seconds) }))
}
