import { readFileSync, statSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { ConfigError } from '../config.js'
import { newEncryptionKey, parseEncryptionKeys, type EncryptionKey } from './secret-box.js'

/** The file in the embedded database's folder that holds its generated key (when ENCRYPTION_KEYS is unset). */
export const KEY_FILE = 'otn-encryption-key'

/**
 * The embedded database's own key: read from its folder, or generated there on first start (mode
 * 0600, created exclusively, so a file already there is never overwritten). Called while the
 * folder's lock is held. The file is in ENCRYPTION_KEYS's form, so it can be moved to the
 * environment as it is.
 */
export function embeddedKey (dataDir: string): { keys: EncryptionKey[], path: string, generated: boolean } {
  const path = resolve(join(dataDir, KEY_FILE))
  let generated = false
  try {
    writeFileSync(path, `${newEncryptionKey('local')}\n`, { flag: 'wx', mode: 0o600 })
    generated = true
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
  }
  const { keys, problems } = parseEncryptionKeys(readFileSync(path, 'utf8').trim())
  if (problems.length > 0 || keys.length === 0) {
    throw new ConfigError(problems.map((p) => `${path}: ${p} (the embedded database's encryption key file; restore it from a backup)`))
  }
  if ((statSync(path).mode & 0o077) !== 0) {
    throw new ConfigError([`${path}: the embedded database's encryption key file can be read by other users; chmod 600 it`])
  }
  return { keys, path, generated }
}
