// One system under test in its own process, driven by the benchmark over IPC:
//   app       the real service (buildApp), configured from the environment like src/server.ts
//   ceilings  the bare Fastify routes of bench/ceilings.ts on BENCH_DB_URL
//   emulator  the Graph API emulator (tokens are issued here, then seeded into the database)
// It listens on 127.0.0.1:0, sends {type: 'ready', port}, then answers {id, cmd, args} messages.
import type { AddressInfo } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { CompiledQuery } from 'kysely'
import pg from 'pg'
import { buildApp } from '../src/app.js'
import { loadConfig } from '../src/config.js'
import { createEmulator } from '../src/emulator/emulator.js'
import { createGraphClient } from '../src/graph/client.js'
import { DEFAULT_GRAPH_VERSION } from '../src/graph/versions.js'
import { buildCeilings, claimStatement } from './ceilings.js'
import { APP_SECRET } from './lib.js'

type Handler = (args: any) => Promise<unknown>

async function app (): Promise<{ server: FastifyInstance, handlers: Record<string, Handler> }> {
  const config = loadConfig(process.env)
  const server = await buildApp(config)
  // Requests whose client has gone (the load generator stops mid-request) still run to the end;
  // closing waits for them, so that none meets a closed database.
  let inFlight = 0
  server.addHook('onRequest', async () => { inFlight++ })
  server.addHook('onSend', async () => { inFlight-- })
  const drained = async () => {
    for (let i = 0; i < 200 && inFlight > 0; i++) await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return {
    server,
    handlers: {
      query: async ({ text, values }: { text: string, values?: unknown[] }) =>
        (await server.db.executeQuery(CompiledQuery.raw(text, values ?? []))).rows,
      close: async () => {
        await drained()
        await server.close()
      },
    },
  }
}

async function ceilings (): Promise<{ server: FastifyInstance, handlers: Record<string, Handler> }> {
  const pool = new pg.Pool({ connectionString: process.env.BENCH_DB_URL, max: Number(process.env.BENCH_POOL_SIZE ?? 10) })
  pool.on('error', () => {})
  const client = process.env.BENCH_GRAPH_URL
    ? createGraphClient({ baseUrl: process.env.BENCH_GRAPH_URL, version: DEFAULT_GRAPH_VERSION, appSecret: APP_SECRET, timeoutMs: 10_000, connectTimeoutMs: 5_000 })
    : undefined
  const graph = client && { client, pageId: process.env.BENCH_GRAPH_PAGE!, accessToken: process.env.BENCH_GRAPH_ACCESS_TOKEN! }
  const server = await buildCeilings(pool, await claimStatement(pool), graph)
  return {
    server,
    handlers: {
      query: async ({ text, values }: { text: string, values?: unknown[] }) => (await pool.query(text, values)).rows,
      close: async () => {
        await server.close()
        await client?.close()
        await pool.end()
      },
    },
  }
}

async function emulator (): Promise<{ server: FastifyInstance, handlers: Record<string, Handler> }> {
  const emu = createEmulator({ appSecret: APP_SECRET, recordLimit: 1000 })
  await emu.listen(0)
  return {
    server: emu.app,
    handlers: {
      addPage: async ({ id, accessToken }) => { emu.addPage({ id, accessToken }) },
      issueTokens: async ({ pageId, payload, psids }: { pageId: string, payload: string, psids: string[] }) =>
        psids.map((psid) => emu.issueToken(pageId, psid, payload)),
      // No webhook URL: the person's message is only recorded, which opens the window.
      personWrites: async ({ pageId, psids }: { pageId: string, psids: string[] }) => {
        for (const psid of psids) await emu.personWrites(pageId, psid)
      },
      // Meta's latency for one Page only (the other scenarios' Pages answer at once).
      setLatency: async ({ pageId, latencyMs }: { pageId: string, latencyMs: number }) => { emu.setFaults({ latencyMs }, pageId) },
      audit: async () => emu.audit(),
      close: async () => { await emu.close() },
    },
  }
}

async function main (): Promise<void> {
  const mode = process.argv[2]
  const built = mode === 'app' ? await app() : mode === 'ceilings' ? await ceilings() : mode === 'emulator' ? await emulator() : undefined
  if (!built) throw new Error(`unknown target mode ${mode}`)
  const handlers: Record<string, Handler> = {
    ...built.handlers,
    // A full collection now, rather than during a measured round: what seeding allocated is then
    // either garbage already collected or the old generation's settled content. Answers the heap in use.
    gc: async () => {
      const gc = (globalThis as { gc?: () => void }).gc
      if (!gc) throw new Error('gc is not exposed: start the target with --expose-gc (startTarget does)')
      gc()
      return process.memoryUsage().heapUsed
    },
  }
  const { server } = built
  if (mode !== 'emulator') await server.listen({ host: '127.0.0.1', port: 0 })
  process.on('message', async (m: { id: number, cmd: string, args?: unknown }) => {
    try {
      const handler = handlers[m.cmd]
      if (!handler) throw new Error(`unknown command ${m.cmd}`)
      const result = await handler(m.args)
      process.send!({ id: m.id, ok: true, result })
      if (m.cmd === 'close') process.disconnect()
    } catch (error) {
      process.send!({ id: m.id, ok: false, error: error instanceof Error ? error.message : String(error) })
    }
  })
  process.on('disconnect', () => process.exit(0))
  process.send!({ type: 'ready', port: (server.server.address() as AddressInfo).port })
}

main().catch((error) => {
  process.stderr.write(`bench target failed: ${error instanceof Error ? error.stack : String(error)}\n`)
  process.exit(1)
})
