import t from 'tap'
import { sql } from 'kysely'
import { appOnOwnDatabase, auth, build, LogCapture, testDatabase, uniquePageId } from './helper.js'

t.test('health is open; readiness checks the database and migrations', async (t) => {
  const app = await build(t)
  const health = await app.inject({ url: '/healthz' })
  t.same(health.json(), { status: 'ok' })
  const ready = await app.inject({ url: '/readyz' })
  t.equal(ready.statusCode, 200)
  t.same(ready.json(), { status: 'ready', database: (await testDatabase()).kind })
  t.match(ready.headers['x-request-id'], /^\S+$/, 'every answer names its request id')
  const echoed = await app.inject({ url: '/healthz', headers: { 'x-request-id': 'caller-id-1' } })
  t.equal(echoed.headers['x-request-id'], 'caller-id-1', "the caller's request id is kept")
})

t.test('readiness is 503 while a migration is not applied', async (t) => {
  const app = await build(t)
  const { db } = await testDatabase()
  const rows = await sql<{ name: string, timestamp: string }>`select name, timestamp from kysely_migration`.execute(db)
  await sql`delete from kysely_migration`.execute(db)
  t.teardown(async () => {
    for (const r of rows.rows) await sql`insert into kysely_migration (name, timestamp) values (${r.name}, ${r.timestamp})`.execute(db)
  })
  const res = await app.inject({ url: '/readyz' })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'migrations_pending')
  t.match(res.json().detail, /20261121000000_create_core_tables/)
})

t.test('readiness is 503 and /v1 answers 503 when the database is gone', async (t) => {
  // The HTTP answers are under test here, not pg-boss's own writes: goAway stops its workers first.
  const { app, goAway } = await appOnOwnDatabase(t)
  await goAway()
  const ready = await app.inject({ url: '/readyz' })
  t.equal(ready.statusCode, 503)
  t.equal(ready.json().code, 'database_unavailable')
  const v1 = await app.inject({ url: `/v1/pages/${uniquePageId()}`, headers: auth })
  t.ok(v1.statusCode >= 500, `got ${v1.statusCode}`)
  t.notMatch(v1.body, /stack|at .*\.js/, 'no internals leak')
})

t.test('every /v1 route requires a valid bearer key; health and docs are open', async (t) => {
  const app = await build(t)
  const none = await app.inject({ url: '/v1/topics' })
  t.equal(none.statusCode, 401)
  t.equal(none.headers['www-authenticate'], 'Bearer')
  t.match(none.json(), { status: 401, code: 'unauthorized', type: /problems\/unauthorized$/ })
  const wrong = await app.inject({ url: '/v1/topics', headers: { authorization: 'Bearer not-the-key-at-all' } })
  t.equal(wrong.json().code, 'unauthorized')
  t.equal(wrong.json().detail, 'The API key is not valid.')
  const basic = await app.inject({ url: '/v1/topics', headers: { authorization: 'Basic dXNlcjpwYXNz' } })
  t.equal(basic.statusCode, 401)
  const second = await app.inject({ url: '/v1/topics', headers: { authorization: 'Bearer second-key-abcdefgh' } })
  t.equal(second.statusCode, 200, 'any key of API_KEYS works, so keys can be rotated')
  t.equal((await app.inject({ url: '/openapi.json' })).statusCode, 200)
  const docs = await app.inject({ url: '/docs/' })
  t.equal(docs.statusCode, 200)
  t.match(docs.headers['content-type'], /text\/html/)
  t.match(docs.body, /swagger/i)
})

t.test('errors are problem+json with stable codes', async (t) => {
  const app = await build(t, { BODY_LIMIT_BYTES: '2048' })
  app.get('/boom', async () => { throw new Error('secret internal detail: password=hunter2') })

  const unknown = await app.inject({ url: '/nope?x=1' })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.headers['content-type'], 'application/problem+json; charset=utf-8')
  t.same(unknown.json(), { type: 'https://otn.invalid/problems/route_not_found', title: 'Not Found', status: 404, detail: 'No route GET /nope.', code: 'route_not_found' })

  const malformed = await app.inject({ method: 'POST', url: '/v1/topics', headers: { ...auth, 'content-type': 'application/json' }, payload: '{"page_id": ' })
  t.equal(malformed.statusCode, 400)
  t.equal(malformed.json().code, 'invalid_json')

  const big = await app.inject({ method: 'POST', url: '/v1/topics', headers: { ...auth, 'content-type': 'application/json' }, payload: JSON.stringify({ name: 'x'.repeat(5000) }) })
  t.equal(big.statusCode, 413)
  t.equal(big.json().code, 'body_too_large')

  const media = await app.inject({ method: 'POST', url: '/v1/topics', headers: { ...auth, 'content-type': 'text/csv' }, payload: 'a,b' })
  t.equal(media.statusCode, 415)
  t.equal(media.json().code, 'unsupported_media_type')

  const invalid = await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: 'abc', name: 5 } })
  t.equal(invalid.statusCode, 400)
  const body = invalid.json()
  t.equal(body.code, 'validation_failed')
  t.same(body.errors.map((e: { field: string }) => e.field).sort(), ['body/name', 'body/page_id'])

  const badUuid = await app.inject({ url: '/v1/topics/not-a-uuid', headers: auth })
  t.equal(badUuid.statusCode, 400)
  t.match(badUuid.json().errors, [{ field: 'params/id' }])

  const boom = await app.inject({ url: '/boom' })
  t.equal(boom.statusCode, 500)
  t.same(boom.json(), { type: 'https://otn.invalid/problems/internal_error', title: 'Internal Server Error', status: 500, detail: 'Something went wrong on our side; it has been logged.', code: 'internal_error' })
})

t.test('logs are JSON with request ids, and redact authorization and secret query parameters', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, { LOG_LEVEL: 'info' }, { logStream: logs })
  const res = await app.inject({ url: '/v1/topics?access_token=EAAleaked', headers: { ...auth, 'x-request-id': 'req-123' } })
  t.equal(res.headers['x-request-id'], 'req-123')
  const line = logs.lines.find((l) => l.msg === 'request') as { reqId: string, url: string }
  t.equal(line.reqId, 'req-123')
  t.equal(line.url, '/v1/topics?access_token=[Redacted]')
  t.notOk(logs.text.includes('EAAleaked'))
  t.notOk(logs.text.includes('test-api-key'))
  // A deliberate log of a secret-bearing object is redacted by path.
  app.log.info({ page: { access_token: 'EAAobject' }, token: 'raw-token' }, 'probe')
  const probe = logs.lines.find((l) => l.msg === 'probe') as { page: { access_token: string }, token: string }
  t.same(probe.page, { access_token: '[Redacted]' })
  t.equal(probe.token, '[Redacted]')
})

t.test('closing the app finishes in-flight requests, then refuses new ones', async (t) => {
  const app = await build(t)
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  let entered!: () => void
  const inside = new Promise<void>((resolve) => { entered = resolve })
  app.get('/slow', async () => { entered(); await gate; return { done: true } })
  const address = await app.listen({ host: '127.0.0.1', port: 0 })
  const inFlight = fetch(`${address}/slow`).then(async (r) => ({ status: r.status, body: await r.json() }))
  await inside
  const closing = app.close()
  release()
  const answer = await inFlight
  t.same(answer, { status: 200, body: { done: true } })
  await closing
  await t.rejects(fetch(`${address}/healthz`), 'no longer accepting connections')
})

t.test('same schema and queries on both databases: the claim index exists', async (t) => {
  const { db } = await testDatabase()
  const rows = await sql<{ indexname: string }>`select indexname from pg_indexes where tablename = 'optin_tokens' order by 1`.execute(db)
  t.ok(rows.rows.map((r) => r.indexname).includes('optin_tokens_usable_idx'))
})

t.test('text Postgres refuses (a NUL character) is a 400, not a 500', async (t) => {
  const app = await build(t)
  const res = await app.inject({ url: '/v1/topics?name=%00', headers: auth })
  t.equal(res.statusCode, 400)
  t.equal(res.json().code, 'invalid_characters')
  const body = await app.inject({ method: 'PUT', url: `/v1/pages/${uniquePageId()}`, headers: auth, payload: { name: 'a\u0000b' } })
  t.equal(body.statusCode, 400)
  t.equal(body.json().code, 'invalid_characters')
})

t.test('JSON nested thousands of levels deep is a 400 body_too_deep before anything walks it (#24.5)', async (t) => {
  const app = await build(t)
  const pageId = uniquePageId()
  await app.inject({ method: 'PUT', url: `/v1/pages/${pageId}`, headers: auth, payload: { name: 'Deep' } })
  const topic = (await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'deep' } })).json()
  const nested = (depth: number) => '['.repeat(depth) + ']'.repeat(depth)
  const send = (payload: string) => app.inject({
    method: 'POST', url: '/v1/notifications', headers: { ...auth, 'content-type': 'application/json' }, payload,
  })
  const deep = await send(`{"topic_id":"${topic.id}","psid":"4242","message":{"attachment":{"type":"template","payload":{"x":${nested(5000)}}}}}`)
  t.equal(deep.statusCode, 400, deep.body)
  t.same(deep.json(), {
    type: 'https://otn.invalid/problems/body_too_deep', title: 'Bad Request', status: 400, code: 'body_too_deep',
    detail: 'The JSON body is nested deeper than 32 levels of objects and arrays.',
  })
  // The limit counts objects and arrays, not brackets inside strings; 32 levels pass to validation.
  const limit = await app.inject({ method: 'POST', url: '/v1/topics', headers: { ...auth, 'content-type': 'application/json' }, payload: `{"x":${nested(31)}}` })
  t.equal(limit.json().code, 'validation_failed', 'at the limit: parsed, then validated')
  const over = await app.inject({ method: 'POST', url: '/v1/topics', headers: { ...auth, 'content-type': 'application/json' }, payload: `{"x":${nested(32)}}` })
  t.equal(over.json().code, 'body_too_deep')
  const text = await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: `${'['.repeat(60)}"\\{` } })
  t.equal(text.statusCode, 201, 'brackets and escapes inside a string are text')

  const shallow = await build(t, { BODY_MAX_DEPTH: '3' })
  const three = await shallow.inject({ method: 'POST', url: '/v1/topics', headers: { ...auth, 'content-type': 'application/json' }, payload: '{"a":{"b":[1]}}' })
  t.equal(three.json().code, 'validation_failed')
  const four = await shallow.inject({ method: 'POST', url: '/v1/topics', headers: { ...auth, 'content-type': 'application/json' }, payload: '{"a":{"b":[[1]]}}' })
  t.equal(four.json().code, 'body_too_deep')
  t.match(four.json().detail, /deeper than 3 levels/)
})

t.test('a cursor holding an out-of-range date or a foreign id is a 400 invalid_cursor (#24.5)', async (t) => {
  const app = await build(t)
  const cursor = (at: unknown, id: unknown) => Buffer.from(JSON.stringify([at, id])).toString('base64url')
  const uuid = '00000000-0000-4000-8000-000000000000'
  const forged = [
    ['/v1/topics', cursor('+275760-09-13T00:00:00.000Z', uuid)],
    ['/v1/notifications', cursor('-000001-01-01T00:00:00.000Z', uuid)],
    ['/v1/broadcasts', cursor('10000-01-01T00:00:00.000Z', uuid)],
    ['/v1/pages', cursor('0001-01-01T00:00:00.000Z', '1')],
    ['/v1/pages', cursor('2026-01-01', '1')],
    ['/v1/topics', cursor('2026-01-01T00:00:00.000Z', 'not-a-uuid')],
    ['/v1/pages', cursor('2026-01-01T00:00:00.000Z', uuid)],
    ['/v1/topics', cursor(1767225600000, uuid)],
    ['/v1/topics', Buffer.from('[').toString('base64url')],
  ]
  for (const [path, c] of forged) {
    const res = await app.inject({ url: `${path}?cursor=${c}`, headers: auth })
    t.equal(res.statusCode, 400, `${path} ${Buffer.from(c, 'base64url').toString()}: ${res.body}`)
    t.equal(res.json().code, 'invalid_cursor')
  }
  const fine = await app.inject({ url: `/v1/topics?cursor=${cursor('2026-01-01T00:00:00.000Z', uuid)}`, headers: auth })
  t.equal(fine.statusCode, 200, 'a cursor of the form handed out is read')
})

t.test('a validation answer lists a bounded number of errors (#24.5)', async (t) => {
  const app = await build(t)
  const body = Object.fromEntries(Array.from({ length: 90_000 }, (_, i) => [`u${i}`, 1]))
  const payload = JSON.stringify(body)
  t.ok(payload.length < 1_048_576, `a body under BODY_LIMIT_BYTES (${payload.length} bytes)`)
  const res = await app.inject({ method: 'POST', url: '/v1/topics', headers: { ...auth, 'content-type': 'application/json' }, payload })
  t.equal(res.statusCode, 400)
  const problem = res.json()
  t.equal(problem.code, 'validation_failed')
  t.equal(problem.errors.length, 20)
  t.match(problem.detail, /; and \d+ more$/)
  const more = Number(/and (\d+) more$/.exec(problem.detail)![1])
  t.ok(more >= 89_980, `the rest are counted (${more})`)
  t.ok(res.body.length < 5000, `a small answer (${res.body.length} bytes)`)
})

t.test('without a key an unknown /v1 path is 401, like every /v1 path; with one it is 404 (#24.8)', async (t) => {
  const app = await build(t)
  for (const [method, url] of [['GET', '/v1/nope'], ['GET', '/v1/admin/users'], ['POST', '/v1/'], ['GET', '/v1'], ['DELETE', '/v1/topics']] as const) {
    const none = await app.inject({ method, url })
    t.equal(none.statusCode, 401, `${method} ${url}`)
    t.equal(none.json().code, 'unauthorized')
    t.equal(none.headers['www-authenticate'], 'Bearer')
    const wrong = await app.inject({ method, url, headers: { authorization: 'Bearer not-the-key-at-all' } })
    t.equal(wrong.statusCode, 401)
  }
  const known = await app.inject({ url: '/v1/nope', headers: auth })
  t.equal(known.statusCode, 404)
  t.same(known.json(), { type: 'https://otn.invalid/problems/route_not_found', title: 'Not Found', status: 404, detail: 'No route GET /v1/nope.', code: 'route_not_found' })
  t.equal((await app.inject({ url: '/nope' })).statusCode, 404, 'outside /v1 an unknown path is still a 404')
})
