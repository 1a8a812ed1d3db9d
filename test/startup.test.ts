import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { sql } from 'kysely'
import { buildApp } from '../src/app.js'
import { openDatabase } from '../src/db/database.js'
import { JOB_QUEUE_SCHEMA } from '../src/db/job-queue-schema.js'
import { explainDatabaseError, explainListenError, missingSettingsWarning, readEnvironment } from '../src/startup.js'
import { databaseKind, TEST_ENCRYPTION_KEYS, testConfig } from './helper.js'

// What a newcomer and an operator see at start-up: .env read, what will not work named, and the
// failures they can fix ended with one line and an exit code. The process tests run the real entry
// points (src/server.ts, src/cli/migrate.ts) as child processes.
const root = fileURLToPath(new URL('..', import.meta.url))
const tsx = import.meta.resolve('tsx')

function run (entry: string, env: Record<string, string>, cwd = root) {
  const child = spawn(process.execPath, ['--import', tsx, join(root, entry)], {
    cwd,
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (c) => { stdout += c })
  child.stderr.on('data', (c) => { stderr += c })
  const exited = once(child, 'exit').then(([code]) => code as number | null)
  return { child, exited, stdout: () => stdout, stderr: () => stderr }
}

/** The log lines printed so far, parsed. */
const logLines = (text: string) => text.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l))

async function until<T> (read: () => T | undefined, exited: Promise<unknown>): Promise<T> {
  let done = false
  exited.then(() => { done = true })
  for (;;) {
    const value = read()
    if (value !== undefined) return value
    if (done) throw new Error('the process exited first')
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

t.test('.env: read from the working directory when present; the environment wins, even when empty', async (t) => {
  const dir = t.testdir({ '.env': 'API_KEYS=from-file-key-123\nPORT=4001\n# a comment\nLOG_LEVEL=debug\nMETA_VERIFY_TOKEN="quoted value"\n' })
  const { env, file } = readEnvironment({ PORT: '5002', LOG_LEVEL: '' }, join(dir, '.env'))
  t.equal(env.API_KEYS, 'from-file-key-123')
  t.equal(env.META_VERIFY_TOKEN, 'quoted value')
  t.equal(env.PORT, '5002', 'the environment wins')
  t.equal(env.LOG_LEVEL, '', 'an empty variable in the environment still wins (it means: the default)')
  t.same(file, { path: join(dir, '.env'), used: ['API_KEYS', 'META_VERIFY_TOKEN'], overridden: ['LOG_LEVEL', 'PORT'] })

  const none = readEnvironment({ PORT: '1' }, join(dir, 'absent.env'))
  t.same(none, { env: { PORT: '1' } })
})

t.test('one start-up warning names what will not work without the webhook settings', async (t) => {
  const both = missingSettingsWarning(testConfig())!
  t.match(both, /^webhooks will not work: META_APP_SECRET is unset: webhook deliveries from Meta are refused \(503\)/)
  t.match(both, /META_VERIFY_TOKEN is unset: Meta's webhook verification handshake is refused \(403\)/)
  t.match(both, /Set them \(see \.env\.example\)\.$/)
  t.notMatch(missingSettingsWarning(testConfig({ META_APP_SECRET: 's' }))!, /META_APP_SECRET/)
  t.equal(missingSettingsWarning(testConfig({ META_APP_SECRET: 's', META_VERIFY_TOKEN: 'v' })), undefined)
})

t.test('failures an operator can fix are one line each; anything else is left to its stack trace', async (t) => {
  const pgAt = { DATABASE_URL: 'postgres://otn:secret@db.example:5432/otn', PGLITE_DATA_DIR: './data/pglite' }
  t.equal(explainDatabaseError(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }), pgAt),
    'cannot reach Postgres at postgres://otn:***@db.example:5432/otn: connection refused: is it running, and listening on that host and port?')
  t.equal(explainDatabaseError(Object.assign(new Error('database "otn" does not exist'), { code: '3D000' }), pgAt),
    'Postgres at postgres://otn:***@db.example:5432/otn: database "otn" does not exist; create it (CREATE DATABASE "otn") or correct DATABASE_URL')
  t.match(explainDatabaseError(Object.assign(new Error('password authentication failed for user "otn"'), { code: '28P01' }), pgAt), /refused the login: password authentication failed/)
  t.equal(explainDatabaseError(Object.assign(new Error('syntax error'), { code: '42601' }), pgAt), undefined, 'a failing migration is a bug')
  t.equal(explainDatabaseError(new TypeError('x is undefined'), pgAt), undefined)
  t.match(explainDatabaseError(Object.assign(new Error('EACCES'), { code: 'EACCES', path: '/srv/data' }), { PGLITE_DATA_DIR: '/srv/data' }),
    /^cannot use the embedded database folder \/srv\/data: EACCES on \/srv\/data; set PGLITE_DATA_DIR/)

  const at = { HOST: '127.0.0.1', PORT: 80 }
  t.equal(explainListenError(Object.assign(new Error('listen EADDRINUSE'), { code: 'EADDRINUSE' }), at), 'cannot listen on 127.0.0.1:80: port 80 is already in use by another process; stop it or set PORT to a free one')
  t.match(explainListenError(Object.assign(new Error('listen EACCES'), { code: 'EACCES' }), at), /ports below 1024 need privileges/)
  t.match(explainListenError(Object.assign(new Error('listen EADDRNOTAVAIL'), { code: 'EADDRNOTAVAIL' }), { HOST: '10.9.9.9', PORT: 3000 }), /HOST 10\.9\.9\.9 is not an address of this machine/)
  t.equal(explainListenError(new Error('other'), at), undefined)
})

t.test('the service reads .env from its working directory, says so, and warns about the missing webhook setting', async (t) => {
  const dir = t.testdir({ '.env': `API_KEYS=file-key-0123456\nPORT=0\nMETA_VERIFY_TOKEN=from-file\nPGLITE_DATA_DIR=${join(t.testdirName, 'data')}\n` })
  const proc = run('src/server.ts', { API_KEYS: 'environment-key-0123' }, dir)
  t.teardown(() => { proc.child.kill('SIGKILL') })
  const listening = await until(() => logLines(proc.stdout()).find((l) => l.docs), proc.exited)
  const lines = logLines(proc.stdout())
  const envLine = lines.find((l) => l.env_file)
  t.equal(envLine?.env_file, join(dir, '.env'))
  t.same(envLine?.variables, ['META_VERIFY_TOKEN', 'PGLITE_DATA_DIR', 'PORT'])
  t.same(envLine?.overridden_by_environment, ['API_KEYS'])
  t.equal(envLine?.msg, `read 3 variable(s) from ${join(dir, '.env')}; the environment sets API_KEYS instead`)
  const warnings = lines.filter((l) => l.level === 40)
  t.equal(warnings.length, 1, 'one warning')
  t.match(warnings[0].msg, /^webhooks will not work: META_APP_SECRET is unset/)
  t.notMatch(warnings[0].msg, /META_VERIFY_TOKEN/, 'the file set it')

  const base = String(listening.docs).replace(/\/docs$/, '')
  const asEnvironment = await fetch(`${base}/v1/pages`, { headers: { authorization: 'Bearer environment-key-0123' } })
  const asFile = await fetch(`${base}/v1/pages`, { headers: { authorization: 'Bearer file-key-0123456' } })
  t.same([asEnvironment.status, asFile.status], [200, 401], "the environment's API_KEYS, not the file's")
  proc.child.kill('SIGTERM')
  t.equal(await proc.exited, 0)
})

t.test('a port in use ends start-up with one line and exit 69', async (t) => {
  const taken = createServer().listen(0, '127.0.0.1')
  await once(taken, 'listening')
  t.teardown(() => { taken.close() })
  const port = (taken.address() as { port: number }).port
  const proc = run('src/server.ts', { API_KEYS: 'port-test-key-0123', PORT: String(port), PGLITE_DATA_DIR: join(t.testdir({}), 'data') })
  t.equal(await proc.exited, 69)
  t.equal(proc.stderr(), `otn-service: cannot listen on 127.0.0.1:${port}: port ${port} is already in use by another process; stop it or set PORT to a free one\n`)
})

t.test('a refused or missing database ends start-up with one line and exit 69, for the service and for migrate', async (t) => {
  const closed = createServer().listen(0, '127.0.0.1')
  await once(closed, 'listening')
  const port = (closed.address() as { port: number }).port
  await new Promise((resolve) => closed.close(resolve))
  const refused = `postgres://otn@127.0.0.1:${port}/otn`
  for (const entry of ['src/server.ts', 'src/cli/migrate.ts']) {
    const program = entry.endsWith('migrate.ts') ? 'otn-service migrate' : 'otn-service'
    const proc = run(entry, { API_KEYS: 'db-test-key-01234', DATABASE_URL: refused, ENCRYPTION_KEYS: TEST_ENCRYPTION_KEYS })
    t.equal(await proc.exited, 69, entry)
    t.equal(proc.stderr(), `${program}: cannot reach Postgres at ${refused}: connection refused: is it running, and listening on that host and port?\n`)
  }
  if (databaseKind === 'postgres') {
    const url = new URL(process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres')
    url.pathname = '/otn_missing_database_for_test'
    const proc = run('src/server.ts', { API_KEYS: 'db-test-key-01234', DATABASE_URL: url.toString(), ENCRYPTION_KEYS: TEST_ENCRYPTION_KEYS })
    t.equal(await proc.exited, 69)
    t.equal(proc.stderr(), `otn-service: Postgres at ${url}: database "otn_missing_database_for_test" does not exist; create it (CREATE DATABASE "otn_missing_database_for_test") or correct DATABASE_URL\n`)
  }
})

t.test('the service refuses Postgres without ENCRYPTION_KEYS: one line and exit 78; ALLOW_PLAINTEXT_SECRETS=true lets it start with a warning', async (t) => {
  const proc = run('src/server.ts', { API_KEYS: 'db-test-key-01234', DATABASE_URL: 'postgres://otn@127.0.0.1:1/otn' })
  t.equal(await proc.exited, 78)
  t.match(proc.stderr(), /^otn-service: Invalid configuration:\n {2}- ENCRYPTION_KEYS: is required with DATABASE_URL, so that Page access tokens and event signing secrets are not stored in plaintext \(set ALLOW_PLAINTEXT_SECRETS=true to start without it, for development only\)\. .*\nSee \.env\.example/)
  if (databaseKind !== 'postgres') return
  const url = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
  const name = `otn_plain_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: url })
  await admin.connect()
  await admin.query(`create database ${name}`)
  await admin.end()
  t.teardown(async () => {
    const c = new pg.Client({ connectionString: url })
    await c.connect()
    await c.query(`drop database if exists ${name} with (force)`)
    await c.end()
  })
  const at = new URL(url)
  at.pathname = `/${name}`
  const allowed = run('src/server.ts', { API_KEYS: 'db-test-key-01234', DATABASE_URL: at.toString(), ALLOW_PLAINTEXT_SECRETS: 'true', PORT: '0' })
  t.teardown(() => { if (allowed.child.exitCode === null) allowed.child.kill('SIGKILL') })
  const warned = await until(() => logLines(allowed.stdout()).find((l) => l.level === 40 && /encryption at rest is off/.test(l.msg)), allowed.exited)
  t.match(warned.msg, /ALLOW_PLAINTEXT_SECRETS=true, no ENCRYPTION_KEYS\): Page access tokens and event signing secrets are stored in plaintext; development only/)
  await until(() => logLines(allowed.stdout()).find((l) => /^listening on/.test(l.msg)), allowed.exited)
  allowed.child.kill('SIGTERM')
  await allowed.exited
})

t.test('migrate: a bad environment is one line per variable and exit 78, not a stack trace', async (t) => {
  const proc = run('src/cli/migrate.ts', { DATABASE_URL: 'mysql://nope', DATABASE_POOL_SIZE: 'many' })
  t.equal(await proc.exited, 78)
  t.match(proc.stderr(), /^otn-service migrate: Invalid configuration:\n {2}- DATABASE_URL: .*\n {2}- DATABASE_POOL_SIZE: must be integer.*\nSee \.env\.example for every variable and its default\.\n$/)
  t.notMatch(proc.stderr(), /at .*\.ts:\d+/, 'no stack')
})

t.test("migrate creates the job queue's schema too, so instances start on a database that is ready", async (t) => {
  let env: Record<string, string>
  let cleanup = async () => {}
  if (databaseKind === 'postgres') {
    const admin = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
    const name = `otn_migrate_${randomBytes(4).toString('hex')}`
    const client = new pg.Client({ connectionString: admin })
    await client.connect()
    await client.query(`create database ${name}`)
    await client.end()
    const url = new URL(admin)
    url.pathname = `/${name}`
    env = { DATABASE_URL: url.toString() }
    cleanup = async () => {
      const c = new pg.Client({ connectionString: admin })
      await c.connect()
      await c.query(`drop database if exists ${name} with (force)`)
      await c.end()
    }
  } else {
    env = { PGLITE_DATA_DIR: join(t.testdir({}), 'data') }
  }
  t.teardown(cleanup)

  const first = run('src/cli/migrate.ts', env)
  t.equal(await first.exited, 0, first.stderr())
  t.match(first.stdout(), /^Success: \d{14}_\w+$/m)
  t.match(first.stdout(), /: \d+ migration\(s\) applied; job queue schema created at version \d+\n$/)
  const again = run('src/cli/migrate.ts', env)
  t.equal(await again.exited, 0, again.stderr())
  t.match(again.stdout(), /: migrations up to date; job queue schema up to date \(version \d+\)\n$/)

  const handle = await openDatabase({ databaseUrl: env.DATABASE_URL, pgliteDataDir: env.PGLITE_DATA_DIR })
  t.teardown(() => handle.close())
  const schemas = async () => (await sql<{ schema_name: string }>`select schema_name from information_schema.schemata where schema_name like '%boss%'`.execute(handle.db)).rows
  t.same(await schemas(), [{ schema_name: JOB_QUEUE_SCHEMA }])
  const app = await buildApp(testConfig(), { db: handle.db, dbKind: handle.kind })
  await app.close()
  t.same(await schemas(), [{ schema_name: JOB_QUEUE_SCHEMA }], "the app's job queue uses the schema migrate made")
})
