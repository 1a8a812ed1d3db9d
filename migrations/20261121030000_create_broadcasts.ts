import { sql, type Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.createTable('broadcasts')
    .addColumn('id', 'uuid', (c) => c.primaryKey().defaultTo(sql`gen_random_uuid()`))
    .addColumn('page_id', 'text', (c) => c.notNull())
    .addColumn('topic_id', 'uuid', (c) => c.notNull())
    .addColumn('message', 'jsonb', (c) => c.notNull())
    .addColumn('notification_type', 'text', (c) => c.notNull().defaultTo('REGULAR'))
    .addColumn('use_window', 'boolean', (c) => c.notNull().defaultTo(true))
    // topic: everyone holding a usable token when planning runs; explicit: the list given at creation.
    .addColumn('audience', 'text', (c) => c.notNull().check(sql`audience in ('topic', 'explicit')`))
    .addColumn('audience_estimate', 'integer', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull()
      .check(sql`state in ('scheduled', 'running', 'completed', 'cancelled')`))
    .addColumn('send_at', sql`timestamptz(3)`, (c) => c.notNull())
    .addColumn('idempotency_key', 'text', (c) => c.unique())
    .addColumn('request_hash', 'text')
    .addColumn('created_at', sql`timestamptz(3)`, (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn('updated_at', sql`timestamptz(3)`, (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn('started_at', sql`timestamptz(3)`)
    .addColumn('planned_at', sql`timestamptz(3)`)
    .addColumn('completed_at', sql`timestamptz(3)`)
    .addColumn('cancelled_at', sql`timestamptz(3)`)
    .execute()
  await db.schema.createIndex('broadcasts_created_id_idx').on('broadcasts').columns(['created_at', 'id']).execute()
  await db.schema.createIndex('broadcasts_topic_created_id_idx').on('broadcasts').columns(['topic_id', 'created_at', 'id']).execute()
  await sql`create index broadcasts_unfinished_idx on broadcasts (send_at) where state in ('scheduled', 'running')`.execute(db)

  // One row per person of a broadcast: the PK makes "at most once per broadcast" a constraint.
  // next_attempt_at is both the lease of the worker holding the row (with lease_id) and the
  // earliest retry after Meta rate-limited or failed temporarily (lease_id null).
  await db.schema.createTable('broadcast_recipients')
    .addColumn('broadcast_id', 'uuid', (c) => c.notNull().references('broadcasts.id').onDelete('cascade'))
    .addColumn('psid', 'text', (c) => c.notNull())
    .addColumn('batch', 'integer', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull().defaultTo('pending')
      .check(sql`state in ('pending', 'done', 'cancelled')`))
    .addColumn('retries', 'integer', (c) => c.notNull().defaultTo(0))
    .addColumn('lease_id', 'uuid')
    .addColumn('next_attempt_at', sql`timestamptz(3)`)
    .addColumn('outcome', 'text', (c) => c.check(sql`outcome in ('sent_window', 'sent_token', 'no_token', 'failed', 'unconfirmed')`))
    .addColumn('error_code', 'text')
    .addColumn('notification_id', 'uuid')
    .addColumn('updated_at', sql`timestamptz(3)`, (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn('completed_at', sql`timestamptz(3)`)
    .addPrimaryKeyConstraint('broadcast_recipients_pkey', ['broadcast_id', 'psid'])
    .execute()
  await sql`create index broadcast_recipients_pending_idx on broadcast_recipients (broadcast_id, batch, psid)
            where state = 'pending'`.execute(db)

  // Per-Page pacing shared by every worker of every instance: each send takes the next slot.
  await db.schema.createTable('broadcast_pacing')
    .addColumn('page_id', 'text', (c) => c.primaryKey())
    .addColumn('next_slot_at', 'timestamptz', (c) => c.notNull())
    .execute()
}

export async function down (db: Kysely<any>): Promise<void> {
  for (const table of ['broadcast_pacing', 'broadcast_recipients', 'broadcasts']) {
    await db.schema.dropTable(table).ifExists().execute()
  }
}
