/**
 * Erasure of one person on one Page (docs/PRIVACY.md), in one transaction. What goes, by table:
 * - optin_tokens, subscribers, notifications, optin_requests: the person's rows are deleted. A
 *   notification is about one person only (its recipient, its message, Meta's message id): no count
 *   of the service needs the row once the person is gone (a broadcast's outcomes are its recipients').
 * - broadcast_recipients: rows stay for the broadcast's counts, their PSID replaced by a random
 *   placeholder; a recipient still pending is settled `no_token` (it holds no token any more), so a
 *   broadcast in progress skips the person.
 * - webhook_events: every raw body that mentions the PSID is deleted (with the other events it
 *   carried: their tokens and people are recorded already).
 * - consent_history: the person's entries are deleted, and one `erased` entry is written with no
 *   personal data: the Page, the time, the counts above, and `subject`, a keyed digest of Page and
 *   PSID. A webhook event about the person older than that entry (Meta re-delivers for up to 36
 *   hours) is not recorded again (`notErased`); a newer one is new consent.
 * - events: the outbound events about the person (docs/EVENTS.md) are deleted, their deliveries with
 *   them, sent or not.
 */
import { createHmac } from 'node:crypto'
import { sql, type RawBuilder } from 'kysely'
import type { Config } from '../config.js'
import type { Database } from '../db/database.js'
import { getPage } from './pages.js'
import { erasePersonTokens } from './token-store.js'

/**
 * The key of the erasure digest: ERASURE_KEY, else one derived from META_APP_SECRET (a secret kept
 * out of the database either way, so that a dump alone cannot confirm a guessed PSID), else a fixed
 * label (then the digest is a plain hash: docs/PRIVACY.md). Changing it makes earlier erasures'
 * digests unknown to ingestion: keep it for at least the 36 hours Meta re-delivers.
 */
export function erasureKey (config: Pick<Config, 'ERASURE_KEY' | 'META_APP_SECRET'>): Buffer {
  if (config.ERASURE_KEY !== undefined) return Buffer.from(config.ERASURE_KEY, 'utf8')
  const base = config.META_APP_SECRET ?? 'otn-service'
  return createHmac('sha256', base).update('otn erasure subject').digest()
}

/** The digest naming a person on a Page without their id. */
export function subjectOf (key: Buffer, pageId: string, psid: string): Buffer {
  return createHmac('sha256', key).update(`${pageId}\u0000${psid}`).digest()
}

/**
 * `json` (a JSON array of records with `page_id`, `subject` (hex, from subjectOf) and the event time
 * in `atField`) without the records of a person erased at or after that time, as a jsonb value:
 * what a webhook statement records (ingest.ts).
 */
export function notErased (json: string, atField: string): RawBuilder<unknown> {
  return sql`(select coalesce(jsonb_agg(e.value order by e.ordinality), '[]'::jsonb)
     from jsonb_array_elements(${json}::jsonb) with ordinality e
    where not exists (select 1 from consent_history h
                       where h.type = 'erased' and h.page_id = e.value ->> 'page_id'
                         and h.subject = decode(e.value ->> 'subject', 'hex')
                         and h.at >= (e.value ->> ${atField})::timestamptz))`
}

export interface ErasedCounts {
  optin_tokens: number
  subscribers: number
  notifications: number
  optin_requests: number
  broadcast_recipients: number
  webhook_events: number
  consent_history: number
  events: number
}

export interface Erasure { page_id: string, erased_at: Date, erased: ErasedCounts }

const count = (result: { numAffectedRows?: bigint }): number => Number(result.numAffectedRows ?? 0n)

/** Erases the person (see above); a person the service holds nothing about gets an erasure of zeros and its entry all the same. */
export async function erasePerson (db: Database, key: Buffer, pageId: string, psid: string): Promise<Erasure> {
  await getPage(db, pageId)
  const subject = subjectOf(key, pageId, psid)
  return db.transaction().execute(async (trx) => {
    const erased: ErasedCounts = {
      optin_tokens: await erasePersonTokens(trx, pageId, psid),
      subscribers: count(await sql`delete from subscribers where page_id = ${pageId} and psid = ${psid}`.execute(trx)),
      notifications: count(await sql`delete from notifications where page_id = ${pageId} and psid = ${psid}`.execute(trx)),
      optin_requests: count(await sql`delete from optin_requests where page_id = ${pageId} and psid = ${psid}`.execute(trx)),
      broadcast_recipients: count(await sql`
        update broadcast_recipients
           set psid = 'erased-' || gen_random_uuid(), notification_id = null, lease_id = null,
               outcome = case when state = 'pending' then 'no_token' else outcome end,
               error_code = case when state = 'pending' then 'no_token' else error_code end,
               completed_at = case when state = 'pending' then now() else completed_at end,
               state = case when state = 'pending' then 'done' else state end,
               updated_at = now()
         where page_id = ${pageId} and psid = ${psid}`.execute(trx)),
      // A raw body may be stored on another Page's id (Meta batches Pages' entries): every body is searched.
      webhook_events: count(await sql`delete from webhook_events where position(convert_to(${psid}, 'UTF8') in body) > 0`.execute(trx)),
      consent_history: count(await sql`
        delete from consent_history
         where page_id = ${pageId} and (psid = ${psid} or (type = 'erased' and subject = ${subject}))`.execute(trx)),
      // Outbound events about them (docs/EVENTS.md), with their deliveries and attempts (cascade); one already sent stays with its receiver.
      events: count(await sql`delete from events where page_id = ${pageId} and psid = ${psid}`.execute(trx)),
    }
    const { rows: [entry] } = await sql<{ at: Date }>`
      insert into consent_history (page_id, psid, subject, type, detail, at)
      values (${pageId}, null, ${subject}, 'erased', ${JSON.stringify({ erased })}::jsonb, now())
      returning at`.execute(trx)
    return { page_id: pageId, erased_at: entry.at, erased }
  })
}
