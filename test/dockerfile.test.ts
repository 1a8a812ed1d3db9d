import t from 'tap'
import { existsSync, readFileSync } from 'node:fs'

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
