import t, { type Test } from 'tap'
import Fastify from 'fastify'
import { parseApiKeys } from '../../src/domain/access.js'
import { loggerOptions } from '../../src/logger.js'
import { v1KeyAuth } from '../../src/plugins/auth.js'
import errors from '../../src/plugins/errors.js'
import { LogCapture } from '../helper.js'

// The /v1 key check alone, on a bare Fastify: which key a request came with, by its secret only.
async function bare (t: Test, apiKeys: string, logs?: LogCapture) {
  const { keys, problems } = parseApiKeys(apiKeys)
  t.same(problems, [])
  const app = Fastify({ logger: loggerOptions('info', logs ?? new LogCapture()) as any })
  await app.register(errors)
  app.addHook('onRequest', v1KeyAuth(keys))
  app.get('/who', async (request) => {
    request.log.info('handled')
    return { name: request.apiKey?.name, pages: request.apiKey?.pages, read_only: request.apiKey?.readOnly }
  })
  t.teardown(() => app.close())
  return app
}

t.test('each secret is recognised as its own key, names and scopes with it; anything else is a 401', async (t) => {
  const app = await bare(t, 'bare-secret-1,shop:shop-secret-22:pages=10+11,shop-long:shop-secret-22x:read-only')
  const who = async (authorization?: string) => {
    const res = await app.inject({ url: '/who', headers: authorization ? { authorization } : {} })
    return [res.statusCode, res.json()]
  }
  t.same(await who('Bearer bare-secret-1'), [200, { name: 'key-1', pages: null, read_only: false }])
  t.same(await who('Bearer shop-secret-22'), [200, { name: 'shop', pages: ['10', '11'], read_only: false }])
  t.same(await who('bearer shop-secret-22x '), [200, { name: 'shop-long', pages: null, read_only: true }], 'a secret that extends another is its own key')
  t.match(await who('Bearer shop:shop-secret-22'), [401, { code: 'unauthorized', detail: 'The API key is not valid.' }], 'the entry is not the secret')
  t.match(await who('Bearer shop'), [401, { code: 'unauthorized' }], 'nor is the name')
  t.match(await who('Bearer shop-secret-2'), [401, { code: 'unauthorized' }])
  t.match(await who(), [401, { code: 'unauthorized', detail: /Authorization: Bearer/ }])
})

t.test('every log line of a request names its key; no secret is written', async (t) => {
  const logs = new LogCapture()
  const app = await bare(t, 'shop:shop-secret-22:pages=10', logs)
  await app.inject({ url: '/who', headers: { authorization: 'Bearer shop-secret-22' } })
  const handled = logs.lines.find((l) => l.msg === 'handled')
  t.equal(handled?.key_name, 'shop')
  t.notOk(logs.text.includes('shop-secret-22'))
})
