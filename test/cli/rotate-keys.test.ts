import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { sql } from 'kysely'
import { openDatabase } from '../../src/db/database.js'
import { migrate } from '../../src/db/migrate.js'
import { Keyring, newEncryptionKey, parseEncryptionKeys } from '../../src/crypto/secret-box.js'
import { erasureKey, subjectOf } from '../../src/domain/erasure.js'
import { databaseKind } from '../helper.js'

// npm run rotate-keys, as an operator runs it: the built CLI's source as a child process, on a
// database of its own (Postgres: a scratch database; PGlite: a data folder).
const root = fileURLToPath(new URL('../..', import.meta.url))
const tsx = import.meta.resolve('tsx')

async function run (env: Record<string, string>) {
  const child = spawn(process.execPath, ['--import', tsx, join(root, 'src/cli/rotate-keys.ts')], {
    cwd: root, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (c) => { stdout += c })
  child.stderr.on('data', (c) => { stderr += c })
  const [code] = await once(child, 'exit')
  return { code: code as number, stdout, stderr }
}

t.test('rotate-keys encrypts legacy plaintext and re-encrypts under the new first key, in batches, and prints the counts', async (t) => {
  let env: Record<string, string>
  if (databaseKind === 'postgres') {
    const admin = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
    const name = `otn_rotate_${randomBytes(4).toString('hex')}`
    const c = new pg.Client({ connectionString: admin })
    await c.connect()
    await c.query(`create database ${name}`)
    await c.end()
    t.teardown(async () => {
      const d = new pg.Client({ connectionString: admin })
      await d.connect()
      await d.query(`drop database if exists ${name} with (force)`)
      await d.end()
    })
    const url = new URL(admin)
    url.pathname = `/${name}`
    env = { DATABASE_URL: url.toString() }
  } else {
    env = { PGLITE_DATA_DIR: join(t.testdir({}), 'data') }
  }
  const open = () => openDatabase({ databaseUrl: env.DATABASE_URL, pgliteDataDir: env.PGLITE_DATA_DIR })
  const oldKey = newEncryptionKey('old')
  const newKey = newEncryptionKey('new')
  const old = new Keyring(parseEncryptionKeys(oldKey).keys)
  // 600 Pages (more than one batch): half in plaintext from before encryption, half under the old key.
  let handle = await open()
  await migrate(handle.db)
  const tokens = Array.from({ length: 600 }, (_, i) => `EAA-rotate-${i}-${randomBytes(6).toString('hex')}`)
  await sql`insert into pages (id, name, access_token)
    select x.id, 'Page', x.token from unnest(${tokens.map((_, i) => String(9000000 + i))}::text[], ${tokens.map((tok, i) => i % 2 === 0 ? tok : old.seal('pages.access_token', tok))}::text[]) as x(id, token)`.execute(handle.db)
  await sql`insert into event_subscriptions (url, events, secret) values ('https://example.com/hook', ${['*']}, ${'whsec_plain'})`.execute(handle.db)
  // A raw webhook body stored in clear before encryption: no mentions, the unkeyed SHA-256.
  const raw = Buffer.from(JSON.stringify({ object: 'page', entry: [{ id: '9000000', time: 1, messaging: [{ sender: { id: '7000000000001' }, recipient: { id: '9000000' }, timestamp: 1, message: { mid: 'm_1', text: 'hi' } }] }] }))
  await sql`insert into webhook_events (page_id, signature, object, body, digest) values ('9000000', 'sha256=x', 'page', ${raw}, sha256(${raw}))`.execute(handle.db)
  await handle.close()

  env.META_APP_SECRET = 'cli-app-secret'
  const withoutOld = await run({ ...env, ENCRYPTION_KEYS: newKey })
  t.equal(withoutOld.code, 69, 'a value under a key no longer listed stops it')
  t.match(withoutOld.stderr, /^otn-service rotate-keys: a value of pages\.access_token is encrypted under key id "old", which ENCRYPTION_KEYS does not hold/)
  t.notMatch(withoutOld.stderr, /EAA-rotate|enc:v1/, 'never a value')

  const done = await run({ ...env, ENCRYPTION_KEYS: `${newKey},${oldKey}` })
  t.equal(done.code, 0, done.stderr)
  t.match(done.stdout, /re-encrypted 600 page access token\(s\), 1 event subscription\(s\), 0 opt-in token\(s\) and 1 raw webhook bodies under key new\n$/)
  t.match(done.stdout, /re-encrypted so far: 500 page\(s\)/, 'in batches of 500')
  const again = await run({ ...env, ENCRYPTION_KEYS: `${newKey},${oldKey}` })
  t.match(again.stdout, /re-encrypted 0 page access token\(s\), 0 event subscription\(s\), 0 opt-in token\(s\) and 0 raw webhook bodies/, 'nothing left: a second run changes nothing')

  handle = await open()
  t.teardown(() => handle.close())
  const current = new Keyring(parseEncryptionKeys(newKey).keys)
  const rows = await sql<{ id: string, access_token: string }>`select id, access_token from pages order by id`.execute(handle.db)
  t.ok(rows.rows.every((r) => r.access_token.startsWith('enc:v1:new:')), 'every Page under the new key')
  t.same(rows.rows.map((r) => current.open('pages.access_token', r.access_token)), tokens, 'every token kept, readable with the new key alone')
  const sub = await sql<{ secret: string }>`select secret from event_subscriptions`.execute(handle.db)
  t.equal(current.open('event_subscriptions.secret', sub.rows[0].secret), 'whsec_plain')
  const body = await sql<{ body: Uint8Array, digest: Uint8Array, found: boolean }>`
    select body, digest, mentions && array[${subjectOf(erasureKey({ META_APP_SECRET: 'cli-app-secret', ERASURE_KEY: undefined }), '9000000', '7000000000001')}]::bytea[] as found
      from webhook_events`.execute(handle.db)
  t.ok(current.openBytes('webhook_events.body', body.rows[0].body).equals(raw), 'the body sealed under the new key')
  t.ok(Buffer.from(body.rows[0].digest).equals(current.digest('webhook_body', raw)), 'its digest under the new key')
  t.equal(body.rows[0].found, true, 'its mentions under the configured erasure key (from META_APP_SECRET): erasure finds it')
})
