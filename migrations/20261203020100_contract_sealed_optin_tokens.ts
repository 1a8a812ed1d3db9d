import { sql, type Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
//
// A contract (docs/OPERATIONS.md, "Rolling deploys"), with 20261203020000_optin_token_digest: from
// this release on, `optin_tokens.token` holds sealed values (issue 31, docs/SECURITY.md). A build
// from before would read them as tokens and send `enc:v1:...` to Meta, which refuses it, and that
// build then sets the token aside as invalid: a person's tokens would be spent on nothing. So an
// older build must not run against this database; this migration's name makes it refuse at start-up
// (and going back means restoring the database from before it, as for any contract).
//
// With no older build left, nothing needs the unique (page_id, token) any more (the previous
// build's ON CONFLICT target): two seals of one token never compare equal, so it only cost an
// index on long values. Uniqueness is (page_id, token_digest).
export async function up (db: Kysely<any>): Promise<void> {
  await sql`alter table optin_tokens drop constraint optin_tokens_page_token_key`.execute(db)
}

export async function down (db: Kysely<any>): Promise<void> {
  await sql`alter table optin_tokens add constraint optin_tokens_page_token_key unique (page_id, token)`.execute(db)
}
