import { Writable } from 'node:stream'
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import type { KyselyPlugin } from 'kysely'
import { buildApp, type AppDeps } from '../src/app.js'
import { loadConfig, type Config } from '../src/config.js'
import { openDatabase, type Database, type DatabaseHandle } from '../src/db/database.js'
import { migrate } from '../src/db/migrate.js'

export const API_KEY = 'test-api-key-0123456789'
export const auth = { authorization: `Bearer ${API_KEY}` }

/** postgres (TEST_DATABASE_URL names the server; one fresh database per test file) or pglite (in memory). */
export const databaseKind: 'postgres' | 'pglite' = process.env.TEST_DATABASE === 'postgres' ? 'postgres' : 'pglite'
const adminUrl = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

let shared: Promise<DatabaseHandle & { url?: string }> | undefined

async function createDatabase (): Promise<DatabaseHandle & { url?: string }> {
  if (databaseKind === 'pglite') {
    const handle = await openDatabase({ pgliteDataDir: 'memory://' })
    await migrate(handle.db)
    return handle
  }
  const name = `otn_test_${process.pid}_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  await admin.query(`create database ${name}`)
  await admin.end()
  const url = new URL(adminUrl)
  url.pathname = `/${name}`
  const handle = await openDatabase({ databaseUrl: url.toString(), poolSize: 10 })
  await migrate(handle.db)
  return {
    ...handle,
    url: url.toString(),
    close: async () => {
      await handle.close()
      const drop = new pg.Client({ connectionString: adminUrl })
      await drop.connect()
      await drop.query(`drop database if exists ${name} with (force)`)
      await drop.end()
    },
  }
}

/** The test file's own database, made once and dropped when the file ends. */
export async function testDatabase (): Promise<DatabaseHandle & { url?: string }> {
  if (!shared) {
    shared = createDatabase()
    t.teardown(async () => { await (await shared!).close() })
  }
  return shared
}

/** The tests' encryption key (ENCRYPTION_KEYS), for every app and child process of a test file alike. */
export const TEST_ENCRYPTION_KEYS = 'test-key:dGVzdC1rZXktZm9yLWVuY3J5cHRpb24tYXQtcmVzdCE='

export function testConfig (env: Record<string, string> = {}): Config {
  return loadConfig({ API_KEYS: `${API_KEY},second-key-abcdefgh`, LOG_LEVEL: 'silent', ENCRYPTION_KEYS: TEST_ENCRYPTION_KEYS, ...env })
}

/** Log lines the app wrote, parsed, for assertions about what is (and is not) logged. */
export class LogCapture extends Writable {
  lines: Array<Record<string, unknown>> = []
  text = ''
  _write (chunk: Buffer, _enc: string, done: () => void): void {
    this.text += chunk.toString()
    for (const line of chunk.toString().split('\n').filter(Boolean)) this.lines.push(JSON.parse(line))
    done()
  }
}

/** The real app on the file's database; closed when the test ends. */
export async function build (test: Test, env: Record<string, string> = {}, deps: AppDeps = {}): Promise<FastifyInstance> {
  const { db, kind } = await testDatabase()
  const app = await buildApp(testConfig(env), { db, dbKind: kind, ...deps })
  test.teardown(() => app.close())
  return app
}

/** Empties every table, so that each test starts from nothing on the shared database. */
export async function truncateAll (db: Database): Promise<void> {
  const { sql } = await import('kysely')
  await sql`truncate pages, topics, optin_tokens, subscribers, notifications, optin_requests, webhook_events restart identity cascade`.execute(db)
}

export function uniquePageId (): string {
  return String(100000 + Math.floor(Math.random() * 1e9))
}

/**
 * An app on a database handle of its own (a fresh pool on the test server, or an in-memory PGlite),
 * for tests that take the database away: `goAway` stops the job queue's workers first (pg-boss 10
 * does not await its own writes after a job), then closes the handle.
 */
export async function appOnOwnDatabase (t: Test, env: Record<string, string> = {}): Promise<{ app: FastifyInstance, goAway: () => Promise<void> }> {
  const { kind, url } = await testDatabase()
  const handle = kind === 'postgres'
    ? await openDatabase({ databaseUrl: url, poolSize: 2 })
    : await openDatabase({ pgliteDataDir: 'memory://' })
  const app = await buildApp(testConfig(env), { db: handle.db, dbKind: kind })
  t.teardown(() => app.close())
  return {
    app,
    goAway: async () => {
      await app.jobs.stop({ graceful: true, wait: true, close: false })
      await handle.close()
    },
  }
}

/** `db`, counting every statement executed through it (the hot paths' round trips are tested). */
export function countStatements (db: Database): { counted: Database, statements: string[] } {
  const statements: string[] = []
  const plugin: KyselyPlugin = {
    transformQuery: (args) => { statements.push(args.node.kind); return args.node },
    transformResult: async (args) => args.result,
  }
  return { counted: db.withPlugin(plugin), statements }
}
