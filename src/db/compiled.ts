import { CompiledQuery, type QueryResult, type RawBuilder } from 'kysely'
import type { Database } from './database.js'

/** A parameter of a statement compiled once: its value is read from each run's input. */
class Slot<I> {
  constructor (readonly read: (input: I) => unknown) {}
}

/** Names a parameter of a compiled statement by the function that reads it from the run's input. */
export type SlotOf<I> = (read: (input: I) => unknown) => unknown

/**
 * A statement whose text is built and compiled on its first run only: `build` gets `slot`, which
 * stands for a value read from each run's input, and may use constants as any `sql` template does.
 * Later runs only read the parameters, in the order the compiler placed them. For the statements
 * of every send, which kysely would otherwise build and compile afresh each time (16–72 µs of the
 * app's thread per statement, 5–20 µs compiled once: bench/statement-build.ts). Every Database
 * here compiles with Postgres's compiler (pg and PGlite alike), so one compilation serves them all.
 */
export function compiledOnce<I, R> (build: (slot: SlotOf<I>) => RawBuilder<R>) {
  const compile = (db: Database) => build((read) => new Slot(read)).compile(db)
  let compiled: CompiledQuery<R> | undefined
  return (db: Database, input: I): Promise<QueryResult<R>> => {
    // A database with plugins (the tests' statement counter) compiles each run, so that they see every statement.
    const query = db.getExecutor().plugins.length > 0 ? compile(db) : (compiled ??= compile(db))
    const parameters = query.parameters.map((p) => (p instanceof Slot ? p.read(input) : p))
    return db.executeQuery(CompiledQuery.raw(query.sql, parameters) as CompiledQuery<R>)
  }
}
