import type { Migration } from 'kysely'
import * as createCoreTables from './20261121000000_create_core_tables.js'
import * as addNotificationTokenState from './20261121020000_add_notification_token_state.js'

// Listed here (not read from the folder) so the same list works from .ts sources and compiled .js.
export const migrations: Record<string, Migration> = {
  '20261121000000_create_core_tables': createCoreTables,
  '20261121020000_add_notification_token_state': addNotificationTokenState,
}
