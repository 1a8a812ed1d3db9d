/**
 * Erasure of one person on one Page (docs/PRIVACY.md), in one transaction. What goes, by table:
 * - optin_tokens, subscribers, notifications, optin_requests: the person's rows are deleted. A
 *   notification is about one person only (its recipient, its message, Meta's message id): no count
 *   of the service needs the row once the person is gone (a broadcast's outcomes are its recipients').
 * - broadcast_recipients: rows stay for the broadcast's counts, their PSID replaced by a random
 *   placeholder; a recipient still pending is settled `no_token` (it holds no token any more), so a
 *   broadcast in progress skips the person.
 * - webhook_events: every raw body that mentions the PSID is deleted (with the other events it
 *   carried: their tokens and people are recorded already). Bodies are encrypted: one is found by
 *   `mentions`, the subjects of the people its events name (webhook-body.ts, mentionSubjects), which holds
 *   the person's `subject`; a legacy row (stored before, in clear, mentions null) by a search of its
 *   bytes for the PSID. A re-delivery of a deleted body is stored without it (ingest.ts, `withheld`).
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

/**
 * The second pass's bounds: `events`, the erasure's time (rows about a person's events: an opt-in, an
 * interaction, an entry at its event's time); `writes`, the first pass's commit (rows a request wrote
 * at its own start: an opt-in request, a raw body, an `optin_requested` entry).
 */
interface UpTo { events: Date, writes: Date }

/** Deletes the person's rows (see above); with `upTo` (the second pass), only those older than its bounds. */
async function eraseRows (db: Database, pageId: string, psid: string, subject: Buffer, upTo?: UpTo): Promise<ErasedCounts> {
  const bound = (column: string) => upTo !== undefined ? sql`and ${sql.ref(column)} <= ${upTo.writes}` : sql``
  return {
    optin_tokens: await erasePersonTokens(db, pageId, psid, upTo?.events),
    subscribers: count(await sql`delete from subscribers where page_id = ${pageId} and psid = ${psid}
      ${upTo !== undefined ? sql`and coalesce(last_interaction_at, first_seen_at) <= ${upTo.events}` : sql``}`.execute(db)),
    notifications: upTo !== undefined ? 0 : count(await sql`delete from notifications where page_id = ${pageId} and psid = ${psid}`.execute(db)),
    optin_requests: count(await sql`delete from optin_requests where page_id = ${pageId} and psid = ${psid} ${bound('created_at')}`.execute(db)),
    broadcast_recipients: upTo !== undefined ? 0 : count(await sql`
      update broadcast_recipients
         set psid = 'erased-' || gen_random_uuid(), notification_id = null, lease_id = null,
             outcome = case when state = 'pending' then 'no_token' else outcome end,
             error_code = case when state = 'pending' then 'no_token' else error_code end,
             completed_at = case when state = 'pending' then now() else completed_at end,
             state = case when state = 'pending' then 'done' else state end,
             updated_at = now()
       where page_id = ${pageId} and psid = ${psid}`.execute(db)),
    // A raw body may be stored on another Page's id (Meta batches Pages' entries): every Page's bodies are looked in.
    webhook_events: count(await sql`delete from webhook_events where mentions && array[${subject}]::bytea[] ${bound('received_at')}`.execute(db)) +
      count(await sql`delete from webhook_events
                       where mentions is null and substring(body from 1 for 4) <> convert_to('enc:', 'UTF8')
                         and position(convert_to(${psid}, 'UTF8') in body) > 0 ${bound('received_at')}`.execute(db)),
    consent_history: count(await sql`
      delete from consent_history
       where page_id = ${pageId}
         and ${upTo !== undefined
              ? sql`psid = ${psid} and (at <= ${upTo.events} or (type = 'optin_requested' and created_at <= ${upTo.writes}))`
              : sql`(psid = ${psid} or (type = 'erased' and subject = ${subject}))`}`.execute(db)),
    // Outbound events about them (docs/EVENTS.md), with their deliveries and attempts (cascade); one already sent stays with its receiver.
    events: count(await sql`delete from events where page_id = ${pageId} and psid = ${psid} ${bound('created_at')}`.execute(db)),
  }
}

/** How long the second pass waits for transactions that began before the erasure committed. */
const STRAGGLER_WAIT_MS = 10_000

/**
 * Waits until no other session of this database runs a transaction begun before `committed` (or
 * `STRAGGLER_WAIT_MS` passed: false then). Such a transaction may hold a snapshot older than the
 * erasure, or rows it wrote before it. Read from pg_stat_activity, so it sees every instance; the
 * embedded database (one connection) has none.
 */
async function stragglersEnded (db: Database, committed: Date): Promise<boolean> {
  const deadline = Date.now() + STRAGGLER_WAIT_MS
  for (let pause = 5; ; pause = Math.min(pause * 2, 200)) {
    const { rows: [left] } = await sql<{ n: number }>`
      select count(*)::int as n from pg_stat_activity
       where datname = current_database() and backend_type = 'client backend' and pid <> pg_backend_pid()
         and state <> 'idle' and xact_start < ${committed}`.execute(db)
    if (left.n === 0) return true
    if (Date.now() > deadline) return false
    await new Promise((resolve) => setTimeout(resolve, pause))
  }
}

/**
 * Erases the person (see above) and answers what went, by table; a person the service holds nothing
 * about gets an erasure of zeros and its entry all the same.
 *
 * A webhook statement that began before the erasure committed did not see its `erased` entry and
 * may commit a pre-erasure opt-in after it. So, once committed, the erasure waits for every
 * transaction then in progress to end (at most STRAGGLER_WAIT_MS) and erases again what is about
 * events at or before `erased_at`; anything begun after the commit sees the entry and records nothing
 * older. The second pass's counts are added to the answer and to the entry.
 */
export async function erasePerson (db: Database, key: Buffer, pageId: string, psid: string): Promise<Erasure & { complete: boolean }> {
  await getPage(db, pageId)
  const subject = subjectOf(key, pageId, psid)
  const first = await db.transaction().execute(async (trx) => {
    const erased = await eraseRows(trx, pageId, psid, subject)
    const { rows: [entry] } = await sql<{ id: string, at: Date }>`
      insert into consent_history (page_id, psid, subject, type, detail, at)
      values (${pageId}, null, ${subject}, 'erased', ${JSON.stringify({ erased })}::jsonb, now())
      returning id::text as id, at`.execute(trx)
    return { entry, erased }
  })
  const { rows: [{ committed }] } = await sql<{ committed: Date }>`select now() as committed`.execute(db)
  const complete = await stragglersEnded(db, committed)
  const late = await db.transaction().execute(async (trx) => {
    const counts = await eraseRows(trx, pageId, psid, subject, { events: first.entry.at, writes: committed })
    const erased = Object.fromEntries(Object.entries(first.erased).map(([table, n]) => [table, n + counts[table as keyof ErasedCounts]])) as unknown as ErasedCounts
    if (Object.values(counts).some((n) => n > 0)) {
      await sql`update consent_history set detail = ${JSON.stringify({ erased })}::jsonb where page_id = ${pageId} and id = ${first.entry.id}`.execute(trx)
    }
    return erased
  })
  return { page_id: pageId, erased_at: first.entry.at, erased: late, complete }
}
