// Runs the tap suite on embedded PGlite, and again on Postgres when TEST_DATABASE_URL names a
// server; prints one closing line "N passed, N failed" over both runs (tap's summary is not read by CI).
// test/perf (statement counts, plans, prepared statements: Postgres's own) runs in the Postgres pass only.
import { spawn } from 'node:child_process'

const files = process.argv.slice(2)
const targets = ['pglite']
if (process.env.TEST_DATABASE_URL) targets.push('postgres')

function run (target) {
  return new Promise((resolve) => {
    const only = target === 'postgres' || files.length > 0 ? [] : ['--exclude=test/perf/**']
    const child = spawn('npx', ['tap', '--reporter=tap', ...only, ...files], {
      env: { ...process.env, TEST_DATABASE: target },
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    let summary = null
    let failedFiles = 0
    let tail = ''
    child.stdout.on('data', (chunk) => {
      process.stdout.write(chunk)
      tail += chunk.toString()
      const lines = tail.split('\n')
      tail = lines.pop()
      for (const line of lines) {
        const m = /^# \{ total: (\d+)(?:, pass: (\d+))?(?:, fail: (\d+))?/.exec(line)
        if (m) summary = { total: +m[1], pass: +(m[2] ?? 0), fail: +(m[3] ?? 0) }
        if (/^not ok \d+ - /.test(line)) failedFiles++
      }
    })
    child.on('close', (code) => {
      const s = summary ?? { total: 0, pass: 0, fail: 0 }
      // A file that crashes before its assertions still counts as a failure.
      const fail = Math.max(s.fail, failedFiles, code === 0 ? 0 : 1)
      console.log(`# ${target}: ${s.pass} passed, ${fail} failed`)
      resolve({ pass: s.pass, fail })
    })
  })
}

let passed = 0
let failed = 0
for (const target of targets) {
  const r = await run(target)
  passed += r.pass
  failed += r.fail
}
console.log(`${passed} passed, ${failed} failed`)
process.exit(failed > 0 || passed === 0 ? 1 : 0)
