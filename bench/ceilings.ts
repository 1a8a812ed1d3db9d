// The ceilings the service is measured against, as a process of their own (`node --import tsx
// bench/ceilings.ts`, started by bench/run.ts): the least code that does the same job correctly, on
// the service's own database and tables, so that the bench can say how far the service is from it.
//
// POST /send      the minimal correct send: claim the person's soonest-expiring usable token and
//                 record the notification in one commit, call the Graph API (the same emulator), then
//                 record the outcome and the token's move in a second commit. No window, no
//                 idempotency, no re-sends, no recovery: what any correct sender must at least do.
// POST /insert    one webhook body stored in one INSERT: the least an ingestion can do.
import { randomUUID } from 'node:crypto'
import Fastify from 'fastify'
import pg from 'pg'
import { Pool } from 'undici'
import { Keyring, parseEncryptionKeys } from '../src/crypto/secret-box.js'

const env = (name: string): string => {
  const v = process.env[name]
  if (!v) throw new Error(`${name} is required`)
  return v
}
const db = new pg.Pool({ connectionString: env('DATABASE_URL'), max: Number(process.env.POOL_SIZE ?? 10) })
const graph = new Pool(env('GRAPH_URL'), { connections: 512 })
const accessToken = env('PAGE_ACCESS_TOKEN')
/** Opt-in tokens are stored sealed (docs/SECURITY.md): the least a correct send does is open its token. */
const keyring = new Keyring(parseEncryptionKeys(env('ENCRYPTION_KEYS')).keys)
/** The Page every body names (the service reads it from the body; the least an ingestion does is know it). */
const pageId = env('PAGE_ID')
const app = Fastify({ logger: false })

app.post<{ Body: { topic_id: string, psid: string, message: Record<string, unknown> } }>('/send', async (request, reply) => {
  const { topic_id: topicId, psid, message } = request.body
  const id = randomUUID()
  const { rows: [claimed] } = await db.query<{ token_id: string, token: string }>({
    name: 'ceiling-claim',
    text: `with t as (select page_id, payload from topics where id = $1),
      claim as (
        update optin_tokens o set notification_id = $3, lease_expires_at = now() + interval '60 seconds', updated_at = now()
         where o.id = (select id from optin_tokens, t
                        where optin_tokens.page_id = t.page_id and optin_tokens.payload = t.payload and psid = $2
                          and state = 'available' and notification_id is null and expires_at > now()
                        order by expires_at limit 1 for update skip locked)
        returning o.id, o.token),
      ins as (
        insert into notifications (id, page_id, topic_id, psid, message, status, route, attempts, token_id)
        select $3, t.page_id, $1, $2, $4, 'pending', 'token', 1, claim.id from t, claim)
      select claim.id as token_id, claim.token from claim`,
    values: [topicId, psid, id, JSON.stringify(message)],
  })
  if (!claimed) return reply.code(409).send({ code: 'no_token' })
  const response = await graph.request({
    method: 'POST', path: `/v26.0/me/messages?access_token=${accessToken}`,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ recipient: { one_time_notif_token: keyring.open('optin_tokens.token', claimed.token) }, messaging_type: 'UPDATE', message }),
  })
  const answer = await response.body.json() as { message_id?: string }
  const sent = response.statusCode === 200
  await db.query({
    name: 'ceiling-outcome',
    text: `with moved as (update optin_tokens set state = $3, lease_expires_at = null, updated_at = now() where id = $2 returning id)
      update notifications set status = $4, graph_message_id = $5, token_state = $6, completed_at = now(), updated_at = now()
       where id = $1 and exists (select 1 from moved)`,
    values: [id, claimed.token_id, sent ? 'used' : 'available', sent ? 'sent' : 'failed', answer.message_id ?? null, sent ? 'used' : 'released'],
  })
  return reply.code(sent ? 201 : 502).send({ id, status: sent ? 'sent' : 'failed' })
})

await app.register(async (raw) => {
  raw.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_request, body, done) => done(null, body))
  raw.post('/insert', async (request, reply) => {
    await db.query({
      name: 'ceiling-insert',
      text: 'insert into webhook_events (page_id, signature, object, body) values ($1, $2, $3, $4)',
      values: [pageId, String(request.headers['x-hub-signature-256'] ?? ''), 'page', request.body as Buffer],
    })
    return reply.code(200).send({ ok: true })
  })
})
app.get('/ready', async () => ({ ok: true }))

await app.listen({ host: '127.0.0.1', port: Number(env('PORT')) })
const stop = async () => {
  await app.close()
  await db.end()
  await graph.close()
  process.exit(0)
}
process.once('SIGTERM', () => { void stop() })
