// Seconds from `npm start` to the first 200 from /healthz, on the embedded database: first on a
// fresh data folder (what a newcomer sees), then again on the folder the first start left (a
// restart). `node scripts/start-time.mjs [runs]` repeats both and prints each figure and the median.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const root = new URL('..', import.meta.url).pathname
const runs = Number(process.argv[2] ?? 1)
const LIMIT_MS = 180_000

function freePort () {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

async function healthy (url) {
  try {
    return (await fetch(url)).status === 200
  } catch {
    return false
  }
}

/** One `npm start` until /healthz answers 200; then stopped with SIGTERM and awaited. */
async function startOnce (dataDir) {
  const port = await freePort()
  const started = performance.now()
  const child = spawn('npm', ['start', '--silent'], {
    cwd: root,
    env: { ...process.env, API_KEYS: 'start-time-script-key', PORT: String(port), PGLITE_DATA_DIR: dataDir, DATABASE_URL: '', LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'ignore', 'inherit'],
    detached: true,
  })
  const exited = new Promise((resolve) => child.on('exit', resolve))
  let seconds
  try {
    while (performance.now() - started < LIMIT_MS) {
      if (child.exitCode !== null) throw new Error(`npm start exited with ${child.exitCode} before answering`)
      if (await healthy(`http://127.0.0.1:${port}/healthz`)) {
        seconds = (performance.now() - started) / 1000
        break
      }
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    if (seconds === undefined) throw new Error(`no healthy answer within ${LIMIT_MS / 1000} s`)
  } finally {
    try { process.kill(-child.pid, 'SIGTERM') } catch {}
    await exited
  }
  return seconds
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const fresh = []
const restart = []
for (let i = 0; i < runs; i++) {
  const dataDir = mkdtempSync(join(tmpdir(), 'otn-start-time-'))
  try {
    fresh.push(await startOnce(dataDir))
    restart.push(await startOnce(dataDir))
  } finally {
    rmSync(dataDir, { recursive: true, force: true })
  }
}
const show = (xs) => `${xs.map((s) => s.toFixed(1)).join(', ')} s${xs.length > 1 ? ` (median ${median(xs).toFixed(1)} s)` : ''}`
console.log(`npm start to the first healthy /healthz, embedded database: fresh data folder ${show(fresh)}; restart ${show(restart)}`)
