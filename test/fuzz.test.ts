import t, { type Test } from 'tap'
import fc from 'fast-check'
import type { FastifyInstance } from 'fastify'
import { createEmulator } from '../src/emulator/emulator.js'
import { auth, build, uniquePageId } from './helper.js'

// Generated invalid and edge-case input for every route of the service's own OpenAPI document:
// never a 5xx, and every error is the problem shape. FUZZ_RUNS raises the count (CI runs a short form).
const runs = Number(process.env.FUZZ_RUNS ?? 25)

interface Operation { method: string, path: string, op: any }

const nasty = fc.oneof(
  fc.string(), fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.constant(''),
  fc.constant('0'), fc.constant('-1'), fc.constant('true'), fc.constant("'; drop table pages; --"),
  fc.constant('../../etc/passwd'), fc.constant('%00'), fc.constant('\u0000'), fc.constant('𝒳'.repeat(70)),
  fc.constant('x'.repeat(5000)), fc.constant('00000000-0000-4000-8000-000000000000'), fc.uuid(),
  fc.constant('123456789'), fc.constant('9'.repeat(40)), fc.constant(new Date().toISOString()),
)
const anyJson = fc.oneof(nasty, fc.array(nasty, { maxLength: 4 }), fc.dictionary(fc.string({ maxLength: 12 }), nasty, { maxKeys: 6 }))

/** A body shaped like the schema, with some fields replaced by nonsense or left out. */
function bodyFor (schema: any): fc.Arbitrary<unknown> {
  if (!schema || schema.type !== 'object' || !schema.properties) return anyJson
  const entries = Object.keys(schema.properties).map((k) => [k, fc.option(anyJson, { nil: undefined })] as const)
  return fc.oneof(
    anyJson,
    fc.record(Object.fromEntries(entries)).map((r) => Object.fromEntries(Object.entries(r).filter(([, v]) => v !== undefined))),
  )
}

function operations (doc: any): Operation[] {
  const ops: Operation[] = []
  for (const [path, item] of Object.entries(doc.paths as Record<string, any>)) {
    for (const [method, op] of Object.entries(item as Record<string, any>)) ops.push({ method: method.toUpperCase(), path, op })
  }
  return ops
}

function checkProblem (t: Test, where: string, res: { statusCode: number, headers: Record<string, unknown>, body: string }): boolean {
  if (res.statusCode >= 500) {
    t.fail(`${where} answered ${res.statusCode}: ${res.body.slice(0, 200)}`)
    return false
  }
  if (res.statusCode >= 400) {
    const body = JSON.parse(res.body)
    const ok = String(res.headers['content-type']).startsWith('application/problem+json') &&
      typeof body.code === 'string' && body.status === res.statusCode && typeof body.title === 'string' && typeof body.detail === 'string'
    if (!ok) t.fail(`${where} answered ${res.statusCode} without the problem shape: ${res.body.slice(0, 200)}`)
    return ok
  }
  return true
}


t.test('every operation survives generated invalid input', async (t) => {
  const emulator = createEmulator()
  const graph = await emulator.listen(0)
  t.teardown(() => emulator.close())
  const app: FastifyInstance = await build(t, { GRAPH_API_BASE_URL: graph, GRAPH_API_TIMEOUT_MS: '300', META_APP_SECRET: 'fuzz-secret', META_VERIFY_TOKEN: 'fuzz-verify' })
  const pageId = uniquePageId()
  emulator.addPage({ id: pageId, accessToken: 'fuzz-page-token' })
  await app.inject({ method: 'PUT', url: `/v1/pages/${pageId}`, headers: auth, payload: { name: 'Fuzz', access_token: 'fuzz-page-token' } })
  const topic = (await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Fuzz topic' } })).json()

  const doc = app.swagger() as any
  const ops = operations(doc).filter((o) => !o.path.startsWith('/docs'))
  t.ok(ops.length >= 10, `${ops.length} operations`)
  for (const { method, path, op } of ops) {
    const params: string[] = (op.parameters ?? []).filter((p: any) => p.in === 'path').map((p: any) => p.name)
    const queryNames: string[] = (op.parameters ?? []).filter((p: any) => p.in === 'query').map((p: any) => p.name)
    const bodySchema = op.requestBody?.content?.['application/json']?.schema
    const known: Record<string, string> = { pageId, id: topic.id, psid: 'fuzz-psid' }
    await fc.assert(fc.asyncProperty(
      fc.record({
        params: fc.tuple(...params.map((name) => fc.oneof(fc.constant(known[name] ?? 'x'), nasty.map(String)))),
        query: fc.dictionary(fc.constantFrom('limit', 'cursor', 'force', 'x', ...queryNames), nasty.map(String), { maxKeys: 4 }),
        body: bodyFor(bodySchema),
        rawBody: fc.option(fc.oneof(fc.constant('{"a":'), fc.constant('[1,2'), fc.string(), fc.constant('null')), { nil: undefined }),
        headers: fc.record({ 'idempotency-key': fc.option(fc.string({ maxLength: 300 }), { nil: undefined }) }),
      }),
      async ({ params: values, query, body, rawBody, headers }) => {
        let url = path
        params.forEach((name, i) => { url = url.replace(`{${name}}`, encodeURIComponent(values[i] as string)) })
        const extra = Object.fromEntries(Object.entries(headers).filter(([, v]) => v !== undefined && /^[\x21-\x7e]*$/.test(v as string)))
        const res = await app.inject({
          method: method as 'GET',
          url,
          query,
          headers: { ...auth, ...extra, ...(method !== 'GET' && method !== 'DELETE' ? { 'content-type': 'application/json' } : {}) },
          ...(method !== 'GET' && method !== 'DELETE' ? { payload: rawBody ?? JSON.stringify(body ?? null) } : {}),
        })
        return checkProblem(t, `${method} ${url.slice(0, 120)}`, res)
      },
    ), { numRuns: runs, endOnFailure: true, reporter: (out) => { if (out.failed) t.fail(`${method} ${path}: counterexample (seed ${out.seed}) ${JSON.stringify(out.counterexample).slice(0, 300)}`) } })
    t.pass(`${method} ${path}: ${runs} generated requests, no 5xx, problems well-formed`)
  }
  const { doubleSpends } = emulator
  t.same(doubleSpends(), [], 'no token accepted twice along the way')
})
