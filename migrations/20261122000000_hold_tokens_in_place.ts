import { sql, type Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
//
// A claim no longer moves a token to `reserved`: it holds an `available` token in place, by setting
// `notification_id` and `lease_expires_at`, which no index names. Postgres can then make the claim a
// HOT update (a new row version on the same page, no new index entries), so a claim at ten million
// tokens writes one page instead of four and reads two instead of five (docs/PERFORMANCE.md, "Claim
// latency at 10M"). What marks a hold:
//   state = 'available' and notification_id is not null, with lease_expires_at set;
// a usable token is `available` with no `notification_id`. Lease recovery finds holds through the
// open notifications that hold them, among each one's person's tokens (optin_tokens_subscriber_idx),
// so optin_tokens_lease_idx goes. The table keeps a tenth of each new page free for those versions.
export async function up (db: Kysely<any>): Promise<void> {
  // Every reservation left by the old code becomes a hold of its notification, or, where that
  // notification is gone or final, takes the state the old lease recovery gave it.
  await sql`
    update optin_tokens t
       set state = case when n.status = 'sent' then 'used' else 'unconfirmed' end,
           lease_expires_at = null, updated_at = now()
      from optin_tokens r left join notifications n on n.id = r.notification_id
     where t.id = r.id and t.state = 'reserved' and (n.id is null or n.completed_at is not null)`.execute(db)
  await sql`
    update optin_tokens set state = 'available', lease_expires_at = coalesce(lease_expires_at, now())
     where state = 'reserved'`.execute(db)

  await sql`alter table optin_tokens drop constraint optin_tokens_state_check`.execute(db)
  await sql`alter table optin_tokens add constraint optin_tokens_state_check
            check (state in ('available', 'used', 'invalid', 'expired', 'discarded', 'unconfirmed'))`.execute(db)
  // A lease exactly while held: a hold cannot lose its lease (and escape recovery), nor a settled
  // token keep one.
  await sql`alter table optin_tokens add constraint optin_tokens_lease_check
            check ((lease_expires_at is not null) = (state = 'available' and notification_id is not null))`.execute(db)
  await sql`drop index if exists optin_tokens_lease_idx`.execute(db)
  await sql`alter table optin_tokens set (fillfactor = 90)`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await sql`alter table optin_tokens reset (fillfactor)`.execute(db)
  await sql`alter table optin_tokens drop constraint optin_tokens_lease_check`.execute(db)
  await sql`alter table optin_tokens drop constraint optin_tokens_state_check`.execute(db)
  await sql`alter table optin_tokens add constraint optin_tokens_state_check
            check (state in ('available', 'reserved', 'used', 'invalid', 'expired', 'discarded', 'unconfirmed'))`.execute(db)
  await sql`update optin_tokens set state = 'reserved' where state = 'available' and notification_id is not null`.execute(db)
  await sql`create index optin_tokens_lease_idx on optin_tokens (lease_expires_at)
            where lease_expires_at is not null`.execute(db)
}
