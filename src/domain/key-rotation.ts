import { sql } from 'kysely'
import type { Database } from '../db/database.js'
import { activeKeyring, PREFIX, type Keyring } from '../crypto/secret-box.js'
import { erasureKey } from './erasure.js'
import { mentionSubjects, namedIds } from './webhook-body.js'
import { lastTokenId, rotateTokenBatch } from './token-store.js'

// Key rotation and the encryption of existing data (docs/SECURITY.md): every stored secret that is
// not under the key that encrypts now (ENCRYPTION_KEYS's first), legacy plaintext included, is
// decrypted and encrypted again, in bounded batches. Each batch locks its rows (`for update skip
// locked`) for one short transaction, so the service keeps running: a Page updated meanwhile waits
// for the batch or is skipped and taken by the next run. A value no configured key can read stops
// the rotation with the error naming its key id; the batches before it are kept.

export const ROTATION_BATCH = 500

export interface RotationCounts {
  pages: number
  event_subscriptions: number
  optin_tokens: number
  webhook_events: number
}

/** The SQL test "this value is not under the current key" (not a LIKE: `_` may be in a key id). */
function notCurrent (column: 'access_token' | 'secret' | 'previous_secret', keyring: Keyring) {
  const prefix = `${PREFIX}${keyring.currentId}:`
  return sql<boolean>`(${sql.ref(column)} is not null and left(${sql.ref(column)}, ${prefix.length}) <> ${prefix})`
}

async function rotatePages (db: Database, keyring: Keyring, batch: number): Promise<number> {
  return await db.transaction().execute(async (trx) => {
    const { rows } = await sql<{ id: string, access_token: string }>`
      select id, access_token from pages where ${notCurrent('access_token', keyring)}
       order by id limit ${batch} for update skip locked`.execute(trx)
    if (rows.length === 0) return 0
    const values = rows.map((r) => keyring.seal('pages.access_token', keyring.open('pages.access_token', r.access_token)))
    await sql`
      update pages p set access_token = x.v
        from unnest(${rows.map((r) => r.id)}::text[], ${values}::text[]) as x(id, v)
       where p.id = x.id`.execute(trx)
    return rows.length
  })
}

async function rotateSubscriptions (db: Database, keyring: Keyring, batch: number): Promise<number> {
  return await db.transaction().execute(async (trx) => {
    const { rows } = await sql<{ id: string, secret: string, previous_secret: string | null }>`
      select id::text as id, secret, previous_secret from event_subscriptions
       where ${notCurrent('secret', keyring)} or ${notCurrent('previous_secret', keyring)}
       order by id limit ${batch} for update skip locked`.execute(trx)
    if (rows.length === 0) return 0
    const again = (s: string): string => keyring.seal('event_subscriptions.secret', keyring.open('event_subscriptions.secret', s))
    await sql`
      update event_subscriptions s set secret = x.s, previous_secret = x.p
        from unnest(${rows.map((r) => r.id)}::text[], ${rows.map((r) => again(r.secret))}::text[], ${rows.map((r) => r.previous_secret === null ? null : again(r.previous_secret))}::text[]) as x(id, s, p)
       where s.id::text = x.id`.execute(trx)
    return rows.length
  })
}

/**
 * Raw webhook bodies not under the current key (legacy plaintext included; an empty body, withheld
 * after an erasure, has nothing to encrypt): sealed again, their digest recomputed under the current
 * key (so a re-delivery is still a duplicate once the old key is removed), and a legacy row's
 * `mentions` (null) computed from its body with `subjectKey`, so erasure still finds it once it is no
 * longer in clear. A digest another row already holds (the same body stored twice, under two keys)
 * is left null rather than broken: that row answers re-deliveries. Walks the ids upwards from
 * `after.id`, so a large table is read once per run.
 */
async function rotateWebhookEvents (db: Database, keyring: Keyring, batch: number, subjectKey: Buffer, after: { id: string }): Promise<number> {
  const prefix = Buffer.from(`${PREFIX}${keyring.currentId}:`, 'utf8')
  return await db.transaction().execute(async (trx) => {
    const { rows } = await sql<{ id: string, page_id: string, body: Uint8Array, has_digest: boolean, legacy: boolean }>`
      select id::text as id, page_id, body, digest is not null as has_digest, mentions is null as legacy from webhook_events
       where id > ${after.id}::bigint and length(body) > 0 and substring(body from 1 for ${prefix.length}) <> ${prefix}
       order by id limit ${batch} for update skip locked`.execute(trx)
    if (rows.length === 0) return 0
    after.id = rows[rows.length - 1].id
    const taken = new Set<string>()
    const bodies: Buffer[] = []
    const digests: Array<Buffer | null> = []
    const mentions: Array<{ id: string, subject: Buffer }> = []
    for (const r of rows) {
      const raw = keyring.openBytes('webhook_events.body', r.body)
      bodies.push(keyring.sealBytes('webhook_events.body', raw))
      const digest = keyring.digest('webhook_body', raw)
      const key = `${r.page_id}\u0000${digest.toString('hex')}`
      digests.push(r.has_digest && !taken.has(key) ? digest : null)
      taken.add(key)
      if (r.legacy) mentions.push(...mentionSubjects(namedIds(raw), subjectKey).map((subject) => ({ id: r.id, subject })))
    }
    await sql`
      update webhook_events w
         set body = x.body,
             digest = case when x.digest is null or exists (select 1 from webhook_events o where o.page_id = w.page_id and o.digest = x.digest and o.id <> w.id)
                           then null else x.digest end,
             mentions = coalesce(w.mentions, (select coalesce(array_agg(m.subject order by m.subject), '{}'::bytea[])
                                                from unnest(${mentions.map((m) => m.id)}::bigint[], ${mentions.map((m) => m.subject)}::bytea[]) as m(id, subject)
                                               where m.id = w.id))
        from unnest(${rows.map((r) => r.id)}::bigint[], ${rows.map((r) => r.page_id)}::text[], ${bodies}::bytea[], ${digests}::bytea[]) as x(id, page_id, body, digest)
       where w.id = x.id and w.page_id = x.page_id`.execute(trx)
    return rows.length
  })
}

/** Where a rotation starts reading the two tables that grow with traffic: after these ids (ids only grow). */
export interface RotationStart { optin_tokens: string, webhook_events: string }

/**
 * Re-encrypts every Page access token, event signing secret and opt-in token (sealed and digested
 * again: token-store/rotation.ts) not under the current key, and every raw webhook body
 * (rotateWebhookEvents: `subjectKey` is the erasure key, erasureKey of the config);
 * returns the rows changed per table. With `after`, opt-in tokens and bodies are read only past
 * those ids (RotationSchedule); without, the whole tables. With no key configured (plaintext
 * allowed) there is nothing to do.
 */
export async function rotateKeys (db: Database, opts: { keyring?: Keyring, batch?: number, progress?: (c: RotationCounts) => void, subjectKey?: Buffer, after?: RotationStart } = {}): Promise<RotationCounts> {
  const keyring = opts.keyring ?? activeKeyring()
  const batch = opts.batch ?? ROTATION_BATCH
  const counts: RotationCounts = { pages: 0, event_subscriptions: 0, optin_tokens: 0, webhook_events: 0 }
  if (keyring.currentId === undefined) return counts
  for (let n; (n = await rotatePages(db, keyring, batch)) > 0;) { counts.pages += n; opts.progress?.(counts) }
  for (let n; (n = await rotateSubscriptions(db, keyring, batch)) > 0;) { counts.event_subscriptions += n; opts.progress?.(counts) }
  const tokensAfter = opts.after ? { id: opts.after.optin_tokens } : undefined
  for (let step = await rotateTokenBatch(db, keyring, batch, tokensAfter); step.read > 0; step = await rotateTokenBatch(db, keyring, batch, step.last)) {
    counts.optin_tokens += step.changed
    opts.progress?.(counts)
  }
  for (let n, after = { id: opts.after?.webhook_events ?? '0' }; (n = await rotateWebhookEvents(db, keyring, batch, opts.subjectKey ?? erasureKey({}), after)) > 0;) { counts.webhook_events += n; opts.progress?.(counts) }
  return counts
}

/** How often the maintenance task's rotation reads the whole of the growing tables again. */
export const FULL_ROTATION_MS = 24 * 3600 * 1000

/**
 * The rotation the maintenance task runs every period (one per app), without reading every opt-in
 * token and webhook body each time: the first run of a process reads everything (a new key list
 * means a restart, so a new first key is always met by a full run), and a run after the first key
 * changed. Later runs read only the rows added since the previous run began: those an instance
 * still on an older key list wrote during a rolling restart, or an older build before encryption.
 * Once a day (FULL_ROTATION_MS) a run reads everything again, for a row that committed after a run
 * had passed its id.
 */
export class RotationSchedule {
  private last?: { keyId: string, fullAt: number, next: RotationStart }

  async run (db: Database, subjectKey: Buffer, now: number = Date.now()): Promise<RotationCounts> {
    const keyId = activeKeyring().currentId
    if (keyId === undefined) return await rotateKeys(db, { subjectKey })
    const full = this.last === undefined || this.last.keyId !== keyId || now - this.last.fullAt >= FULL_ROTATION_MS
    const next: RotationStart = {
      optin_tokens: await lastTokenId(db),
      webhook_events: (await sql<{ id: string }>`select coalesce(max(id), 0)::text as id from webhook_events`.execute(db)).rows[0].id,
    }
    const counts = await rotateKeys(db, { subjectKey, after: full ? undefined : this.last?.next })
    this.last = { keyId, fullAt: full ? now : this.last!.fullAt, next }
    return counts
  }
}
