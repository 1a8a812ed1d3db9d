// This machine's ceilings: bare Fastify routes that do only the one database step the service's
// hot paths cannot avoid, through the same pg driver. The service's figures are read against these.
import { randomUUID } from 'node:crypto'
import Fastify, { type FastifyInstance } from 'fastify'
import { Kysely, PostgresDialect, type CompiledQuery } from 'kysely'
import type pg from 'pg'
import { claimToken, type ClaimTarget } from '../src/domain/claims.js'
import { parseDelivery, recordDeliveries } from '../src/domain/ingest.js'
import type { DB } from '../src/db/types.js'
import type { GraphClient } from '../src/graph/client.js'

export const BARE_PAGE = 'bench-bare-page'
export const BARE_PAYLOAD = 'bench-bare'

export interface ClaimStatement {
  text: string
  values (target: ClaimTarget): unknown[]
}

/**
 * The exact SQL text and parameter order of the service's `claimToken`, captured by running it once
 * (it matches nothing), so the ceiling and the latency figures follow the service's statement
 * whenever it changes.
 */
export async function claimStatement (pool: pg.Pool): Promise<ClaimStatement> {
  let captured: CompiledQuery | undefined
  const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool }), log: (event) => { captured = event.query } })
  const marker: ClaimTarget = {
    page_id: '\u0001page', payload: '\u0001payload', psid: '\u0001psid',
    notification_id: '00000000-0000-4000-8000-00000000beef', leaseSeconds: 987_654,
  }
  await claimToken(db, marker)
  if (!captured) throw new Error('claimToken ran no query')
  const keys = captured.parameters.map((p) => {
    const key = (Object.keys(marker) as Array<keyof ClaimTarget>).find((k) => marker[k] === p)
    if (!key) throw new Error(`claimToken has a parameter the benchmark does not know: ${String(p)}`)
    return key
  })
  return { text: captured.sql, values: (t) => keys.map((k) => t[k]) }
}

/**
 * POST /bare: parse a small JSON body, answer JSON; nothing else.
 * POST /insert: the raw body as bytes, one INSERT of it into webhook_events (what a webhook must at least do).
 * POST /ingest: the service's own parse and ingest statement (recordDeliveries, one delivery each), without the signature
 * check, the logging and the rest of the app: what the webhook's database work costs on its own.
 * POST /claim, /claim-named: one token claim with the service's statement, unnamed (pg's default,
 * what Kysely sends) or as a named prepared statement. Body `{"psid": "..."}`.
 * POST /claim-send: the named claim, then the claimed token sent to the Graph API (the emulator)
 * with the service's Graph client, nothing recorded: what any token route costs at the least,
 * since it must claim and call Meta. Its tokens belong to `graph.pageId`.
 */
export async function buildCeilings (pool: pg.Pool, claim: ClaimStatement,
  graph?: { client: GraphClient, pageId: string, accessToken: string }): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  const db = new Kysely<DB>({ dialect: new PostgresDialect({ pool }) })

  app.post('/bare', async (request) => ({ ok: true, got: typeof request.body }))

  await app.register(async (raw) => {
    raw.removeAllContentTypeParsers()
    raw.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => { done(null, body) })
    raw.post('/insert', async (request) => {
      const signature = String(request.headers['x-hub-signature-256'] ?? '')
      const { rows } = await pool.query('insert into webhook_events (signature, object, body) values ($1, $2, $3) returning id',
        [signature, 'page', request.body as Buffer])
      return { event_id: String(rows[0].id) }
    })
    raw.post('/ingest', async (request) => {
      const body = request.body as Buffer
      const [recorded] = await recordDeliveries(db, [{ raw: body, signature: String(request.headers['x-hub-signature-256'] ?? ''), delivery: parseDelivery(body) }])
      return { event_id: recorded.event_id, tokens_recorded: recorded.tokens_recorded }
    })
  })

  const claimRoute = (named: boolean) => async (request: { body: unknown }, reply: { code (c: number): unknown }) => {
    const { psid } = request.body as { psid: string }
    const values = claim.values({ page_id: BARE_PAGE, payload: BARE_PAYLOAD, psid, notification_id: randomUUID(), leaseSeconds: 120 })
    const { rows } = named
      ? await pool.query({ name: 'bench_claim', text: claim.text, values })
      : await pool.query(claim.text, values)
    if (rows.length === 0) {
      reply.code(409)
      return { error: 'no_token' }
    }
    return { id: String(rows[0].id) }
  }
  app.post('/claim', claimRoute(false))
  app.post('/claim-named', claimRoute(true))
  if (graph) {
    app.post('/claim-send', async (request, reply) => {
      const { psid } = request.body as { psid: string }
      const values = claim.values({ page_id: graph.pageId, payload: BARE_PAYLOAD, psid, notification_id: randomUUID(), leaseSeconds: 120 })
      const { rows } = await pool.query({ name: 'bench_claim', text: claim.text, values })
      if (rows.length === 0) {
        reply.code(409)
        return { error: 'no_token' }
      }
      const outcome = await graph.client.sendMessage({ id: graph.pageId, accessToken: graph.accessToken }, {
        recipient: { one_time_notif_token: rows[0].token }, messaging_type: 'UPDATE', message: { text: 'Your size is back in stock' },
      })
      if (outcome.kind !== 'ok') reply.code(502)
      return { id: String(rows[0].id), sent: outcome.kind === 'ok' }
    })
  }
  return app
}
