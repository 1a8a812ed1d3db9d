import t from 'tap'
import { readFileSync } from 'node:fs'

// Build once: `npm install` compiles, `npm start` runs what was built (scripts/start-time.mjs
// measures it), and each script that runs built code first brings dist/ up to date, incrementally.
const root = new URL('..', import.meta.url).pathname
const pkg = JSON.parse(readFileSync(`${root}package.json`, 'utf8'))
const scripts: Record<string, string> = pkg.scripts

t.test('npm start runs the built service; npm install builds; dev watches the sources', async (t) => {
  t.equal(scripts.start, 'node dist/src/server.js')
  t.equal(scripts.prepare, 'npm run build --silent', 'npm install and npm ci build')
  t.match(scripts.build, /^tsc -b tsconfig\.build\.json && node dist\/src\/cli\/write-pglite-seed\.js$/, 'build mode: only what changed')
  t.match(scripts.dev, /^tsx watch /)
  for (const name of ['start', 'migrate', 'emulator', 'openapi']) {
    t.match(scripts[name], /^node dist\//, `${name} runs built code`)
    t.ok(['npm run build --silent', scripts.build].includes(scripts[`pre${name}`]), `${name} first rebuilds what changed`)
  }
  t.equal(scripts.prestart, scripts.build, 'npm start runs the build itself, without a second npm (half a second)')
  const build = JSON.parse(readFileSync(`${root}tsconfig.build.json`, 'utf8'))
  t.equal(build.compilerOptions.incremental, true)
  t.match(build.compilerOptions.tsBuildInfoFile, /^dist\//, 'removing dist/ removes the build state with it')
})
