import { sql, type RawBuilder } from 'kysely'
import { DomainError } from './errors.js'

export interface Cursor { at: string, id: string }

function encodeCursor (at: Date, id: string): string {
  return Buffer.from(JSON.stringify([at.toISOString(), id])).toString('base64url')
}

function decodeCursor (cursor: string | undefined): Cursor | undefined {
  if (cursor === undefined) return undefined
  try {
    const [at, id] = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as [string, string]
    if (typeof at === 'string' && typeof id === 'string' && !Number.isNaN(Date.parse(at))) return { at, id }
  } catch {}
  throw new DomainError('invalid_cursor', 'The cursor is not one this service handed out.')
}

/** Given limit + 1 rows in (created_at, id) order, the page and the cursor of the next one. */
export function pageOf<T extends { created_at: Date, id: string }> (rows: T[], limit: number): { items: T[], next_cursor: string | null } {
  const items = rows.slice(0, limit)
  const last = items[items.length - 1]
  return { items, next_cursor: rows.length > limit && last ? encodeCursor(last.created_at, last.id) : null }
}

/** Keyset condition "after this cursor" on (table.created_at, table.id); matches the list indexes. */
export function afterCursor (table: string, cursor: string | undefined): RawBuilder<boolean> {
  const after = decodeCursor(cursor)
  if (!after) return sql<boolean>`true`
  return sql<boolean>`(${sql.ref(`${table}.created_at`)}, ${sql.ref(`${table}.id`)}) > (${new Date(after.at)}, ${after.id})`
}
