import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { buildApp } from '../src/app.js'
import { maskUrl } from '../src/logger.js'
import { auth, build, databaseKind, LogCapture, testConfig, testDatabase } from './helper.js'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

t.test('one line per request at info: method, url, route, status, duration and request id (#28.7)', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, { LOG_LEVEL: 'info' }, { logStream: logs })
  await app.ready()
  const before = logs.lines.length
  const res = await app.inject({ url: '/v1/topics?limit=5', headers: auth })
  t.equal(res.statusCode, 200)
  const lines = logs.lines.slice(before)
  t.equal(lines.length, 1, `one line (${lines.map((l) => l.msg).join(', ')})`)
  t.match(lines[0], {
    level: 30, msg: 'request', reqId: res.headers['x-request-id'],
    method: 'GET', url: '/v1/topics?limit=5', route: '/v1/topics', status: 200, duration_ms: Number, remote_address: '127.0.0.1',
  })
  const missing = await app.inject({ url: '/v1/topics/00000000-0000-4000-8000-000000000000', headers: auth })
  t.match(logs.lines.at(-1), { msg: 'request', route: '/v1/topics/:id', status: 404, reqId: missing.headers['x-request-id'] })
  await app.inject({ url: '/nowhere' })
  t.match(logs.lines.at(-1), { msg: 'request', route: 'unmatched', status: 404 })
  t.notOk(logs.lines.some((l) => l.msg === 'incoming request' || l.msg === 'request completed'), "Fastify's two lines are gone")
})

t.test('health, readiness and metrics scrapes are logged at debug, not info (#28.7)', async (t) => {
  const quiet = new LogCapture()
  const app = await build(t, { LOG_LEVEL: 'info' }, { logStream: quiet })
  await app.ready()
  const before = quiet.lines.length
  for (const url of ['/healthz', '/readyz', '/metrics']) t.equal((await app.inject({ url })).statusCode, 200, url)
  t.same(quiet.lines.slice(before), [], 'nothing at info')

  const verbose = new LogCapture()
  const debug = await build(t, { LOG_LEVEL: 'debug' }, { logStream: verbose })
  await debug.ready()
  for (const url of ['/healthz', '/readyz', '/metrics']) await debug.inject({ url })
  t.same(verbose.lines.filter((l) => l.msg === 'request').map((l) => [l.level, l.route]), [[20, '/healthz'], [20, '/readyz'], [20, '/metrics']])
})

t.test("a caller's X-Request-Id is used when short and safe; otherwise a UUID (#24.7, #28.7)", async (t) => {
  const logs = new LogCapture()
  const app = await build(t, { LOG_LEVEL: 'info' }, { logStream: logs })
  const idOf = async (headers: Record<string, string>) => (await app.inject({ url: '/v1/topics', headers: { ...auth, ...headers } })).headers['x-request-id']
  t.equal(await idOf({ 'x-request-id': 'caller-id.1:2_3' }), 'caller-id.1:2_3')
  t.equal(await idOf({ 'x-request-id': 'a'.repeat(64) }), 'a'.repeat(64))
  for (const bad of ['a'.repeat(65), 'has space', '<script>alert(1)</script>', 'line\tbreak', '{"json":1}', 'é']) {
    const id = await idOf({ 'x-request-id': bad })
    t.match(id, UUID, `${JSON.stringify(bad).slice(0, 20)} is replaced`)
  }
  t.notOk(logs.text.includes('<script>'), 'a refused id is not logged')
  const made = new Set<unknown>()
  for (let i = 0; i < 20; i++) made.add(await idOf({}))
  t.equal(made.size, 20)
  for (const id of made) t.match(id, UUID, 'a new id is a UUID, unique across instances')
})

t.test('every secret-looking URL parameter is masked in logs (#24.7)', async (t) => {
  t.equal(maskUrl('postgres://otn:hunter2@db:5432/otn?sslmode=require&password=p4ss&sslpassword=k3y&application_name=otn'),
    'postgres://otn:***@db:5432/otn?sslmode=require&password=[Redacted]&sslpassword=[Redacted]&application_name=otn')
  t.equal(maskUrl('/v1/topics?api_key=K&limit=5&access_token=T&hub.verify_token=V&appsecret_proof=P&client_secret=S&x=1'),
    '/v1/topics?api_key=[Redacted]&limit=5&access_token=[Redacted]&hub.verify_token=[Redacted]&appsecret_proof=[Redacted]&client_secret=[Redacted]&x=1')
  t.equal(maskUrl('connect to postgres://u:pw@h/db failed'), 'connect to postgres://u:***@h/db failed', 'in free text too')
  t.equal(maskUrl('/v1/pages/123?limit=2'), '/v1/pages/123?limit=2', 'nothing else changes')

  const logs = new LogCapture()
  const app = await build(t, { LOG_LEVEL: 'info' }, { logStream: logs })
  await app.inject({ url: '/v1/topics?api_key=ClientLeakedKey1&apikey=ClientLeakedKey2&password=ClientLeakedPw', headers: auth })
  await app.inject({ url: '/nope?sig=ClientLeakedSig' })
  t.match(logs.lines.find((l) => l.route === '/v1/topics'), { url: '/v1/topics?api_key=[Redacted]&apikey=[Redacted]&password=[Redacted]' })
  for (const secret of ['ClientLeakedKey1', 'ClientLeakedKey2', 'ClientLeakedPw', 'ClientLeakedSig']) t.notOk(logs.text.includes(secret), secret)
})

t.test("the start-up line masks DATABASE_URL's password, in the authority and the query (#24.7)", { skip: databaseKind !== 'postgres' && 'needs a Postgres server (TEST_DATABASE=postgres)' }, async (t) => {
  const { url } = await testDatabase()
  const withSecrets = new URL(url!)
  withSecrets.username = 'postgres'
  withSecrets.password = 'AuthorityPw'
  withSecrets.search = '?password=QueryPw&sslpassword=SslKeyPw&application_name=otn-test'
  const logs = new LogCapture()
  const app = await buildApp(testConfig({ DATABASE_URL: withSecrets.toString(), LOG_LEVEL: 'info' }), { logStream: logs })
  t.teardown(() => app.close())
  const line = logs.lines.find((l) => l.database === 'postgres') as { location: string, msg: string }
  t.match(line.location, /^postgres:\/\/postgres:\*\*\*@127\.0\.0\.1:5432\/otn_test_\w+\?password=\[Redacted\]&sslpassword=\[Redacted\]&application_name=otn-test$/)
  t.equal(line.msg, `database: postgres at ${line.location}`)
  for (const secret of ['AuthorityPw', 'QueryPw', 'SslKeyPw']) t.notOk(logs.text.includes(secret), secret)
})

t.test('the process logs a last line once it has closed (#28.7)', async (t) => {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    cwd: new URL('..', import.meta.url).pathname,
    env: { PATH: process.env.PATH ?? '', API_KEYS: 'logging-test-key', PORT: '0', LOG_LEVEL: 'info', PGLITE_DATA_DIR: 'memory://' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  child.stdout.on('data', (chunk) => { out += chunk })
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', () => { if (out.includes('API docs at')) resolve() })
    child.on('exit', (code) => reject(new Error(`exited ${code}`)))
  })
  child.kill('SIGTERM')
  const [code] = await once(child, 'exit')
  t.equal(code, 0)
  const lines = out.trim().split('\n').map((l) => JSON.parse(l) as { msg: string, level: number })
  t.match(lines.at(-1), { level: 30, msg: /^closed/ }, 'the last line says the process has closed')
  t.ok(lines.findIndex((l) => l.msg.startsWith('shutting down')) < lines.length - 1)
})
