import t from 'tap'
import { startServiceProcess } from './fixtures/service-process.js'
import { once } from 'node:events'

// The real entry point as a process: start-up log lines, data kept across restarts, graceful stop.
const start = (env: Record<string, string>) => startServiceProcess({ API_KEYS: 'server-test-key', ...env })

t.test('npm start on the embedded database: says where data and docs are, keeps data, stops gracefully', async (t) => {
  const dir = t.testdir({})
  const first = start({ PGLITE_DATA_DIR: dir })
  const base = await first.listening
  const messages = first.lines.map((l) => String(l.msg))
  t.ok(messages.findIndex((m) => m.startsWith('database: pglite at ')) === 0, 'the first line says where the data lives')
  t.ok(messages.some((m) => /^listening on http:\/\/127\.0\.0\.1:\d+; API docs at http:\/\/127\.0\.0\.1:\d+\/docs$/.test(m)), messages.join('\n'))
  t.equal(first.lines.find((l) => l.database)?.location, dir)
  const put = await fetch(`${base}/v1/pages/777`, {
    method: 'PUT',
    headers: { authorization: 'Bearer server-test-key', 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'Kept', access_token: 'tok' }),
  })
  t.equal(put.status, 201)
  first.child.kill('SIGTERM')
  const [code] = await once(first.child, 'exit')
  t.equal(code, 0, 'exits cleanly on SIGTERM')
  t.ok(first.lines.some((l) => l.msg === 'shutting down: finishing in-flight requests' && l.signal === 'SIGTERM'))

  const second = start({ PGLITE_DATA_DIR: dir })
  const base2 = await second.listening
  const got = await fetch(`${base2}/v1/pages/777`, { headers: { authorization: 'Bearer server-test-key' } })
  t.match(await got.json(), { id: '777', name: 'Kept', has_access_token: true })
  second.child.kill('SIGINT')
  const [code2] = await once(second.child, 'exit')
  t.equal(code2, 0, 'exits cleanly on SIGINT')
})

t.test('a bad environment stops start-up with one line per problem', async (t) => {
  const proc = start({ PORT: 'x', API_KEYS: '' })
  await t.rejects(proc.listening)
  t.equal(proc.child.exitCode, 78)
  t.match(proc.stderr(), /PORT: must be integer/)
  t.match(proc.stderr(), /API_KEYS: is required/)
})
