import { sql } from 'kysely'
import type { Database } from '../db/database.js'
import { DomainError } from './errors.js'

/** An IANA zone name (`Europe/Berlin`, `UTC`, `Etc/GMT+5`), never a bare offset like `+01:00`, which Postgres reads with the sign reversed. */
const ZONE_NAME = /^[A-Za-z][A-Za-z0-9_+\-/]{0,63}$/

/** Whether the runtime knows `value` as an IANA zone name (no database check: for webhook ingestion, which cannot wait on one per event). */
export function isTimeZoneName (value: string): boolean {
  try {
    return ZONE_NAME.test(value) && new Intl.DateTimeFormat('en', { timeZone: value }).resolvedOptions().timeZone !== undefined
  } catch {
    return false
  }
}

/**
 * The IANA time zone `input` names, as stored: checked by the runtime's ICU (`Intl.DateTimeFormat`
 * throws on an unknown zone) and by the database, which computes the calendar periods of recurring
 * tokens with it (`at time zone`). The spelling is ICU's when it differs from the input only in case
 * (`europe/berlin` → `Europe/Berlin`); an alias ICU maps to another name (`Asia/Kolkata`) is kept as given.
 */
export async function timeZone (db: Database, input: string): Promise<string> {
  let resolved: string
  try {
    if (!ZONE_NAME.test(input)) throw new RangeError('not a zone name')
    resolved = new Intl.DateTimeFormat('en', { timeZone: input }).resolvedOptions().timeZone
  } catch {
    throw invalidTimeZone(input)
  }
  const name = resolved.toLowerCase() === input.toLowerCase() ? resolved : input
  try {
    await sql`select now() at time zone ${name}`.execute(db)
  } catch {
    throw invalidTimeZone(input)
  }
  return name
}

function invalidTimeZone (input: string): DomainError {
  return new DomainError('invalid_timezone',
    `"${input.slice(0, 64)}" is not an IANA time zone name (for example Europe/Berlin, America/New_York or UTC).`)
}
