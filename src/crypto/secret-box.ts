import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomBytes } from 'node:crypto'

// Encryption at rest of the service's small secrets (docs/SECURITY.md): AES-256-GCM with a random
// 12-byte IV, the key's id and a format version in the stored form, and the column the value belongs
// to as additional authenticated data, so that a value moved to another column does not decrypt.
// Stored form: `enc:v1:<key id>:<base64url(iv | tag | ciphertext)>`. A value without the `enc:`
// prefix is legacy plaintext: it is read as it is, and `rotate-keys` encrypts it.

export const PREFIX = 'enc:v1:'
const IV_BYTES = 12
const TAG_BYTES = 16
const KEY_ID = /^[A-Za-z0-9_-]{1,32}$/

export interface EncryptionKey { id: string, key: Buffer }

/** The columns whose values are encrypted; the name is the additional authenticated data. */
export type SecretColumn = 'pages.access_token' | 'event_subscriptions.secret' | 'optin_tokens.token' | 'webhook_events.body'

/**
 * What a keyed digest is for; each purpose has its own key (derived from the encryption key with
 * HKDF), so a token's digest and a PSID's digest never compare equal.
 */
export type DigestPurpose = 'optin_token' | 'webhook_body' | 'psid'

/** A stored value this build cannot read: its key is not configured, or it was altered. The message never holds the value. */
export class SecretUnreadableError extends Error {
  readonly code = 'secret_unreadable'
  constructor (message: string) {
    super(message)
    this.name = 'SecretUnreadableError'
  }
}

/**
 * `ENCRYPTION_KEYS`: `<id>:<base64 of 32 bytes>[,<id>:<key>...]`. One problem per bad entry, naming
 * it by position and id (never quoting a key).
 */
export function parseEncryptionKeys (text: string): { keys: EncryptionKey[], problems: string[] } {
  const keys: EncryptionKey[] = []
  const problems: string[] = []
  text.split(',').forEach((raw, i) => {
    const entry = raw.trim()
    const where = `entry ${i + 1}`
    const colon = entry.indexOf(':')
    if (colon < 0) { problems.push(`${where}: is not <id>:<base64 key>`); return }
    const id = entry.slice(0, colon)
    const encoded = entry.slice(colon + 1)
    if (!KEY_ID.test(id)) { problems.push(`${where}: its id must be 1 to 32 letters, digits, "-" or "_"`); return }
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(encoded)) { problems.push(`${where} (id ${id}): the key is not base64`); return }
    const key = Buffer.from(encoded, 'base64')
    if (key.length !== 32) { problems.push(`${where} (id ${id}): the key must be 32 bytes (44 base64 characters), it is ${key.length}`); return }
    if (keys.some((k) => k.id === id)) { problems.push(`${where}: id ${id} is used twice`); return }
    keys.push({ id, key })
  })
  return { keys, problems }
}

/** A new key in the form ENCRYPTION_KEYS takes. */
export function newEncryptionKey (id: string): string {
  return `${id}:${randomBytes(32).toString('base64')}`
}

/** The configured keys: the first encrypts, all decrypt. No keys: values are stored in plaintext (ALLOW_PLAINTEXT_SECRETS). */
export class Keyring {
  private readonly byId: Map<string, Buffer>
  private readonly digestKeys = new Map<string, Buffer>()
  constructor (readonly keys: readonly EncryptionKey[]) {
    this.byId = new Map(keys.map((k) => [k.id, k.key]))
  }

  private digestKey (key: EncryptionKey, purpose: DigestPurpose): Buffer {
    const name = `${key.id}\u0000${purpose}`
    let derived = this.digestKeys.get(name)
    if (!derived) {
      derived = Buffer.from(hkdfSync('sha256', key.key, Buffer.alloc(0), `otn digest v1 ${purpose}`, 32))
      this.digestKeys.set(name, derived)
    }
    return derived
  }

  /**
   * The keyed digest an equality lookup stores (HMAC-SHA256 under the key that encrypts, derived per
   * purpose). With no key (plaintext allowed) it is the unkeyed SHA-256 of the value, the form rows
   * written before encryption carry.
   */
  digest (purpose: DigestPurpose, value: string | Buffer | Uint8Array): Buffer {
    const current = this.keys[0]
    if (!current) return createHash('sha256').update(value).digest()
    return createHmac('sha256', this.digestKey(current, purpose)).update(value).digest()
  }

  /**
   * Every digest a stored row may carry for this value: under each configured key (the current
   * first), then the unkeyed SHA-256 of rows not yet rotated. The first is always `digest`'s, the
   * one a new row stores (with no key, the SHA-256). A lookup matches any of them (`= any`),
   * so a value written under an older key is still found until rotate-keys rewrites it.
   */
  digests (purpose: DigestPurpose, value: string | Buffer | Uint8Array): Buffer[] {
    return [
      ...this.keys.map((k) => createHmac('sha256', this.digestKey(k, purpose)).update(value).digest()),
      createHash('sha256').update(value).digest(),
    ]
  }

  /** seal for bytes (a raw webhook body): the stored form's UTF-8 bytes; plaintext mode keeps the bytes. */
  sealBytes (column: SecretColumn, value: Uint8Array): Buffer {
    if (!this.keys[0]) return Buffer.from(value)
    return Buffer.from(this.sealRaw(column, Buffer.from(value)), 'utf8')
  }

  /** open for bytes: a stored value that does not start with `enc:` is legacy plaintext, returned as it is. */
  openBytes (column: SecretColumn, stored: Uint8Array): Buffer {
    const buf = Buffer.from(stored)
    if (buf.subarray(0, 4).toString('latin1') !== 'enc:') return buf
    return this.openRaw(column, buf.toString('utf8'))
  }

  /** The id new values are encrypted under; undefined when values are stored in plaintext. */
  get currentId (): string | undefined { return this.keys[0]?.id }

  seal (column: SecretColumn, value: string): string {
    if (!this.keys[0]) return value
    return this.sealRaw(column, Buffer.from(value, 'utf8'))
  }

  open (column: SecretColumn, stored: string): string {
    if (!stored.startsWith('enc:')) return stored
    return this.openRaw(column, stored).toString('utf8')
  }

  private sealRaw (column: SecretColumn, value: Buffer): string {
    const current = this.keys[0]
    const iv = randomBytes(IV_BYTES)
    const cipher = createCipheriv('aes-256-gcm', current.key, iv)
    cipher.setAAD(Buffer.from(column))
    const ciphertext = Buffer.concat([cipher.update(value), cipher.final()])
    return `${PREFIX}${current.id}:${Buffer.concat([iv, cipher.getAuthTag(), ciphertext]).toString('base64url')}`
  }

  private openRaw (column: SecretColumn, stored: string): Buffer {
    if (!stored.startsWith(PREFIX)) throw new SecretUnreadableError(`a value of ${column} has an unknown encryption format (this build reads ${PREFIX})`)
    const rest = stored.slice(PREFIX.length)
    const colon = rest.indexOf(':')
    const id = colon < 0 ? '' : rest.slice(0, colon)
    const key = this.byId.get(id)
    if (!key) {
      throw new SecretUnreadableError(`a value of ${column} is encrypted under key id "${KEY_ID.test(id) ? id : '?'}", which ENCRYPTION_KEYS does not hold; add that key back (docs/SECURITY.md)`)
    }
    const blob = Buffer.from(rest.slice(colon + 1), 'base64url')
    if (blob.length < IV_BYTES + TAG_BYTES) throw new SecretUnreadableError(`a value of ${column} under key id "${id}" is truncated`)
    try {
      const decipher = createDecipheriv('aes-256-gcm', key, blob.subarray(0, IV_BYTES))
      decipher.setAAD(Buffer.from(column))
      decipher.setAuthTag(blob.subarray(IV_BYTES, IV_BYTES + TAG_BYTES))
      return Buffer.concat([decipher.update(blob.subarray(IV_BYTES + TAG_BYTES)), decipher.final()])
    } catch {
      throw new SecretUnreadableError(`a value of ${column} under key id "${id}" fails authentication: it was altered, moved from another column, or the key with that id is not the one that encrypted it`)
    }
  }

  /** True when a stored value is already under the key that encrypts (nothing for rotation to do). */
  isCurrent (stored: string | Uint8Array): boolean {
    const head = typeof stored === 'string' ? stored.slice(0, 48) : Buffer.from(stored.subarray(0, 48)).toString('latin1')
    const id = this.currentId
    return id === undefined ? !head.startsWith('enc:') : head.startsWith(`${PREFIX}${id}:`)
  }
}

// The keyring the domain seals and opens with: set once by buildApp (or the rotate-keys CLI) from the
// configuration. Until then, and with ALLOW_PLAINTEXT_SECRETS, values are written in plaintext.
let active = new Keyring([])

export function useKeyring (keyring: Keyring): void { active = keyring }
export function activeKeyring (): Keyring { return active }
export const sealSecret = (column: SecretColumn, value: string): string => active.seal(column, value)
export const openSecret = (column: SecretColumn, stored: string): string => active.open(column, stored)
/** openSecret, or the reason no configured key reads the value (it names the key id, never the value); other errors throw. */
export function tryOpenSecret (column: SecretColumn, stored: string): string | SecretUnreadableError {
  try {
    return active.open(column, stored)
  } catch (error) {
    if (error instanceof SecretUnreadableError) return error
    throw error
  }
}
export const sealBytes = (column: SecretColumn, value: Uint8Array): Buffer => active.sealBytes(column, value)
export const openBytes = (column: SecretColumn, stored: Uint8Array): Buffer => active.openBytes(column, stored)
export const keyedDigest = (purpose: DigestPurpose, value: string | Buffer | Uint8Array): Buffer => active.digest(purpose, value)
export const keyedDigests = (purpose: DigestPurpose, value: string | Buffer | Uint8Array): Buffer[] => active.digests(purpose, value)
