/**
 * Outbound events for client apps (docs/EVENTS.md, issue 29): subscriptions, the events an outbox
 * holds, their deliveries. Events are written by triggers (migration 20261203000000_events, the
 * one place of the mapping) in the transaction of the change they report:
 *
 * | change (table: what)                                   | event                      |
 * |--------------------------------------------------------|----------------------------|
 * | consent_history: opted_in                              | optin.created              |
 * | consent_history: stopped / resumed / refreshed         | optin.stopped / .resumed / .refreshed |
 * | consent_history: token_expired (one per Page and topic payload of the statement, with `count`) | token.expired |
 * | consent_history: notification_sent                     | notification.sent          |
 * | consent_history: notification_failed, status unconfirmed | notification.unconfirmed |
 * | consent_history: notification_failed, other statuses (failed, no_token) | notification.failed |
 * | broadcasts: state becomes completed / cancelled        | broadcast.completed / .cancelled |
 * | pages: healthy becomes false / true                    | page.unhealthy / page.healthy |
 * | POST /v1/event-subscriptions/{id}/test                 | ping (that subscription only) |
 *
 * An event exists only when an enabled subscription asks for it; one delivery per such
 * subscription. A re-delivered webhook writes no ledger entry (ON CONFLICT DO NOTHING), so no
 * second event. Nothing here knows HTTP; delivery is event-delivery.ts.
 */
import { randomBytes } from 'node:crypto'
import { sql } from 'kysely'
import type { Database } from '../db/database.js'
import { sealSecret } from '../crypto/secret-box.js'
import type { EventDeliveryState } from '../db/types.js'
import { checkDestination, type AddressPolicy } from './event-addresses.js'
import { DomainError, notFound } from './errors.js'
import { afterCursor, PAGE_SIZE, pageOf } from './pagination.js'

export const EVENT_TYPES = [
  'optin.created', 'optin.stopped', 'optin.resumed', 'optin.refreshed', 'token.expired',
  'notification.sent', 'notification.failed', 'notification.unconfirmed',
  'broadcast.completed', 'broadcast.cancelled', 'page.unhealthy', 'page.healthy',
] as const
export type EventType = (typeof EVENT_TYPES)[number] | 'ping'
/** What a subscription may ask for: a type, a family (`optin.*`) or everything (`*`). */
export const EVENT_FILTERS = [...EVENT_TYPES, ...[...new Set(EVENT_TYPES.map((t) => `${t.split('.')[0]}.*`))], '*'] as const

/** Page id of events about no Page (ping). */
export const NO_PAGE = ''

export const DELIVERY_STATES: EventDeliveryState[] = ['pending', 'delivering', 'delivered', 'failed', 'cancelled']

/** A signing secret as the Standard Webhooks libraries take it: `whsec_` + base64 of 32 random bytes. */
export function newSecret (): string {
  return `whsec_${randomBytes(32).toString('base64')}`
}

export interface SubscriptionRow {
  id: string
  url: string
  events: string[]
  page_ids: string[] | null
  description: string | null
  include_message: boolean
  enabled: boolean
  disabled_reason: string | null
  secret: string
  previous_secret: string | null
  previous_secret_expires_at: Date | null
  failing_since: Date | null
  created_at: Date
  updated_at: Date
}

/** A subscription as the API shows it: never its secrets. */
export interface SubscriptionView {
  id: string
  url: string
  events: string[]
  page_ids: string[] | null
  description: string | null
  include_message: boolean
  enabled: boolean
  disabled_reason: string | null
  failing_since: string | null
  previous_secret_expires_at: string | null
  created_at: string
  updated_at: string
}

export function subscriptionView (s: SubscriptionRow): SubscriptionView {
  return {
    id: s.id, url: s.url, events: s.events, page_ids: s.page_ids, description: s.description,
    include_message: s.include_message, enabled: s.enabled, disabled_reason: s.disabled_reason,
    failing_since: s.failing_since?.toISOString() ?? null,
    previous_secret_expires_at: s.previous_secret_expires_at && s.previous_secret_expires_at > new Date() ? s.previous_secret_expires_at.toISOString() : null,
    created_at: s.created_at.toISOString(), updated_at: s.updated_at.toISOString(),
  }
}

export interface SubscriptionInput {
  url: string
  events: string[]
  page_ids?: string[] | null
  description?: string | null
  include_message?: boolean
}

const uniq = (xs: string[]): string[] => [...new Set(xs)]

export async function createSubscription (db: Database, policy: AddressPolicy, input: SubscriptionInput): Promise<{ subscription: SubscriptionRow, secret: string }> {
  const url = await checkDestination(input.url, policy)
  const secret = newSecret()
  const row = await db.insertInto('event_subscriptions').values({
    url, events: uniq(input.events), page_ids: input.page_ids ? uniq(input.page_ids) : null,
    description: input.description ?? null, include_message: input.include_message ?? false, secret: sealSecret('event_subscriptions.secret', secret),
  }).returningAll().executeTakeFirstOrThrow()
  return { subscription: row as SubscriptionRow, secret }
}

export async function getSubscription (db: Database, id: string): Promise<SubscriptionRow> {
  const row = await db.selectFrom('event_subscriptions').selectAll().where('id', '=', id).executeTakeFirst()
  if (!row) throw notFound('event_subscription', id)
  return row as SubscriptionRow
}

export async function listSubscriptions (db: Database, limit = PAGE_SIZE, cursor?: string) {
  const { rows } = await sql<SubscriptionRow>`
    select * from event_subscriptions where ${afterCursor('event_subscriptions', cursor)}
     order by created_at, id limit ${limit + 1}`.execute(db)
  return pageOf(rows, limit)
}

export interface SubscriptionUpdate {
  url?: string
  events?: string[]
  page_ids?: string[] | null
  description?: string | null
  include_message?: boolean
  enabled?: boolean
}

/**
 * Changes what is given. Enabling clears disabled_reason and the failure clock; disabling (by the
 * caller, a 410 or failing too long) cancels the deliveries still waiting (docs/EVENTS.md).
 */
export async function updateSubscription (db: Database, policy: AddressPolicy, id: string, input: SubscriptionUpdate): Promise<SubscriptionRow> {
  if (Object.keys(input).length === 0) throw new DomainError('empty_update', 'Name at least one field to change.')
  const url = input.url !== undefined ? await checkDestination(input.url, policy) : undefined
  return db.transaction().execute(async (trx) => {
    const row = await trx.updateTable('event_subscriptions').set({
      ...(url !== undefined ? { url } : {}),
      ...(input.events !== undefined ? { events: uniq(input.events) } : {}),
      ...(input.page_ids !== undefined ? { page_ids: input.page_ids === null ? null : uniq(input.page_ids) } : {}),
      ...(input.description !== undefined ? { description: input.description } : {}),
      ...(input.include_message !== undefined ? { include_message: input.include_message } : {}),
      ...(input.enabled === true ? { enabled: true, disabled_reason: null, failing_since: null } : {}),
      ...(input.enabled === false ? { enabled: false, disabled_reason: 'disabled by request' } : {}),
      updated_at: sql`now()`,
    }).where('id', '=', id).returningAll().executeTakeFirst()
    if (!row) throw notFound('event_subscription', id)
    if (input.enabled === false) await cancelWaiting(trx, id)
    return row as SubscriptionRow
  })
}

/** Deletes the subscription with its deliveries and their attempts (events other subscriptions share stay). */
export async function deleteSubscription (db: Database, id: string): Promise<void> {
  const result = await db.deleteFrom('event_subscriptions').where('id', '=', id).executeTakeFirst()
  if (Number(result.numDeletedRows) === 0) throw notFound('event_subscription', id)
}

/** A new secret; the current one keeps signing alongside it for `graceHours`. */
export async function rotateSecret (db: Database, id: string, graceHours: number): Promise<{ subscription: SubscriptionRow, secret: string }> {
  const secret = newSecret()
  const { rows: [row] } = await sql<SubscriptionRow>`
    update event_subscriptions
       set previous_secret = secret, secret = ${sealSecret('event_subscriptions.secret', secret)},
           previous_secret_expires_at = now() + make_interval(secs => ${graceHours * 3600}), updated_at = now()
     where id = ${id}
     returning *`.execute(db)
  if (!row) throw notFound('event_subscription', id)
  return { subscription: row, secret }
}

/** Deliveries of a subscription still waiting become cancelled (it was disabled). */
export async function cancelWaiting (db: Database, subscriptionId: string): Promise<number> {
  const result = await sql`
    update event_deliveries set state = 'cancelled', next_attempt_at = null, last_error = coalesce(last_error, 'subscription disabled')
     where subscription_id = ${subscriptionId} and state in ('pending', 'delivering')`.execute(db)
  return Number(result.numAffectedRows ?? 0n)
}

/** Disables a subscription and says why, cancelling what waits; once (a second call changes nothing). */
export async function disableSubscription (db: Database, id: string, reason: string): Promise<boolean> {
  return db.transaction().execute(async (trx) => {
    const result = await sql`update event_subscriptions set enabled = false, disabled_reason = ${reason}, updated_at = now()
                              where id = ${id} and enabled`.execute(trx)
    if (Number(result.numAffectedRows ?? 0n) === 0) return false
    await cancelWaiting(trx, id)
    return true
  })
}

// ---- the test ping ----

/** A `ping` event for one subscription only (it must be enabled), delivered like any event. */
export async function sendPing (db: Database, subscriptionId: string): Promise<{ event_id: string, delivery_id: string }> {
  const sub = await getSubscription(db, subscriptionId)
  if (!sub.enabled) throw new DomainError('event_subscription_disabled', `The subscription is disabled (${sub.disabled_reason ?? 'no reason recorded'}); enable it first.`)
  const { rows: [row] } = await sql<{ event_id: string, delivery_id: string }>`
    with ev as (
      insert into events (page_id, type, data) values (${NO_PAGE}, 'ping', ${JSON.stringify({ subscription_id: subscriptionId })}::jsonb)
      returning id, page_id
    )
    insert into event_deliveries (page_id, event_id, subscription_id, next_attempt_at)
    select ev.page_id, ev.id, ${subscriptionId}, now() from ev
    returning event_id, id as delivery_id`.execute(db)
  return row
}

// ---- deliveries, as the API shows them ----

export interface AttemptView { at: string, duration_ms: number, response_status: number | null, error: string | null }

export interface DeliveryView {
  id: string
  event_id: string
  event_type: string
  page_id: string | null
  subscription_id: string
  state: EventDeliveryState
  attempts: number
  next_attempt_at: string | null
  last_status: number | null
  last_error: string | null
  last_duration_ms: number | null
  created_at: string
  delivered_at: string | null
  attempt_log: AttemptView[]
}

interface DeliveryRow {
  id: string
  event_id: string
  event_type: string
  page_id: string
  subscription_id: string
  state: EventDeliveryState
  attempts: number
  next_attempt_at: Date | null
  last_status: number | null
  last_error: string | null
  last_duration_ms: number | null
  created_at: Date
  delivered_at: Date | null
  attempt_log: Array<{ at: string, duration_ms: number, response_status: number | null, error: string | null }>
}

function deliveryView (d: DeliveryRow): DeliveryView {
  return {
    id: d.id, event_id: d.event_id, event_type: d.event_type, page_id: d.page_id === NO_PAGE ? null : d.page_id,
    subscription_id: d.subscription_id, state: d.state, attempts: d.attempts,
    next_attempt_at: d.state === 'pending' || d.state === 'delivering' ? d.next_attempt_at?.toISOString() ?? null : null,
    last_status: d.last_status, last_error: d.last_error, last_duration_ms: d.last_duration_ms,
    created_at: d.created_at.toISOString(), delivered_at: d.delivered_at?.toISOString() ?? null,
    attempt_log: d.attempt_log.map((a) => ({ ...a, at: new Date(a.at).toISOString() })),
  }
}

/** A subscription's deliveries, oldest first, optionally in one state, each with its attempts (the last 20). */
export async function listDeliveries (db: Database, subscriptionId: string, f: { state?: EventDeliveryState, limit?: number, cursor?: string } = {}) {
  await getSubscription(db, subscriptionId)
  const limit = f.limit ?? PAGE_SIZE
  const { rows } = await sql<DeliveryRow>`
    select event_deliveries.id, event_deliveries.event_id, e.type as event_type, event_deliveries.page_id, event_deliveries.subscription_id,
           event_deliveries.state, event_deliveries.attempts, event_deliveries.next_attempt_at, event_deliveries.last_status,
           event_deliveries.last_error, event_deliveries.last_duration_ms, event_deliveries.created_at, event_deliveries.delivered_at,
           coalesce((select jsonb_agg(jsonb_build_object('at', a.at, 'duration_ms', a.duration_ms, 'response_status', a.response_status, 'error', a.error) order by a.id)
                       from (select * from event_delivery_attempts a
                              where a.page_id = event_deliveries.page_id and a.delivery_id = event_deliveries.id
                              order by a.id desc limit 20) a), '[]'::jsonb) as attempt_log
      from event_deliveries
      join events e on e.page_id = event_deliveries.page_id and e.id = event_deliveries.event_id
     where event_deliveries.subscription_id = ${subscriptionId}
       and ${afterCursor('event_deliveries', f.cursor)}
       ${f.state !== undefined ? sql`and event_deliveries.state = ${f.state}` : sql``}
     order by event_deliveries.created_at, event_deliveries.id
     limit ${limit + 1}`.execute(db)
  const page = pageOf(rows, limit)
  return { items: page.items.map(deliveryView), next_cursor: page.next_cursor }
}

/**
 * Delivers an event again: a new delivery (the same webhook-id: the event's) to each enabled
 * subscription that had one of it, or to `subscriptionId` only; a delivery still waiting is reused,
 * not doubled. An event removed by retention or erasure is event_not_found.
 */
export async function redeliverEvent (db: Database, eventId: string, subscriptionId?: string): Promise<string[]> {
  return db.transaction().execute(async (trx) => {
    const { rows: [event] } = await sql<{ id: string, page_id: string }>`select id, page_id from events where id = ${eventId} for update`.execute(trx)
    if (!event) throw notFound('event', eventId)
    if (subscriptionId !== undefined) {
      const sub = await getSubscription(trx, subscriptionId)
      if (!sub.enabled) throw new DomainError('event_subscription_disabled', `The subscription is disabled (${sub.disabled_reason ?? 'no reason recorded'}); enable it first.`)
    }
    const { rows } = await sql<{ id: string }>`
      with targets as (
        select s.id from event_subscriptions s
         where s.enabled
           and ${subscriptionId !== undefined
             ? sql`s.id = ${subscriptionId}`
             : sql`exists (select 1 from event_deliveries d where d.page_id = ${event.page_id} and d.event_id = ${event.id} and d.subscription_id = s.id)`}
      ), waiting as (
        select d.id, d.subscription_id from event_deliveries d join targets t on t.id = d.subscription_id
         where d.page_id = ${event.page_id} and d.event_id = ${event.id} and d.state in ('pending', 'delivering')
      ), fresh as (
        insert into event_deliveries (page_id, event_id, subscription_id, next_attempt_at)
        select ${event.page_id}, ${event.id}::uuid, t.id, now() from targets t
         where not exists (select 1 from waiting w where w.subscription_id = t.id)
        returning id
      )
      select id from fresh union all select id from waiting`.execute(trx)
    return rows.map((r) => r.id)
  })
}
