import {
  CompiledQuery, PostgresAdapter, PostgresIntrospector, PostgresQueryCompiler,
  type DatabaseConnection, type Dialect, type Driver, type Kysely, type QueryResult, type TransactionSettings,
} from 'kysely'
import type { PGlite } from '@electric-sql/pglite'

/**
 * PGlite is one session: a transaction opened by one caller would swallow another caller's
 * statements. Every user of the database (Kysely and the job queue alike) takes this lock for as
 * long as it holds the session, so each transaction runs alone.
 */
export class SessionLock {
  private tail: Promise<void> = Promise.resolve()

  async acquire (): Promise<() => void> {
    let release!: () => void
    const next = new Promise<void>((resolve) => { release = resolve })
    const previous = this.tail
    this.tail = previous.then(() => next)
    await previous
    return release
  }

  async run<T> (fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire()
    try {
      return await fn()
    } finally {
      release()
    }
  }
}

class PGliteConnection implements DatabaseConnection {
  constructor (private readonly pglite: PGlite) {}

  async executeQuery<R> (query: CompiledQuery): Promise<QueryResult<R>> {
    // A script of several statements (the job queue's own schema) must go through the simple protocol.
    if (query.parameters.length === 0 && /;\s*\S/.test(query.sql)) {
      const results = await this.pglite.exec(query.sql)
      return { rows: (results[results.length - 1]?.rows ?? []) as R[] }
    }
    const result = await this.pglite.query<R>(query.sql, [...query.parameters])
    return {
      rows: result.rows,
      ...(result.affectedRows !== undefined ? { numAffectedRows: BigInt(result.affectedRows) } : {}),
    }
  }

  // eslint-disable-next-line require-yield
  async * streamQuery<R> (): AsyncIterableIterator<QueryResult<R>> {
    throw new Error('streaming is not supported on PGlite; page with keyset queries instead')
  }
}

class PGliteDriver implements Driver {
  private readonly releases = new Map<DatabaseConnection, () => void>()
  private readonly connection: PGliteConnection

  constructor (private readonly pglite: PGlite, private readonly lock: SessionLock) {
    this.connection = new PGliteConnection(pglite)
  }

  async init (): Promise<void> {}

  async acquireConnection (): Promise<DatabaseConnection> {
    const release = await this.lock.acquire()
    this.releases.set(this.connection, release)
    return this.connection
  }

  async releaseConnection (connection: DatabaseConnection): Promise<void> {
    const release = this.releases.get(connection)
    this.releases.delete(connection)
    release?.()
  }

  async beginTransaction (connection: DatabaseConnection, settings: TransactionSettings): Promise<void> {
    const level = settings.isolationLevel ? ` isolation level ${settings.isolationLevel}` : ''
    await connection.executeQuery(CompiledQuery.raw(`begin${level}`))
  }

  async commitTransaction (connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('commit'))
  }

  async rollbackTransaction (connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('rollback'))
  }

  async destroy (): Promise<void> {
    await this.lock.run(() => this.pglite.close())
  }
}

export class PGliteDialect implements Dialect {
  constructor (private readonly pglite: PGlite, private readonly lock: SessionLock) {}
  createAdapter () { return new PostgresAdapter() }
  createDriver (): Driver { return new PGliteDriver(this.pglite, this.lock) }
  createQueryCompiler () { return new PostgresQueryCompiler() }
  createIntrospector (db: Kysely<any>) { return new PostgresIntrospector(db) }
}
