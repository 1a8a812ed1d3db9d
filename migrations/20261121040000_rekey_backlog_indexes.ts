import { sql, type Kysely } from 'kysely'

// The guards `state = 'reserved'` and `status = 'pending'` on every single-row transition implied
// the predicates of these partial indexes, so with a backlog of reservations or pending rows since
// the last ANALYZE Postgres scanned the whole partial index instead of taking the primary key
// (9.7 ms instead of 0.4 ms at 40,000; bench/plan-hazard.ts). Keyed on columns that are null
// outside the backlog, they still serve the recovery sweeps and no longer match the guards.
export async function up (db: Kysely<any>): Promise<void> {
  await sql`drop index if exists optin_tokens_reserved_idx`.execute(db)
  await sql`create index optin_tokens_lease_idx on optin_tokens (lease_expires_at)
            where lease_expires_at is not null`.execute(db)
  await sql`drop index if exists notifications_pending_idx`.execute(db)
  await sql`create index notifications_open_idx on notifications (updated_at)
            where completed_at is null`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await sql`drop index if exists optin_tokens_lease_idx`.execute(db)
  await sql`create index optin_tokens_reserved_idx on optin_tokens (lease_expires_at) where state = 'reserved'`.execute(db)
  await sql`drop index if exists notifications_open_idx`.execute(db)
  await sql`create index notifications_pending_idx on notifications (updated_at) where status = 'pending'`.execute(db)
}
