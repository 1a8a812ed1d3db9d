import { sql, type Kysely } from 'kysely'

// Frozen: never edit after it has run anywhere; add a new migration instead.
//
// Opt-in tokens encrypted at rest (issue 31, docs/SECURITY.md): `token` now holds the sealed value
// (random IV: two seals of one token differ), so equality moves to `token_digest`, a keyed digest
// (HMAC-SHA256 under the current encryption key). Existing rows get the unkeyed SHA-256 of their
// clear token, the form rotate-keys replaces; lookups match any configured key's digest or it.
//
// Expand-only, so that the previous build keeps running beside this one during a rolling deploy:
// - it inserts tokens without a digest: a trigger gives such a row the unkeyed digest of the value
//   it writes (clear), so the column can be not null and its rows are still found as duplicates;
// - its `on conflict (page_id, token)` needs the old unique constraint: it stays. Dropping it (and
//   the trigger) is a later `_contract_` migration, once no build older than this one runs.
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
