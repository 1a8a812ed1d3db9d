import { vacuumChangedTables } from './db/embedded-vacuum.js'
import { removeOldAuditEntries } from './domain/audit.js'
import { erasureKey } from './domain/erasure.js'
import { RotationSchedule } from './domain/key-rotation.js'
import { recoverLeases } from './domain/recovery.js'
import { removeOldEvents, removeOldMessageBodies, removeOldWebhookBodies } from './domain/retention.js'
import { expireTokens } from './domain/token-store.js'
import type { MaintenanceTask } from './maintenance.js'

/** Every periodic sweep the service runs, made once per app (a task may keep state between runs); add new ones here. */
export const maintenanceTasks = (): MaintenanceTask[] => [
  // Encrypts what is not yet under ENCRYPTION_KEYS's first key (legacy plaintext, an older key): docs/SECURITY.md.
  rotateKeysTask(new RotationSchedule()),
  { name: 'expire_tokens', run: ({ db }) => expireTokens(db) },
  { name: 'remove_old_webhook_bodies', run: ({ db, config }) => removeOldWebhookBodies(db, config.WEBHOOK_BODY_RETENTION_DAYS) },
  { name: 'remove_old_message_bodies', run: ({ db, config }) => removeOldMessageBodies(db, config.MESSAGE_BODY_RETENTION_DAYS) },
  { name: 'remove_old_events', run: ({ db, config }) => removeOldEvents(db, config.EVENTS_RETENTION_DAYS) },
  { name: 'remove_old_audit_entries', run: ({ db, config }) => removeOldAuditEntries(db, config.AUDIT_RETENTION_DAYS) },
  {
    name: 'recover_leases',
    // Sends in flight at once: a share of the Graph connections, so recovery never starves live sends.
    run: ({ sender, config, log }) => recoverLeases(sender.deps, {
      concurrency: Math.max(1, Math.min(config.RECOVERY_CONCURRENCY, Math.floor(config.GRAPH_API_CONNECTIONS / 2))),
      progress: (p) => { if (p.resolved + p.deferred > 0) log.info({ task: 'recover_leases', ...p }, 'lease recovery: progress') },
    }),
  },
  { name: 'vacuum_embedded', run: ({ db, dbKind }) => dbKind === 'pglite' ? vacuumChangedTables(db) : Promise.resolve(0) },
]

function rotateKeysTask (schedule: RotationSchedule): MaintenanceTask {
  return {
    name: 'rotate_keys',
    run: async ({ db, config }) => {
      const c = await schedule.run(db, erasureKey(config))
      return c.pages + c.event_subscriptions + c.optin_tokens + c.webhook_events
    },
  }
}
