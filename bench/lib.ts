// Shared pieces of the benchmarks and the soak: databases, child processes, autocannon, tables.
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { fileURLToPath } from 'node:url'
import autocannon, { type RequestParams } from 'autocannon'
import pg from 'pg'

export const ADMIN_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
export const APP_SECRET = 'bench-app-secret-0123456789'
export const API_KEY = 'bench-api-key-0123456789'
export const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url))

/** A positive integer from the environment, or the default; anything else stops the run with a clear message. */
export function envInt (name: string, def: number, min = 1): number {
  const text = process.env[name]
  if (text === undefined || text === '') return def
  const value = Number(text)
  if (!Number.isInteger(value) || value < min) throw new Error(`${name} must be an integer >= ${min} (got "${text}")`)
  return value
}

export function log (message: string): void {
  process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${message}\n`)
}

export interface ScratchDatabase { name: string, url: string, drop (): Promise<void> }

/** A fresh database on the server of `adminUrl`, dropped (with its connections) by `drop()`. */
export async function createDatabase (adminUrl: string, prefix: string): Promise<ScratchDatabase> {
  const name = `${prefix}_${process.pid}_${randomBytes(3).toString('hex')}`
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  try {
    await admin.query(`create database ${name}`)
  } finally {
    await admin.end()
  }
  const url = new URL(adminUrl)
  url.pathname = `/${name}`
  return {
    name,
    url: url.toString(),
    async drop () {
      const c = new pg.Client({ connectionString: adminUrl })
      await c.connect()
      try {
        await c.query(`drop database if exists ${name} with (force)`)
      } finally {
        await c.end()
      }
    },
  }
}

export async function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
}

// ---------------------------------------------------------------------------------------------
// Load

export interface Measured {
  /** Answers with a 2xx status per second of the measured period. */
  rps: number
  p50: number
  p99: number
  ok: number
  non2xx: number
  errors: number
  statusCodes: Record<string, number>
  /** CPU time the measured process spent per answer (Linux /proc), when its pid was given. */
  cpuMsPerRequest?: number
  /** CPU time the whole machine spent per answer (every process: load generator, app, Postgres, emulator; Linux /proc/stat), stolen time not counted. */
  machineCpuMsPerRequest?: number
  /** Share of the machine's CPU time that was idle during the measured period (0..1). */
  idle?: number
  /** Share of the machine's CPU time taken by the hypervisor for other guests during the measured period (0..1). */
  stolen?: number
}

export interface LoadSpec {
  url: string
  method?: string
  path: string
  headers?: Record<string, string>
  body?: string
  /** A fresh body (and headers) for every request, for routes that must never see the same one twice. */
  next?: () => RequestParams
  connections: number
  seconds: number
  warmupSeconds?: number
  /** The process under test, to report its CPU time per answer. */
  pid?: number
}

/** User + system CPU seconds of a process so far (Linux; undefined elsewhere). */
export function cpuSeconds (pid: number): number | undefined {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')
    return (Number(fields[11]) + Number(fields[12])) / 100 // utime, stime in clock ticks (USER_HZ = 100)
  } catch {
    return undefined
  }
}

/**
 * CPU seconds of the whole machine so far, summed over its CPUs (Linux; undefined elsewhere): busy
 * (this guest's processes and kernel), stolen (a virtual CPU ready to run while the hypervisor ran
 * another guest: time this machine lost, not work it did) and the total, idle included.
 */
export function machineCpuSeconds (): { busy: number, stolen: number, total: number } | undefined {
  try {
    const [, ...fields] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/)
    const n = fields.slice(0, 8).map(Number) // user nice system idle iowait irq softirq steal
    const total = n.reduce((a, b) => a + b, 0)
    return { busy: (total - n[3] - n[4] - n[7]) / 100, stolen: n[7] / 100, total: total / 100 }
  } catch {
    return undefined
  }
}

/** The share of the machine's CPU time stolen between two readings of machineCpuSeconds (0..1). */
export function stolenShare (before: { stolen: number, total: number }, after: { stolen: number, total: number }): number {
  const total = after.total - before.total
  return total > 0 ? (after.stolen - before.stolen) / total : 0
}

async function cannon (spec: LoadSpec, seconds: number) {
  const next = spec.next
  return autocannon({
    url: spec.url,
    connections: spec.connections,
    duration: seconds,
    timeout: 30,
    requests: [{
      method: spec.method ?? 'POST',
      path: spec.path,
      headers: spec.headers ?? {},
      ...(spec.body !== undefined ? { body: spec.body } : {}),
      ...(next ? { setupRequest: (req: RequestParams) => { const n = next(); return { ...req, ...n, headers: { ...req.headers, ...n.headers } } } } : {}),
    }],
  })
}

/** A warm-up (not counted), then `seconds` of load on 127.0.0.1 with autocannon. */
export async function measure (spec: LoadSpec): Promise<Measured> {
  if ((spec.warmupSeconds ?? 0) > 0) await cannon(spec, spec.warmupSeconds!)
  const cpuBefore = spec.pid !== undefined ? cpuSeconds(spec.pid) : undefined
  const machineBefore = machineCpuSeconds()
  const r = await cannon(spec, spec.seconds)
  const cpuAfter = spec.pid !== undefined ? cpuSeconds(spec.pid) : undefined
  const machineAfter = machineCpuSeconds()
  const answers = r['2xx'] + r.non2xx
  const statusCodes = Object.fromEntries(Object.entries(r.statusCodeStats ?? {}).map(([k, v]) => [k, v.count]))
  return {
    rps: r['2xx'] / r.duration,
    p50: r.latency.p50,
    p99: r.latency.p99,
    ok: r['2xx'],
    non2xx: r.non2xx,
    errors: r.errors,
    statusCodes,
    ...(cpuBefore !== undefined && cpuAfter !== undefined && answers > 0 ? { cpuMsPerRequest: (cpuAfter - cpuBefore) * 1000 / answers } : {}),
    ...(machineBefore && machineAfter && answers > 0 ? machineFigures(machineBefore, machineAfter, answers) : {}),
  }
}

type MachineCpu = NonNullable<ReturnType<typeof machineCpuSeconds>>

/** The whole machine's share of a measurement: its CPU per answer, and the shares of its time left idle and stolen. */
function machineFigures (before: MachineCpu, after: MachineCpu, answers: number): Pick<Measured, 'machineCpuMsPerRequest' | 'idle' | 'stolen'> {
  const busy = after.busy - before.busy
  const stolen = stolenShare(before, after)
  return { machineCpuMsPerRequest: busy * 1000 / answers, idle: 1 - busy / (after.total - before.total) - stolen, stolen }
}

// ---------------------------------------------------------------------------------------------
// Figures

export function quantile (sorted: number[], q: number): number {
  if (sorted.length === 0) return Number.NaN
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
  return sorted[i]
}

export const fmt = {
  rps: (n: number) => Number.isFinite(n) ? (n >= 100 ? Math.round(n).toLocaleString('en-US') : n.toFixed(1)) : '–',
  ms: (n: number) => Number.isFinite(n) ? (n >= 10 ? n.toFixed(0) : n.toFixed(2)) : '–',
  ratio: (n: number) => Number.isFinite(n) ? `${n.toFixed(2)}×` : '–',
  /** A ratio judged against `limit`: a third decimal when two would show the limit itself (0.598× is not 0.60×). */
  against: (n: number, limit: number) =>
    Number.isFinite(n) && n !== limit && Number(n.toFixed(2)) === limit ? `${n.toFixed(3)}×` : fmt.ratio(n),
}

/**
 * The median of `values`, with a distribution-free interval for it (order statistics): the k-th smallest and
 * the k-th largest, with k the largest for which the two hold the true median with at least
 * `confidence` (the binomial tail of n draws, each below the median with probability ½). With too
 * few values for that confidence (under 6 for 95%), the whole range, at the confidence it has.
 */
export function medianInterval (values: number[], confidence = 0.95): { median: number, lo: number, hi: number, coverage: number } {
  const sorted = [...values].sort((a, b) => a - b)
  const n = sorted.length
  if (n === 0) return { median: Number.NaN, lo: Number.NaN, hi: Number.NaN, coverage: 0 }
  const median = n % 2 ? sorted[(n - 1) / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2
  // below[j]: P(at most j of the n fall below the median) = sum over i ≤ j of C(n, i) / 2^n
  const below: number[] = []
  let term = 0.5 ** n
  let sum = 0
  for (let i = 0; i < n; i++) {
    sum += term
    below.push(sum)
    term = term * (n - i) / (i + 1)
  }
  const coverage = (k: number) => 1 - 2 * below[k - 1]
  let k = 1
  while (k + 1 <= Math.ceil(n / 2) && coverage(k + 1) >= confidence) k++
  return { median, lo: sorted[k - 1], hi: sorted[n - k], coverage: coverage(k) }
}

/** A Markdown table, columns padded so that it also reads well in a terminal. */
export function table (head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const line = (cells: string[]) => `| ${cells.map((c, i) => (c ?? '').padEnd(widths[i])).join(' | ')} |`
  return [line(head), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(line)].join('\n')
}
