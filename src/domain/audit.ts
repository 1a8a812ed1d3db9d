/**
 * The audit (docs/SECURITY.md): one entry per /v1 call that may change something, written after
 * its answer, naming the key, the route pattern, the Page and resource acted on, and the status.
 * No body and no secret is ever stored. Read by admin keys (GET /v1/audit), removed after
 * AUDIT_RETENTION_DAYS in batches.
 */
import { sql } from 'kysely'
import type { Database } from '../db/database.js'
import type { AuditEntry } from '../db/types.js'
import { afterCursor, pageOf, PAGE_SIZE } from './pagination.js'
import { RETENTION_BATCH_SIZE } from './retention.js'

export interface AuditRecord {
  key_name: string
  method: string
  route: string
  /** null: the call named no Page the service knows. */
  page_id: string | null
  resource_id: string | null
  status: number
  request_id: string | null
  /** When the answer was given. */
  at: Date
}

/**
 * Writes entries in one statement (the app batches them: plugins/access.ts). The rows go in as one
 * array per column, so that every batch size is the same statement, like the service's other
 * batched writes. A VALUES list of N rows is a new statement for each N: each took a slot of a
 * connection's named-statement cache (src/db/prepared-statements.ts) and pushed the send's own
 * statements out of it. Token route at 64 connections (2026-12-03): a build writing no audit at all
 * was 1.15× and 1.18× faster than the VALUES list in two runs, and is level with this (0.96×,
 * 0.76–1.02×, five rounds).
 */
export async function recordAudit (db: Database, ...records: AuditRecord[]): Promise<void> {
  if (records.length === 0) return
  const col = <T>(f: (r: AuditRecord) => T) => records.map(f)
  await sql`
    insert into audit_log (page_id, key_name, method, route, resource_id, status, request_id, created_at)
    select * from unnest(${col((r) => r.page_id ?? '')}::text[], ${col((r) => r.key_name)}::text[], ${col((r) => r.method)}::text[],
                         ${col((r) => r.route)}::text[], ${col((r) => r.resource_id)}::text[], ${col((r) => r.status)}::int[],
                         ${col((r) => r.request_id)}::text[], ${col((r) => r.at)}::timestamptz[])`.execute(db)
}

export interface AuditFilter {
  key_name?: string
  page_id?: string
  since?: string
  until?: string
  limit?: number
  cursor?: string
}

/** Entries oldest first, like every listing, filtered by key, Page and time ([since, until)). */
export async function listAudit (db: Database, f: AuditFilter): Promise<{ items: AuditEntry[], next_cursor: string | null }> {
  let q = db.selectFrom('audit_log').selectAll().where(afterCursor('audit_log', f.cursor))
  if (f.key_name !== undefined) q = q.where('key_name', '=', f.key_name)
  if (f.page_id !== undefined) q = q.where('page_id', '=', f.page_id)
  if (f.since !== undefined) q = q.where('created_at', '>=', new Date(f.since))
  if (f.until !== undefined) q = q.where('created_at', '<', new Date(f.until))
  const limit = f.limit ?? PAGE_SIZE
  const rows = await q.orderBy('created_at').orderBy('id').limit(limit + 1).execute()
  return pageOf(rows.map((r) => ({ ...r, id: String(r.id) })), limit)
}

/** Deletes entries older than `days` (0: keeps them forever), a batch per statement, oldest first. */
export async function removeOldAuditEntries (db: Database, days: number, batchSize = RETENTION_BATCH_SIZE): Promise<number> {
  if (days === 0) return 0
  let total = 0
  for (;;) {
    const result = await sql`
      delete from audit_log
       where (page_id, id) in (select page_id, id from audit_log
                                where created_at < now() - make_interval(days => ${days})
                                order by created_at limit ${batchSize} for update skip locked)`.execute(db)
    const n = Number(result.numAffectedRows ?? 0n)
    total += n
    if (n < batchSize) return total
  }
}
