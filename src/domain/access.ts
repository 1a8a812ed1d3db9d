/**
 * API keys and what each may do (docs/SECURITY.md, Scopes). A key has a name (in logs, in the
 * `created_by` of what it creates, in the audit), a secret, the Pages it may see (all, or a list)
 * and whether it may change anything. A key with every right is an admin key: only it reads the
 * audit. The rule, one for every /v1 route: a resource of a Page the key may not see answers as if
 * it did not exist (404); a change by a read-only key, or an admin route for a non-admin key, is a
 * 403 `forbidden`; listings hold only the Pages the key may see.
 *
 * API_KEYS is a comma-separated list of entries:
 *   <secret>                          an admin key named key-<its position in the list>
 *   <name>:<secret>                   an admin key with a name
 *   <name>:<secret>:<scope>[:<scope>] a scoped key; each scope part is one of
 *       pages=<page id>[+<page id>...]   only these Pages
 *       read-only                        only reads (GET, and the routes that change nothing)
 */
import { isPageId } from './ids.js'

export interface ApiKey {
  name: string
  secret: string
  /** The Pages the key may see; null: every Page. */
  pages: readonly string[] | null
  readOnly: boolean
}

/** What a route needs of a key, declared in its schema as `x-access` (plugins/access.ts enforces it). */
export type Rights = 'read' | 'write' | 'admin'

export const KEY_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/
const SECRET = /^[^\s,:]{8,}$/

export const isAdmin = (key: ApiKey): boolean => key.pages === null && !key.readOnly

/** The key may act on `pageId` (by its Pages; rights apart). */
export const maySee = (key: ApiKey, pageId: string): boolean => key.pages === null || key.pages.includes(pageId)

/** The key holds `rights`. */
export function holds (key: ApiKey, rights: Rights): boolean {
  if (rights === 'read') return true
  if (rights === 'write') return !key.readOnly
  return isAdmin(key)
}

/**
 * Parses API_KEYS. Answers the keys, or one problem per bad entry (by position, never quoting a
 * secret), so that start-up refuses them all at once.
 */
export function parseApiKeys (text: string): { keys: ApiKey[], problems: string[] } {
  const keys: ApiKey[] = []
  const problems: string[] = []
  const entries = text.split(',').map((e) => e.trim())
  entries.forEach((entry, i) => {
    const at = `entry ${i + 1}`
    if (entry === '') { problems.push(`${at} is empty`); return }
    const parts = entry.split(':')
    if (parts.length === 1) {
      if (!SECRET.test(entry)) { problems.push(`${at}: a key is at least 8 characters, without spaces, commas or colons`); return }
      keys.push({ name: `key-${i + 1}`, secret: entry, pages: null, readOnly: false })
      return
    }
    const [name, secret, ...scopes] = parts
    if (!KEY_NAME.test(name)) { problems.push(`${at}: the name before the first colon must be 1 to 64 letters, digits, ".", "_" or "-", starting with a letter or digit`); return }
    if (!SECRET.test(secret)) { problems.push(`${at} (${name}): the secret is at least 8 characters, without spaces, commas or colons`); return }
    let pages: string[] | null = null
    let readOnly = false
    for (const scope of scopes) {
      if (scope === 'read-only') {
        if (readOnly) { problems.push(`${at} (${name}): read-only is given twice`); return }
        readOnly = true
      } else if (scope.startsWith('pages=')) {
        if (pages !== null) { problems.push(`${at} (${name}): pages= is given twice`); return }
        const ids = scope.slice('pages='.length).split('+')
        const bad = ids.filter((id) => !isPageId(id))
        if (bad.length > 0) { problems.push(`${at} (${name}): pages= takes Page ids (digits) joined by "+"`); return }
        pages = [...new Set(ids)]
      } else {
        problems.push(`${at} (${name}): unknown scope "${scope.slice(0, 32)}" (expected pages=<id>[+<id>...] or read-only)`)
        return
      }
    }
    keys.push({ name, secret, pages, readOnly })
  })
  const names = new Set<string>()
  const secrets = new Set<string>()
  for (const key of keys) {
    if (names.has(key.name)) problems.push(`the name ${key.name} is given to two keys`)
    if (secrets.has(key.secret)) problems.push(`key ${key.name}: the same secret is listed twice`)
    names.add(key.name)
    secrets.add(key.secret)
  }
  return { keys, problems }
}

/**
 * What a /v1 route needs of a key, declared in its schema as `x-access` (also in the OpenAPI
 * document). A Page named by a `pageId` path parameter or a `page_id` in the body is always checked.
 */
export interface AccessRule {
  rights: Rights
  /** A resource the request names by id, whose Page is looked up (one primary-key read, for keys limited to some Pages). */
  owner?: { table: 'topics' | 'notifications' | 'broadcasts', in: 'params' | 'body', field: string, what: 'topic' | 'notification' | 'broadcast' }
  /** The handler hands the key's Pages to its own statement (listings, and the send, whose one statement finds the topic). */
  filtered?: boolean
}

/** The rule of a route that declares none: reads by GET and HEAD, changes by every other method. */
export const defaultRule = (method: string): AccessRule => ({ rights: method === 'GET' || method === 'HEAD' ? 'read' : 'write' })
