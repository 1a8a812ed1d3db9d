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
