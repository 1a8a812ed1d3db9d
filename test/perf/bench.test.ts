import t from 'tap'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

// The bench, every scenario once at a tiny size on both databases: it must run to its table with a
// figure for each and no failed request. It proves the bench still works, not how fast anything
// is (its figures here are noise). It creates and drops its own databases (bench/lib.ts), on the
// server named by TEST_DATABASE_URL; test/perf runs in the Postgres pass only.

const root = fileURLToPath(new URL('../..', import.meta.url))
const SCENARIOS = ['token', 'window', 'minimal', 'webhook', 'insert', 'broadcast', 'pages', 'memory', 'audience']

t.test('npm run bench runs every scenario to a figure', async (t) => {
  const env = {
    ...process.env,
    BENCH_DATABASE_URL: process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
    BENCH_SCENARIOS: SCENARIOS.join(','), BENCH_CONNECTIONS: '2', BENCH_SECONDS: '1', BENCH_WARMUP_SECONDS: '0', BENCH_ROUNDS: '1',
    BENCH_RATE_BOUND: '1000', BENCH_BROADCAST_PEOPLE: '40', BENCH_MEMORY_PEOPLE: '20', BENCH_AUDIENCE_TOKENS: '2000', BENCH_META_LATENCY_MS: '20', BENCH_PGLITE: '',
  }
  const { code, out, err } = await new Promise<{ code: number | null, out: string, err: string }>((resolve) => {
    const child = spawn('npx', ['tsx', 'bench/run.ts'], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.on('data', (c) => { out += c })
    child.stderr.on('data', (c) => { err = (err + c).slice(-4000) })
    child.on('close', (code) => resolve({ code, out, err }))
  })
  t.equal(code, 0, `the bench exits cleanly${code === 0 ? '' : `: ${err}`}`)
  // The closing table: | database | scenario | build | figure (median) | p50 ms | p99 ms | non-2xx |
  const rows = out.split('\n').filter((l) => l.startsWith('|')).map((l) => l.split('|').slice(1, -1).map((c) => c.trim()))
  const ours = rows.filter((r) => r[2] === 'this checkout')
  for (const scenario of SCENARIOS) {
    const row = ours.find((r) => r[0] === 'Postgres' && r[1].split(' ')[0] === scenario)
    t.ok(row, `Postgres ${scenario}: a row`)
    if (!row) continue
    t.ok(Number(row[3].replace(/,/g, '')) > 0, `Postgres ${scenario}: a figure (${row[3]})`)
    if (row[6] !== '') t.equal(row[6], '0', `Postgres ${scenario}: every request answered 2xx`)
  }
  const embedded = ours.find((r) => r[0] === 'PGlite' && r[1] === 'broadcast')
  t.ok(embedded && Number(embedded[3].replace(/,/g, '')) > 0, 'PGlite broadcast: a figure (the embedded database\'s default scenario)')
  t.match(out, /token route ÷ minimal correct send @2/, 'the ceiling ratios are worked out')
})
