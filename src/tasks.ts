import { expireTokens } from './domain/expiry.js'
import { recoverLeases } from './domain/leases.js'
import type { MaintenanceTask } from './maintenance.js'

/** Every periodic sweep the service runs; add new ones here. */
export const maintenanceTasks: MaintenanceTask[] = [
  { name: 'expire_tokens', run: ({ db }) => expireTokens(db) },
  { name: 'recover_leases', run: ({ db, graph, config, log, onFinal }) => recoverLeases({ db, graph, config, log, onFinal }) },
]
