import type { Migration } from 'kysely'
import * as createCoreTables from './20261121000000_create_core_tables.js'

// Listed here (not read from the folder) so the same list works from .ts sources and compiled .js.
export const migrations: Record<string, Migration> = {
  '20261121000000_create_core_tables': createCoreTables,
}
