import { createHash } from 'node:crypto'
import type pg from 'pg'

/**
 * Makes every parameterised query on this pool a named (prepared) statement, named after a hash of
 * its text: Postgres then parses and plans each statement once per connection instead of on
 * every call. This is the lever the benchmark measures; the service does not do it (yet).
 * Queries without parameters (scripts of several statements among them) are left unnamed.
 */
export function prepareEveryStatement (pool: pg.Pool): pg.Pool {
  const names = new Map<string, string>()
  const nameOf = (text: string): string => {
    let name = names.get(text)
    if (!name) {
      name = `s${createHash('sha1').update(text).digest('hex').slice(0, 20)}`
      names.set(text, name)
    }
    return name
  }
  pool.on('connect', (client) => {
    const query = client.query.bind(client) as (...args: unknown[]) => unknown
    ;(client as unknown as { query: (...args: unknown[]) => unknown }).query = (text: unknown, values?: unknown, callback?: unknown) =>
      typeof text === 'string' && Array.isArray(values) && values.length > 0
        ? query({ name: nameOf(text), text, values }, callback)
        : query(text, values, callback)
  })
  return pool
}
