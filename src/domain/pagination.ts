import { sql, type RawBuilder } from 'kysely'
import { DomainError } from './errors.js'
import { isPageId } from './ids.js'

export interface Cursor { at: string, id: string }

function encodeCursor (at: Date, id: string): string {
  return Buffer.from(JSON.stringify([at.toISOString(), id])).toString('base64url')
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
// What each listed table's id looks like; a cursor naming another is not one of ours.
const idForms: Record<string, (id: string) => boolean> = { pages: isPageId, consent_history: (id) => /^\d{1,19}$/.test(id), audit_log: (id) => /^\d{1,19}$/.test(id) }
const isUuid = (id: string): boolean => UUID.test(id)

// Every time this service writes is after 1970 and before 10000: a cursor beyond is forged, and
// Postgres or Date would refuse it further down (a 500, not the caller's 400).
const EARLIEST = Date.UTC(1970, 0, 1)
const LATEST = Date.UTC(10000, 0, 1)

function decodeCursor (table: string, cursor: string | undefined): Cursor | undefined {
  if (cursor === undefined) return undefined
  try {
    const [at, id] = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as [unknown, unknown]
    const ms = typeof at === 'string' ? Date.parse(at) : NaN
    const idOk = typeof id === 'string' && (idForms[table] ?? isUuid)(id)
    // Exactly as encodeCursor writes it: an ISO time to the millisecond, in range.
    if (idOk && ms >= EARLIEST && ms < LATEST && new Date(ms).toISOString() === at) return { at, id }
  } catch {}
  throw new DomainError('invalid_cursor', 'The cursor is not one this service handed out.')
}

/** Given limit + 1 rows in (created_at, id) order, the page and the cursor of the next one. */
/** Items per page when the caller names no limit. */
export const PAGE_SIZE = 50

export function pageOf<T extends { created_at: Date, id: string }> (rows: T[], limit: number): { items: T[], next_cursor: string | null } {
  const items = rows.slice(0, limit)
  const last = items[items.length - 1]
  return { items, next_cursor: rows.length > limit && last ? encodeCursor(last.created_at, last.id) : null }
}

/** Keyset condition "after this cursor" on (table.created_at, table.id); matches the list indexes. */
export function afterCursor (table: string, cursor: string | undefined): RawBuilder<boolean> {
  const after = decodeCursor(table, cursor)
  if (!after) return sql<boolean>`true`
  return sql<boolean>`(${sql.ref(`${table}.created_at`)}, ${sql.ref(`${table}.id`)}) > (${new Date(after.at)}, ${after.id})`
}
