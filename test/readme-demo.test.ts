import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:net'

// Runs the README's demo blocks as written (ports and data folder swapped for free ones), so the
// demo a newcomer copies is known to work.
const root = new URL('..', import.meta.url).pathname
const readme = readFileSync(`${root}README.md`, 'utf8')

function block (name: string, lang = 'sh'): string {
  const m = new RegExp(`<!-- demo:${name} -->\\n\`\`\`${lang}\\n([\\s\\S]*?)\\n\`\`\``).exec(readme)
  if (!m) throw new Error(`README has no demo:${name} block`)
  return m[1]
}

async function freePort (): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
}

function bash (script: string, env: Record<string, string>): ChildProcess & { output: () => string } {
  const child = spawn('bash', ['-c', script], { cwd: root, env: { ...process.env, ...env }, detached: true })
  let out = ''
  child.stdout?.on('data', (c) => { out += c })
  child.stderr?.on('data', (c) => { out += c })
  return Object.assign(child, { output: () => out })
}

async function waitFor (url: string, proc: { output: () => string, exitCode: number | null }): Promise<void> {
  for (let i = 0; i < 240; i++) {
    if (proc.exitCode !== null) throw new Error(`exited early:\n${proc.output()}`)
    try {
      if ((await fetch(url)).status < 500) return
    } catch {}
    await new Promise((resolve) => setTimeout(resolve, 500))
  }
  throw new Error(`${url} never answered:\n${proc.output()}`)
}

t.test('the README demo, run as written', async (t) => {
  const service = await freePort()
  const emulator = await freePort()
  const swap = (text: string) => text.replaceAll('127.0.0.1:3000', `127.0.0.1:${service}`).replaceAll('127.0.0.1:3999', `127.0.0.1:${emulator}`)
  const dataDir = t.testdir({})
  const running: ChildProcess[] = []
  t.teardown(() => { for (const p of running) { try { process.kill(-p.pid!, 'SIGTERM') } catch {} } })

  const emu = bash(block('emulator'), { EMULATOR_PORT: String(emulator), EMULATOR_WEBHOOK_URL: `http://127.0.0.1:${service}/webhooks/messenger` })
  running.push(emu)
  await waitFor(`http://127.0.0.1:${emulator}/_emulator/audit`, emu)

  const svc = bash(swap(block('service')).replace('./data/demo', dataDir), { PORT: String(service) })
  running.push(svc)
  await waitFor(`http://127.0.0.1:${service}/readyz`, svc)

  // Twice in a row on the same service and emulator: the demo can be run again.
  const expected = block('expected', 'text').split('\n')
  t.equal(expected.length, 9)
  for (const run of [1, 2]) {
    const steps = bash(swap(block('steps')), {})
    const [code] = await new Promise<[number | null]>((resolve) => steps.on('exit', (c) => resolve([c])))
    t.equal(code, 0, steps.output())
    const lines = steps.output().trim().split('\n')
    t.equal(lines.length, expected.length, `run ${run}: every line it prints is in the README's Expected\n${steps.output()}`)
    expected.forEach((line, i) => t.match(lines[i], matcher(line), `run ${run}, line ${i + 1}`))
    t.notMatch(lines[2], /"token":"[A-Za-z0-9_-]{20,}"/, 'the emulator shows the token masked')

    const recurring = bash(swap(block('recurring')), {})
    const [rcode] = await new Promise<[number | null]>((resolve) => recurring.on('exit', (c) => resolve([c])))
    t.equal(rcode, 0, recurring.output())
    const rlines = recurring.output().trim().split('\n')
    const rexpected = block('recurring-expected', 'text').split('\n')
    t.equal(rlines.length, rexpected.length, `run ${run}, recurring: every line it prints is in the README's Expected\n${recurring.output()}`)
    rexpected.forEach((line, i) => t.match(rlines[i], matcher(line), `run ${run}, recurring line ${i + 1}`))
    t.notMatch(rlines.at(-1), /"token":"[A-Za-z0-9_-]{20,}"/, 'the service shows the recurring token masked')
  }
})

/** An Expected line as a pattern: "…" stands for any value of that string. */
function matcher (line: string): RegExp {
  return new RegExp(`^${line.split('…').map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('[^"]*')}$`)
}
