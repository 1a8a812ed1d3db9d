/**
 * Retention (docs/PRIVACY.md): raw webhook bodies and notification messages are kept for a number
 * of days, then removed by the maintenance task in batches, oldest first, each batch its own
 * statement so that a large backlog never holds a long transaction. What stays: tokens (usable or
 * not: a token is never removed here), notifications' states, ids and outcomes, counts and the
 * consent history. SKIP LOCKED leaves a row another instance is removing to it.
 */
import { sql } from 'kysely'
import type { Database } from '../db/database.js'

/** Rows one statement removes at most. */
export const RETENTION_BATCH_SIZE = 1000

export interface RetentionDays {
  /** Days a raw webhook body is kept; 0: forever. */
  webhookBodies: number
  /** Days a notification's message is kept; 0: forever. */
  messageBodies: number
}

async function inBatches (run: () => Promise<number>, batchSize: number): Promise<number> {
  let total = 0
  for (;;) {
    const n = await run()
    total += n
    if (n < batchSize) return total
  }
}

/**
 * Deletes stored webhook deliveries received more than `days` ago: the raw body is the row's only
 * content (its tokens and people are recorded elsewhere). A re-delivery of a removed body is
 * recorded again, which changes nothing (tokens and people are written idempotently).
 */
export async function removeOldWebhookBodies (db: Database, days: number, batchSize = RETENTION_BATCH_SIZE): Promise<number> {
  if (days === 0) return 0
  return inBatches(async () => {
    const result = await sql`
      delete from webhook_events
       where (page_id, id) in (select page_id, id from webhook_events
                                where received_at < now() - make_interval(days => ${days})
                                order by received_at limit ${batchSize} for update skip locked)`.execute(db)
    return Number(result.numAffectedRows ?? 0n)
  }, batchSize)
}

/**
 * Empties the message (to {}) of notifications created more than `days` ago and final; a pending
 * one keeps it (lease recovery may still send it). Its status, route, ids and error stay.
 */
export async function removeOldMessageBodies (db: Database, days: number, batchSize = RETENTION_BATCH_SIZE): Promise<number> {
  if (days === 0) return 0
  return inBatches(async () => {
    const result = await sql`
      update notifications set message = '{}'::jsonb, updated_at = now()
       where (page_id, id) in (select page_id, id from notifications
                                where created_at < now() - make_interval(days => ${days})
                                  and message <> '{}'::jsonb and completed_at is not null
                                order by created_at limit ${batchSize} for update skip locked)
         and completed_at is not null`.execute(db)
    return Number(result.numAffectedRows ?? 0n)
  }, batchSize)
}

/**
 * Deletes outbound events created more than `days` ago whose deliveries have all ended (delivered,
 * failed or cancelled), with those deliveries and their attempts (docs/EVENTS.md). An event still
 * waiting to be delivered stays until it is.
 */
export async function removeOldEvents (db: Database, days: number, batchSize = RETENTION_BATCH_SIZE): Promise<number> {
  if (days === 0) return 0
  return inBatches(async () => {
    const result = await sql`
      delete from events
       where (page_id, id) in (select e.page_id, e.id from events e
                                where e.created_at < now() - make_interval(days => ${days})
                                  and not exists (select 1 from event_deliveries d
                                                   where d.page_id = e.page_id and d.event_id = e.id and d.state in ('pending', 'delivering'))
                                order by e.created_at limit ${batchSize} for update skip locked)`.execute(db)
    return Number(result.numAffectedRows ?? 0n)
  }, batchSize)
}
