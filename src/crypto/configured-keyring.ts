import type { Config } from '../config.js'
import { embeddedKey } from './key-file.js'
import { Keyring, newEncryptionKey, parseEncryptionKeys } from './secret-box.js'

/**
 * The keys Page access tokens and event signing secrets are encrypted with (docs/SECURITY.md):
 * ENCRYPTION_KEYS; else, on the embedded database, a key kept in its folder (in memory for
 * memory://); else plaintext, which the configuration admits only with ALLOW_PLAINTEXT_SECRETS.
 */
export function keyringFor (config: Config, kind: 'postgres' | 'pglite', log: { info: (o: object, m: string) => void, warn: (o: object, m: string) => void }): Keyring {
  if (config.encryptionKeys.length > 0) {
    log.info({ encryption_key: config.encryptionKeys[0].id, decrypt_keys: config.encryptionKeys.length }, `encryption at rest: new secrets are encrypted under key ${config.encryptionKeys[0].id}`)
    return new Keyring(config.encryptionKeys)
  }
  if (config.ALLOW_PLAINTEXT_SECRETS) {
    log.warn({ encryption: false }, 'encryption at rest is off (ALLOW_PLAINTEXT_SECRETS=true, no ENCRYPTION_KEYS): Page access tokens and event signing secrets are stored in plaintext; development only')
    return new Keyring([])
  }
  if (kind === 'pglite' && !config.DATABASE_URL) {
    if (config.PGLITE_DATA_DIR.startsWith('memory://')) {
      log.info({ encryption_key: 'memory' }, 'encryption at rest: a key generated for this in-memory database (kept nowhere, like the database)')
      return new Keyring(parseEncryptionKeys(newEncryptionKey('memory')).keys)
    }
    const { keys, path, generated } = embeddedKey(config.PGLITE_DATA_DIR)
    log.info({ encryption_key_file: path, generated }, generated
      ? `encryption at rest: generated a key into ${path} (mode 0600); back it up with the data folder: without it the stored Page access tokens cannot be read`
      : `encryption at rest: using the key in ${path}`)
    return new Keyring(keys)
  }
  log.warn({ encryption: false }, 'encryption at rest is off: no ENCRYPTION_KEYS; Page access tokens and event signing secrets are stored in plaintext')
  return new Keyring([])
}
