import type { Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
// The Send API's messaging_type (and tag) a notification or broadcast goes out with inside the
// window. Null on rows written before it (they went out as RESPONSE); expand-only, so a build
// without it still runs against this schema.
export async function up (db: Kysely<any>): Promise<void> {
  for (const table of ['notifications', 'broadcasts']) {
    await db.schema.alterTable(table).addColumn('messaging_type', 'text').addColumn('tag', 'text').execute()
  }
}

export async function down (db: Kysely<any>): Promise<void> {
  for (const table of ['notifications', 'broadcasts']) {
    await db.schema.alterTable(table).dropColumn('messaging_type').dropColumn('tag').execute()
  }
}
