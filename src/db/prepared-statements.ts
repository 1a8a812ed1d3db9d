import type pg from 'pg'

// Named (prepared) statements on every pg connection: Postgres parses and plans a statement the
// first time a connection sends it and reuses that on every later call, which roughly halves the
// database's work for the service's multi-table statements (figures in docs/PERFORMANCE.md).
// Kysely sends unnamed statements only, so the pool's clients name them here.

/** Postgres refuses a prepared statement whose result columns changed (a migration added one). */
function isStalePlan (error: unknown): boolean {
  const e = error as { code?: string, message?: string }
  return e?.code === '0A000' && typeof e.message === 'string' && e.message.includes('cached plan must not change result type')
}

interface ClientInternals {
  connection: {
    parsedStatements: Record<string, string>
    on (event: 'readyForQuery', listener: (msg: { status: string }) => void): void
  }
}

type QueryFn = (config: unknown, values?: unknown, callback?: unknown) => unknown

/**
 * Makes each client of `pool` send every parameterised statement as a named statement, keeping at
 * most `capacity` per connection (least recently used deallocated first, so queries built with a
 * varying number of parameters cannot grow the server's memory without bound). Statements without
 * parameters (BEGIN, COMMIT, scripts of several statements) stay unnamed.
 *
 * When a migration changes the columns a prepared `select *` returns, Postgres refuses it once on
 * each connection: the statement is then prepared afresh and, if it ran outside a transaction
 * (nothing happened), sent once more; inside a transaction the error reaches the caller.
 */
export function prepareStatements (pool: pg.Pool, capacity: number): void {
  if (capacity <= 0) return
  pool.on('connect', (client) => {
    const internals = client as unknown as ClientInternals
    // 'I': idle, outside a transaction. Known from the server's ReadyForQuery messages.
    let status = 'I'
    internals.connection.on('readyForQuery', (msg) => { status = msg.status })
    const names = new Map<string, string>()
    let sequence = 0
    const query = client.query.bind(client) as QueryFn

    const nameFor = (text: string): string => {
      let name = names.get(text)
      if (name !== undefined) {
        names.delete(text) // re-inserted below: a Map keeps insertion order, so the first key is the least recently used
      } else {
        name = `otn_${++sequence}`
        if (names.size >= capacity) {
          const [oldText, oldName] = names.entries().next().value as [string, string]
          forget(oldText, oldName)
        }
      }
      names.set(text, name)
      return name
    }
    const forget = (text: string, name: string): void => {
      names.delete(text)
      if (internals.connection.parsedStatements[name] === undefined) return
      delete internals.connection.parsedStatements[name]
      // Queued behind whatever the client is doing. It fails only when the connection is gone or its
      // transaction has already failed; the statement then lives on, unnamed by us, until the connection closes.
      ;(query(`deallocate ${name}`) as Promise<unknown>).catch(() => {})
    }

    ;(client as unknown as { query: QueryFn }).query = (config, values, callback) => {
      if (typeof config !== 'string' || !Array.isArray(values) || values.length === 0 || callback !== undefined) {
        return query(config, values, callback)
      }
      const autocommit = status === 'I'
      const run = () => query({ name: nameFor(config), text: config, values }) as Promise<unknown>
      return run().catch((error: unknown) => {
        if (!isStalePlan(error)) throw error
        const name = names.get(config)
        if (name !== undefined) forget(config, name)
        if (!autocommit) throw error
        return run()
      })
    }
  })
}
