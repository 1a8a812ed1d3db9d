// A broadcast's pace: its rate (Meta's limit for what it carries, or the Page's or the service's
// own) and the Page's send slots, shared by every worker of every instance (broadcast_pacing).
import { sql } from 'kysely'
import type { Database } from '../db/database.js'

/**
 * Meta's Send API limits per Page (Messenger Platform rate limits, updated 2026-03-23): 300 calls a
 * second for text, links and stickers, 10 for audio and video. The default rate of a broadcast.
 */
export const META_RATE_LIMITS = { text: 300, media: 10 } as const

/** A broadcast's rate: the Page's own, else the service's, else Meta's limit for what the message carries. */
export function broadcastRate (message: Record<string, unknown>, pageRate: number | null, configured: number | undefined): number {
  if (pageRate !== null) return pageRate
  if (configured !== undefined) return configured
  const type = (message.attachment as { type?: string } | undefined)?.type
  return type === 'audio' || type === 'video' ? META_RATE_LIMITS.media : META_RATE_LIMITS.text
}

/** How fast the share of a Page's rate comes back after a rate limit: this much per send (0.5 → 1 in 250 sends). */
const RATE_RECOVERY_PER_SEND = 0.002
/** The least share a Page keeps after rate limits one after another. */
const RATE_FACTOR_FLOOR = 1 / 64

export interface PacingSlots {
  /** Until the first of the slots. */
  waitMs: number
  /** Between two slots: 1 / the rate the Page may use now. */
  stepMs: number
  /** False when the first slot was further than the caller would wait: nothing was taken. */
  taken: boolean
}

/**
 * Takes the Page's next `count` send slots, shared by every worker of every instance: the slots
 * follow each other at the rate the Page may use now (its rate × its share, which each reservation
 * gives back a little of). The Page's row is locked for the statement, so racing workers take
 * consecutive slots. When the first free slot is more than `maxWaitMs` away (the Page is paused),
 * nothing is taken: slots taken and then not used would push every later send back, and workers
 * that keep handing people back would push the Page's schedule ever further away.
 */
export async function reservePacingSlots (db: Database, pageId: string, ratePerSecond: number, count: number, maxWaitMs?: number): Promise<PacingSlots> {
  // One round trip once the Page has its row (from its first reservation on): the row is made
  // only when the statement found none.
  const take = async () => (await sql<{ wait_ms: number, rate: number, taken: boolean }>`
    with old as (
      select greatest(next_slot_at, clock_timestamp()) as start,
             (extract(epoch from (greatest(next_slot_at, clock_timestamp()) - clock_timestamp())) * 1000)::float8 as wait_ms,
             ${ratePerSecond}::float8 * rate_factor as rate, rate_factor
        from broadcast_pacing where page_id = ${pageId} for update
    ), taken as (
      update broadcast_pacing p
         set next_slot_at = old.start + make_interval(secs => ${count}::float8 / old.rate),
             rate_factor = least(1, old.rate_factor + ${count * RATE_RECOVERY_PER_SEND})
        from old
       where p.page_id = ${pageId} and (${maxWaitMs ?? null}::float8 is null or old.wait_ms <= ${maxWaitMs ?? null}::float8)
      returning 1
    )
    select old.wait_ms, old.rate, exists (select 1 from taken) as taken from old`.execute(db)).rows[0]
  let row = await take()
  if (!row) {
    await sql`insert into broadcast_pacing (page_id, next_slot_at) values (${pageId}, clock_timestamp()) on conflict (page_id) do nothing`.execute(db)
    row = await take()
  }
  return { waitMs: Math.max(0, row.wait_ms), stepMs: 1000 / row.rate, taken: row.taken }
}

/** Meta rate-limited the Page: no broadcast send on it before this many seconds, and half the share of its rate after that. */
export async function pausePage (db: Database, pageId: string, seconds: number): Promise<void> {
  await sql`
    insert into broadcast_pacing as p (page_id, next_slot_at, rate_factor) values (${pageId}, clock_timestamp() + make_interval(secs => ${seconds}), 0.5)
    on conflict (page_id) do update set next_slot_at = greatest(p.next_slot_at, clock_timestamp() + make_interval(secs => ${seconds})),
                                        rate_factor = greatest(${RATE_FACTOR_FLOOR}, p.rate_factor / 2)`.execute(db)
}

/** The share of its rate each Page's broadcasts may use now, for the metrics: Pages that broadcast in the last ten minutes. */
export async function pacingShares (db: Database): Promise<Array<{ page_id: string, rate_factor: number }>> {
  return db.selectFrom('broadcast_pacing').select(['page_id', 'rate_factor'])
    .where('next_slot_at', '>', sql<Date>`now() - interval '10 minutes'`).execute()
}
