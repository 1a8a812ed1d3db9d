import { execFile } from 'node:child_process'
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { createServer, type AddressInfo } from 'node:net'
import t from 'tap'
import openapiTS, { astToString } from 'openapi-typescript'
import { createEmulator } from '../src/emulator/emulator.js'
import { API_KEY, build } from './helper.js'
import { APP_SECRET, graphEnv } from './fixtures/otn.js'

const exec = promisify(execFile)
const root = new URL('..', import.meta.url).pathname

t.test('a client generated from the contract type-checks with --strict and drives a whole flow', async (t) => {
  // The generated types, from the committed contract, beside a copy of the flow.
  const dir = t.testdir({ 'package.json': JSON.stringify({ type: 'module' }) })
  const spec = JSON.parse(readFileSync(join(root, 'openapi/openapi.json'), 'utf8'))
  writeFileSync(join(dir, 'schema.d.ts'), astToString(await openapiTS(spec)))
  copyFileSync(join(root, 'test/fixtures/client/flow.ts'), join(dir, 'flow.ts'))
  const flowSource = readFileSync(join(dir, 'flow.ts'), 'utf8').replace(/\/\/.*$/gm, '') // its code, not its comments
  t.notMatch(flowSource, /\bas\s+(?!const\b)[A-Za-z{[]|@ts-expect-error|@ts-ignore|<any>/, 'no casts, no suppressed errors')

  const tsc = join(root, 'node_modules/typescript/bin/tsc')
  const check = await exec(process.execPath, [tsc, '--noEmit', '--strict', '--exactOptionalPropertyTypes', '--noUncheckedIndexedAccess',
    '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--skipLibCheck', '--types', 'node', '--typeRoots', join(root, 'node_modules/@types'),
    join(dir, 'flow.ts')], { cwd: dir }).catch((error: { stdout?: string, stderr?: string }) => error)
  t.equal('stdout' in check ? check.stdout : '', '', 'tsc --strict: no errors')

  // The flow, against the service (listening, so that the emulator's webhooks reach it) and the emulator.
  const port = await new Promise<number>((resolve) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as AddressInfo
      probe.close(() => resolve(port))
    })
  })
  const emulator = createEmulator({ appSecret: APP_SECRET, webhookUrl: `http://127.0.0.1:${port}/webhooks/messenger` })
  const emulatorUrl = await emulator.listen(0)
  t.teardown(() => emulator.close())
  const app = await build(t, { ...graphEnv(emulatorUrl), META_VERIFY_TOKEN: 'client-verify' })
  const address = await app.listen({ host: '127.0.0.1', port })
  const pageId = String(900000 + Math.floor(Math.random() * 1e6))
  emulator.addPage({ id: pageId, accessToken: 'EAA-client-flow' })

  // Type-checked above, against the generated types; imported here as any module.
  const { flow } = await import(join(dir, 'flow.ts')) as { flow: (...args: string[]) => Promise<Record<string, unknown>> }
  const result = await flow(address, emulatorUrl, API_KEY, pageId, 'EAA-client-flow')
  t.same(result, {
    page: pageId, usableAfterOptin: 1, windowRoute: 'window', tokenRoute: 'token', tokenState: 'used',
    secondTokenCode: 'no_token', broadcastState: 'cancelled', deleted: true, pageDeleted: 204,
  })
  t.same(emulator.doubleSpends(), [])
})
