import { sql, type Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
//
// Opt-in tokens encrypted at rest (issue 31, docs/SECURITY.md): `token` now holds the sealed value
// (random IV: two seals of one token differ), so equality moves to `token_digest`, a keyed digest
// (HMAC-SHA256 under the current encryption key). Existing rows get the unkeyed SHA-256 of their
// clear token, the form rotate-keys replaces; lookups match any configured key's digest or it.
//
// The column itself only adds: a build without it inserts tokens without a digest, and a trigger
// gives such a row (a token written in clear: an older build's, or SQL from another tool) the
// unkeyed digest of its value, so the column can be not null and the row is still found as the same
// token. Sealed values are the contract: 20261203020100_contract_sealed_optin_tokens.
export async function up (db: Kysely<any>): Promise<void> {
  await db.schema.alterTable('optin_tokens').addColumn('token_digest', 'bytea').execute()
  await sql`update optin_tokens set token_digest = sha256(convert_to(token, 'UTF8'))`.execute(db)
  await sql`
    create function optin_tokens_default_digest () returns trigger language plpgsql as $$
    begin
      if new.token_digest is null then new.token_digest := sha256(convert_to(new.token, 'UTF8')); end if;
      return new;
    end $$`.execute(db)
  await sql`
    create trigger optin_tokens_default_digest before insert on optin_tokens
      for each row when (new.token_digest is null) execute function optin_tokens_default_digest()`.execute(db)
  await sql`alter table optin_tokens alter column token_digest set not null`.execute(db)
  await db.schema.createIndex('optin_tokens_page_digest_key').on('optin_tokens').columns(['page_id', 'token_digest']).unique().execute()
}

export async function down (db: Kysely<any>): Promise<void> {
  await db.schema.dropIndex('optin_tokens_page_digest_key').execute()
  await sql`drop trigger optin_tokens_default_digest on optin_tokens`.execute(db)
  await sql`drop function optin_tokens_default_digest ()`.execute(db)
  await db.schema.alterTable('optin_tokens').dropColumn('token_digest').execute()
}
