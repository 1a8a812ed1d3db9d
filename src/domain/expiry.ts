import { sql } from 'kysely'
import { usable } from './claims.js'
import type { Database } from '../db/database.js'

/**
 * Marks usable tokens past their expiry as `expired`, in batches over optin_tokens_expiry_idx
 * (a token a send holds is left to that send).
 * Counts and claims already ignore such rows by time; this makes the state say so too.
 * SKIP LOCKED leaves a row a claim holds at this moment to the next sweep, so the sweep never
 * waits on a send, and instances sweeping together do the work once between them.
 */
export async function expireTokens (db: Database, batchSize = 5000): Promise<number> {
  let total = 0
  for (;;) {
    const result = await db.updateTable('optin_tokens')
      .set({ state: 'expired', updated_at: sql`now()` })
      .where('id', 'in', db.selectFrom('optin_tokens').select('id')
        .where(usable())
        .where('expires_at', '<=', sql<Date>`now()`)
        .orderBy('expires_at')
        .limit(batchSize)
        .forUpdate().skipLocked())
      .where(usable())
      .executeTakeFirst()
    const n = Number(result.numUpdatedRows)
    total += n
    if (n < batchSize) return total
  }
}
