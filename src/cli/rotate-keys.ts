import { keyringFor } from '../crypto/configured-keyring.js'
import { openDatabase, type DatabaseHandle } from '../db/database.js'
import { erasureKey } from '../domain/erasure.js'
import { rotateKeys } from '../domain/key-rotation.js'
import { maskUrl } from '../logger.js'
import { exitWith, explainDatabaseError, startupConfig } from '../startup.js'

// Re-encrypts every Page access token, event signing secret and raw webhook body under
// ENCRYPTION_KEYS's first key (legacy plaintext included), in batches, while the service runs (docs/SECURITY.md). Counts go to
// stdout; the service's maintenance task does the same every period.
const program = 'otn-service rotate-keys'
const { config } = startupConfig(program, { API_KEYS: 'unused-by-rotate-keys' })
let handle: DatabaseHandle | undefined
try {
  handle = await openDatabase({ databaseUrl: config.DATABASE_URL, pgliteDataDir: config.PGLITE_DATA_DIR, poolSize: 1 })
  const say = (_o: object, message: string): void => { console.log(message) }
  const keyring = keyringFor(config, handle.kind, { info: say, warn: say })
  if (keyring.currentId === undefined) {
    console.log('no encryption key: nothing to rotate to (set ENCRYPTION_KEYS)')
  } else {
    const counts = await rotateKeys(handle.db, {
      keyring,
      subjectKey: erasureKey(config),
      progress: (c) => console.log(`re-encrypted so far: ${c.pages} page(s), ${c.event_subscriptions} event subscription(s), ${c.optin_tokens} opt-in token(s), ${c.webhook_events} raw webhook bodies`),
    })
    console.log(`${handle.kind} at ${maskUrl(handle.location)}: re-encrypted ${counts.pages} page access token(s), ${counts.event_subscriptions} event subscription(s), ${counts.optin_tokens} opt-in token(s) and ${counts.webhook_events} raw webhook bodies under key ${keyring.currentId}`)
  }
} catch (error) {
  await handle?.close().catch(() => {})
  exitWith(program, error, explainDatabaseError(error, config) ?? (error instanceof Error && (error as { code?: string }).code === 'secret_unreadable' ? error.message : undefined))
}
await handle.close()
