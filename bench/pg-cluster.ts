// A private PostgreSQL cluster in a temporary folder, for the soak and the tuned claim benchmark:
// restarting or configuring it disturbs nothing else on the machine. As root the server runs as the
// `postgres` user (runuser), as Postgres requires.
import { execFile } from 'node:child_process'
import { chownSync, existsSync, mkdtempSync, readFileSync, rmSync, appendFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { freePort } from './lib.js'

const run = promisify(execFile)

export interface Cluster {
  url: string
  port: number
  dir: string
  /** `pg_ctl restart -m fast`: every connection is cut, the server is back when this resolves. */
  restart (): Promise<void>
  /** Stops the server, keeping the folder (its logs). */
  stop (): Promise<void>
  /** Stops the server and removes the folder. */
  destroy (): Promise<void>
  /** The server's own log, for a report when something went wrong. */
  log (): string
}

export function postgresBin (): string {
  return process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin'
}

export function canStartCluster (): boolean {
  return existsSync(join(postgresBin(), 'initdb')) && existsSync(join(postgresBin(), 'pg_ctl'))
}

/** `settings`: extra postgresql.conf lines, e.g. `shared_preload_libraries = 'pg_stat_statements'`. */
export async function startCluster (settings: string[] = []): Promise<Cluster> {
  const bin = postgresBin()
  const asRoot = process.getuid?.() === 0
  const dir = mkdtempSync(join(tmpdir(), 'otn-soak-pg-'))
  const data = join(dir, 'data')
  const logFile = join(dir, 'postgres.log')
  let owner: { uid: number, gid: number } | undefined
  if (asRoot) {
    const uid = Number((await run('id', ['-u', 'postgres'])).stdout.trim())
    const gid = Number((await run('id', ['-g', 'postgres'])).stdout.trim())
    owner = { uid, gid }
    chownSync(dir, uid, gid)
  }
  const pg = async (tool: string, args: string[], timeout = 60_000) => {
    const [file, argv] = asRoot ? ['runuser', ['-u', 'postgres', '--', join(bin, tool), ...args]] : [join(bin, tool), args]
    return run(file, argv, { timeout })
  }
  const port = await freePort()
  try {
    await pg('initdb', ['-D', data, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync'])
    appendFileSync(data + '/postgresql.conf', [
      `port = ${port}`,
      "listen_addresses = '127.0.0.1'",
      `unix_socket_directories = '${dir}'`,
      'max_connections = 100',
      'shared_buffers = 64MB',
      ...settings,
      '',
    ].join('\n'))
    if (owner) chownSync(data + '/postgresql.conf', owner.uid, owner.gid)
    await pg('pg_ctl', ['-D', data, '-l', logFile, '-w', '-t', '60', 'start'])
  } catch (error) {
    rmSync(dir, { recursive: true, force: true })
    throw error
  }
  let stopped = false
  const stop = async (): Promise<void> => {
    if (stopped) return
    stopped = true
    await pg('pg_ctl', ['-D', data, '-m', 'immediate', '-w', '-t', '30', 'stop']).catch(() => {})
  }
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    dir,
    async restart () {
      await pg('pg_ctl', ['-D', data, '-l', logFile, '-m', 'fast', '-w', '-t', '60', 'restart'])
    },
    stop,
    async destroy () {
      await stop()
      rmSync(dir, { recursive: true, force: true })
    },
    log () {
      try {
        return readFileSync(logFile, 'utf8')
      } catch {
        return ''
      }
    },
  }
}
