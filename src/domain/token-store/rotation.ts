/** Key rotation's token part (key-rotation.ts): opt-in tokens sealed and digested again under the current key. (The token store: see ../token-store.ts.) */
import { sql } from 'kysely'
import type { Database } from '../../db/database.js'
import { PREFIX, type Keyring } from '../../crypto/secret-box.js'

/** A token's key, where the next batch of a rotation starts after (without page_id: after that id, ids being unique). */
export interface TokenKey { page_id?: string, id: string }

/**
 * One batch of rotation, in primary key order (id, page_id) after `after` (a run walks the table
 * once, each batch starting where the last ended): up to `batch` tokens whose value is not under the
 * keyring's current key (an older key's, or legacy plaintext) get their value sealed again and their
 * digest computed again under the current key. Both move together, so a token stays findable by
 * its digest (lookups match every configured key's digest and the unkeyed one). The rows are not
 * locked while the batch is computed: a send claims with `for update skip locked` and skips a row a
 * rotation holds (it then claims again shortly: claimToken's `busy`), so the lock lasts only the
 * update, a compare-and-set on the value read: a row changed meanwhile (another run) is left to the
 * next run. How many rows were read and the last one's key (changed: how many it rewrote);
 * 0 read when none is left. A value no configured key reads throws (SecretUnreadableError naming
 * its key id); the batches before it are kept.
 */
export async function rotateTokenBatch (db: Database, keyring: Keyring, batch: number, after?: TokenKey)
  : Promise<{ read: number, changed: number, last?: TokenKey }> {
  const prefix = `${PREFIX}${keyring.currentId}:`
  const { rows } = await sql<{ page_id: string, id: string, token: string }>`
    select page_id, id::text as id, token from optin_tokens
     where left(token, ${prefix.length}) <> ${prefix}
       ${after === undefined ? sql`` : after.page_id === undefined ? sql`and id > ${after.id}::bigint` : sql`and (id, page_id) > (${after.id}::bigint, ${after.page_id})`}
     order by id, page_id limit ${batch}`.execute(db)
  if (rows.length === 0) return { read: 0, changed: 0 }
  const clear = rows.map((r) => keyring.open('optin_tokens.token', r.token))
  const result = await sql`
    update optin_tokens o set token = x.token, token_digest = x.digest
      from unnest(${rows.map((r) => r.page_id)}::text[], ${rows.map((r) => r.id)}::bigint[], ${rows.map((r) => r.token)}::text[],
                  ${clear.map((c) => keyring.seal('optin_tokens.token', c))}::text[],
                  ${clear.map((c) => keyring.digest('optin_token', c))}::bytea[]) as x(page_id, id, was, token, digest)
     where o.page_id = x.page_id and o.id = x.id and o.token = x.was`.execute(db)
  const last = rows[rows.length - 1]
  return { read: rows.length, changed: Number(result.numAffectedRows ?? 0n), last: { page_id: last.page_id, id: last.id } }
}

/** The highest token id so far: a later rotation may start after it (RotationSchedule in key-rotation.ts). */
export async function lastTokenId (db: Database): Promise<string> {
  const { rows: [row] } = await sql<{ id: string }>`select coalesce(max(id), 0)::text as id from optin_tokens`.execute(db)
  return row.id
}
