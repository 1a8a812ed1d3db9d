import t from 'tap'
import { readFileSync } from 'node:fs'
import { openApiDocument } from '../src/openapi.js'

t.test('the committed openapi/openapi.json is what the code generates (npm run openapi rewrites it)', async (t) => {
  const generated = await openApiDocument()
  const committed = readFileSync(new URL('../openapi/openapi.json', import.meta.url), 'utf8')
  t.equal(committed, generated, 'run `npm run openapi` and commit the result')
})

t.test('every operation has an operationId, summary, tags and declared responses', async (t) => {
  const doc = JSON.parse(await openApiDocument())
  const ids = new Set<string>()
  for (const [path, item] of Object.entries(doc.paths as Record<string, Record<string, any>>)) {
    for (const [method, op] of Object.entries(item)) {
      const where = `${method.toUpperCase()} ${path}`
      t.type(op.operationId, 'string', `${where} operationId`)
      t.notOk(ids.has(op.operationId), `${where} operationId is unique`)
      ids.add(op.operationId)
      t.ok(op.summary, `${where} summary`)
      t.ok(op.tags?.length, `${where} tags`)
      t.ok(Object.keys(op.responses ?? {}).length > 0, `${where} responses`)
      if (path.startsWith('/v1/')) {
        t.ok(op.responses['401'], `${where} declares 401`)
        t.same(op.security, [{ apiKey: [] }], `${where} security`)
      }
    }
  }
  t.ok(ids.has('createTopic') && ids.has('putPage') && ids.has('readyz'))
})

t.test('the committed contract passes Redocly\'s recommended rules without a warning (redocly.yaml)', async (t) => {
  const { execFile } = await import('node:child_process')
  const root = new URL('..', import.meta.url).pathname
  const out = await new Promise<{ code: number | null, text: string }>((resolve) => {
    execFile(process.execPath, [`${root}node_modules/@redocly/cli/bin/cli.js`, 'lint', '--format=stylish'], {
      cwd: root, env: { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true' },
    }, (error, stdout, stderr) => resolve({ code: error ? (error as { code?: number }).code ?? 1 : 0, text: `${stdout}${stderr}` }))
  })
  t.equal(out.code, 0, out.text)
  t.notMatch(out.text, /You have \d+ warnings?/, 'no warnings')
})

t.test('error responses are problems listing the codes the operation can answer; open routes need no key', async (t) => {
  const doc = JSON.parse(await openApiDocument())
  const send = doc.paths['/v1/notifications'].post.responses
  t.same(send['429'].content['application/problem+json'].schema.allOf[1].properties.code.enum, ['graph_frequency_limited', 'graph_rate_limited', 'recurring_cooldown'])
  t.ok(send['429'].headers['Retry-After'] && send['201'].headers['Idempotent-Replayed'] && send['201'].headers['X-Request-Id'])
  t.same(send['201'].content['application/json'].schema, { $ref: '#/components/schemas/Notification' })
  t.same(doc.paths['/healthz'].get.security, [])
  t.same(doc.paths['/webhooks/messenger'].post.security, [])
  t.ok(doc.paths['/v1/topics'].get.responses['500'] && doc.paths['/v1/topics'].get.responses['503'], '500 and 503 on every operation')
  t.equal(doc.paths['/v1/topics'].get.parameters.find((p: { name: string }) => p.name === 'limit').required, false)
  t.ok(doc.info.license && doc.servers.length > 0)
})
