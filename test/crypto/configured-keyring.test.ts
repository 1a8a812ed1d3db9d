import t, { type Test } from 'tap'
import { mkdtempSync, readFileSync, rmSync, statSync, chmodSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadConfig } from '../../src/config.js'
import { keyringFor } from '../../src/crypto/configured-keyring.js'
import { KEY_FILE } from '../../src/crypto/key-file.js'
import { buildApp } from '../../src/app.js'
import { LogCapture } from '../helper.js'

function tempDir (t: Test, prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

const quiet = { info: () => {}, warn: () => {} }
const config = (env: Record<string, string>) => loadConfig({ API_KEYS: 'key-one-123', ...env })

function lines () {
  const said: Array<{ level: string, o: object, m: string }> = []
  return { said, log: { info: (o: object, m: string) => said.push({ level: 'info', o, m }), warn: (o: object, m: string) => said.push({ level: 'warn', o, m }) } }
}

t.test('the embedded database without ENCRYPTION_KEYS: a key file generated with mode 0600 on first start, reused after, its path logged, never the key', async (t) => {
  const dir = tempDir(t, 'otn-keyfile-')
  const first = lines()
  const ring = keyringFor(config({ PGLITE_DATA_DIR: dir }), 'pglite', first.log)
  const path = join(dir, KEY_FILE)
  t.equal(statSync(path).mode & 0o777, 0o600, 'only its owner can read it')
  const stored = readFileSync(path, 'utf8')
  t.match(stored, /^local:[A-Za-z0-9+/]{43}=\n$/, 'in the form ENCRYPTION_KEYS takes')
  t.equal(ring.currentId, 'local')
  t.match(first.said, [{ level: 'info', m: new RegExp(`generated a key into ${path}`) }])
  t.notMatch(JSON.stringify(first.said), stored.trim().slice(6), 'the key is not logged')
  const sealed = ring.seal('pages.access_token', 'EAA-token')

  const again = lines()
  const reused = keyringFor(config({ PGLITE_DATA_DIR: dir }), 'pglite', again.log)
  t.equal(readFileSync(path, 'utf8'), stored, 'the file is not rewritten')
  t.equal(reused.open('pages.access_token', sealed), 'EAA-token', 'the same key decrypts what the first start wrote')
  t.match(again.said, [{ level: 'info', m: `encryption at rest: using the key in ${path}` }])

  chmodSync(path, 0o644)
  t.throws(() => keyringFor(config({ PGLITE_DATA_DIR: dir }), 'pglite', quiet), /can be read by other users; chmod 600 it/, 'a readable key file is refused')
  chmodSync(path, 0o600)
  writeFileSync(path, 'garbage\n')
  t.throws(() => keyringFor(config({ PGLITE_DATA_DIR: dir }), 'pglite', quiet), /otn-encryption-key: entry 1: is not <id>:<base64 key>/, 'a damaged key file is refused, never replaced')
})

t.test('ENCRYPTION_KEYS wins over the key file; ALLOW_PLAINTEXT_SECRETS stores plaintext with a warning', async (t) => {
  const dir = tempDir(t, 'otn-keyfile-')
  const ring = keyringFor(config({ PGLITE_DATA_DIR: dir, ENCRYPTION_KEYS: `env:${Buffer.alloc(32, 3).toString('base64')}` }), 'pglite', quiet)
  t.equal(ring.currentId, 'env')
  t.throws(() => statSync(join(dir, KEY_FILE)), 'no key file is written')
  const plain = lines()
  const none = keyringFor(config({ DATABASE_URL: 'postgres://x@h/db', ALLOW_PLAINTEXT_SECRETS: 'true' }), 'postgres', plain.log)
  t.equal(none.currentId, undefined)
  t.equal(none.seal('pages.access_token', 'EAA-token'), 'EAA-token')
  t.match(plain.said, [{ level: 'warn', m: /encryption at rest is off \(ALLOW_PLAINTEXT_SECRETS=true/ }])
})

t.test('the service on a fresh embedded folder says where its key is in its first log lines', async (t) => {
  const dir = tempDir(t, 'otn-keyfile-app-')
  const log = new LogCapture()
  const app = await buildApp(config({ PGLITE_DATA_DIR: dir, LOG_LEVEL: 'info' }), { logStream: log })
  await app.close()
  const at = log.lines.findIndex((l) => typeof l.msg === 'string' && l.msg.startsWith('encryption at rest: generated a key into'))
  t.ok(at >= 0 && at <= 2, `among the first lines (line ${at + 1})`)
  t.equal(log.lines[at].encryption_key_file, join(dir, KEY_FILE))
  t.equal(statSync(join(dir, KEY_FILE)).mode & 0o777, 0o600)
})
