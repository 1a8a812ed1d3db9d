import { sql, type Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
// A Page's own broadcast rate (null: Meta's limit for the message, or BROADCAST_RATE_PER_SECOND),
// and the share of it a Page's broadcasts may use now: halved when Meta answers with a rate limit,
// given back as sends succeed (shared by every instance, like the Page's next send slot).
// Expand-only: a build without them still runs against this schema.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('pages')
    .addColumn('broadcast_rate_per_second', 'integer', (c) => c.check(sql`broadcast_rate_per_second between 1 and 1000`))
    .execute()
  await db.schema.alterTable('broadcast_pacing')
    .addColumn('rate_factor', 'float8', (c) => c.notNull().defaultTo(1).check(sql`rate_factor > 0 and rate_factor <= 1`))
    .execute()
}

export async function down (db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('broadcast_pacing').dropColumn('rate_factor').execute()
  await db.schema.alterTable('pages').dropColumn('broadcast_rate_per_second').execute()
}
