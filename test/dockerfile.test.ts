import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, readFileSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { build } from './helper.js'

// No Docker engine runs here, so the Dockerfile is checked by construction; CI runs `npm run build`.
const root = new URL('..', import.meta.url).pathname
const dockerfile = readFileSync(`${root}Dockerfile`, 'utf8')

t.test('multi-stage, production dependencies only, non-root, health-checked, listening on 0.0.0.0', async (t) => {
  t.equal(dockerfile.match(/^FROM /gm)?.length, 2)
  t.match(dockerfile, /^RUN npm ci --omit=dev/m)
  t.match(dockerfile, /^USER node$/m)
  t.match(dockerfile, /^HEALTHCHECK .*\n.*\/healthz/m)
  t.match(dockerfile, /HOST=0\.0\.0\.0/)
  t.match(dockerfile, /^CMD \["node", "dist\/src\/server\.js"\]$/m)
})

t.test('everything it copies from the context exists, and the entry point is what the build writes', async (t) => {
  for (const [, sources] of dockerfile.matchAll(/^COPY (?!--from)(.+) \S+$/gm)) {
    for (const source of sources.split(/\s+/)) t.ok(existsSync(`${root}${source}`), source)
  }
  const build = JSON.parse(readFileSync(`${root}tsconfig.build.json`, 'utf8'))
  t.ok(build.include.includes('src') && build.include.includes('migrations'))
  t.ok(existsSync(`${root}src/server.ts`))
})

t.test('an LTS Node pinned to a release, the versions tested named, tini as PID 1, the migrate command documented', async (t) => {
  const pin = /^ARG NODE_VERSION=(\d+)\.(\d+)\.(\d+)$/m.exec(dockerfile)
  t.ok(pin, 'a full release, not a moving tag')
  t.equal(Number(pin![1]) % 2, 0, 'an even major: an LTS line')
  t.equal(dockerfile.match(/^FROM node:\$\{NODE_VERSION\}-slim AS \w+$/gm)?.length, 2, 'both stages on the pin')
  t.match(dockerfile, new RegExp(`# .*Tested: .*Node\\.js 20 (.*\\n# )*.*${pin![1]}\\.${pin![2]}\\.${pin![3]}`), 'says which versions are tested')
  t.match(dockerfile, /apt-get install -y --no-install-recommends tini/)
  t.match(dockerfile, /^ENTRYPOINT \["tini", "--"\]$/m)
  t.match(dockerfile, /^# .*docker run --rm -e DATABASE_URL=\S+ otn-service node dist\/src\/cli\/migrate\.js$/m)
  t.ok(existsSync(`${root}src/cli/migrate.ts`), 'the documented migrate command is what the build writes')
  t.match(dockerfile, /npm ci .*--ignore-scripts/, 'no prepare build before the sources are copied')
})

/** The HEALTHCHECK's command, run as Docker would: exec form, [program, ...args]. */
function healthcheck (): string[] {
  const m = /^HEALTHCHECK .*\\\n\s+CMD (\[.*\])$/m.exec(dockerfile)
  return JSON.parse(m![1])
}

t.test('the health check starts no Node process and tells a healthy service from a sick or absent one', async (t) => {
  const [program, ...args] = healthcheck()
  t.not(program, 'node')
  t.notMatch(args.join(' '), /\bnode\b/)
  const run = (port: number) => new Promise<number | null>((resolve) => {
    spawn(program, args, { env: { PATH: process.env.PATH ?? '', PORT: String(port) }, stdio: 'ignore' }).on('exit', resolve)
  })
  const serve = async (status: number) => {
    const server = createServer((_req, res) => { res.writeHead(status, { 'content-type': 'application/json' }).end('{"status":"ok"}') })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    return server
  }
  const healthy = await serve(200)
  const sick = await serve(503)
  t.teardown(() => { healthy.close(); sick.close() })
  t.equal(await run((healthy.address() as AddressInfo).port), 0, 'a 200 from /healthz: healthy')
  t.not(await run((sick.address() as AddressInfo).port), 0, 'a 503: unhealthy')
  const gone = await serve(200)
  const port = (gone.address() as AddressInfo).port
  await new Promise((resolve) => gone.close(resolve))
  t.not(await run(port), 0, 'nothing listening: unhealthy')
})

t.test("the health check against the service's own /healthz", async (t) => {
  const app = await build(t)
  await app.listen({ host: '127.0.0.1', port: 0 })
  const [program, ...args] = healthcheck()
  const code = await new Promise<number | null>((resolve) => {
    spawn(program, args, { env: { PATH: process.env.PATH ?? '', PORT: String((app.server.address() as AddressInfo).port) }, stdio: 'ignore' }).on('exit', resolve)
  })
  t.equal(code, 0)
})
