import { sql, type Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
// What became of the token a notification claimed, as of its outcome: a released token may later
// be spent by another notification, so its current state cannot tell this one's story.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('notifications')
    .addColumn('token_state', 'text', (c) => c.check(sql`token_state in ('used', 'released', 'invalid', 'unconfirmed')`))
    .addColumn('tokens_refused', 'integer', (c) => c.notNull().defaultTo(0))
    .execute()
}

export async function down (db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('notifications').dropColumn('token_state').dropColumn('tokens_refused').execute()
}
