import { DEFAULT_GRAPH_VERSION } from '../../src/graph/versions.js'
import t, { type Test } from 'tap'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { appsecretProof, createGraphClient, parseGraphError, type GraphClientOptions } from '../../src/graph/client.js'
import { classifyGraphError } from '../../src/graph/errors.js'
import type { GraphError } from '../../src/graph/errors.js'
import { APP_SECRET, FAST_TIMEOUT_MS, startEmulator } from '../fixtures/otn.js'

const PAGE = { id: '4242', accessToken: 'EAAclient-test-token' }

function client (t: Test, baseUrl: string, extra: Partial<GraphClientOptions> = {}) {
  const c = createGraphClient({ baseUrl, version: DEFAULT_GRAPH_VERSION, appSecret: APP_SECRET, timeoutMs: 2000, connectTimeoutMs: 1000, ...extra })
  t.teardown(() => c.close())
  return c
}

async function listen (server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

t.test('success: the message id, with access_token and appsecret_proof in the query, over one kept-alive connection', async (t) => {
  const { emulator, base } = await startEmulator(t)
  emulator.addPage(PAGE)
  await emulator.personWrites(PAGE.id, 'p1')
  let connections = 0
  emulator.app.server.on('connection', () => { connections++ })
  const graph = client(t, base)
  const body = { recipient: { id: 'p1' }, messaging_type: 'RESPONSE', message: { text: 'hi' } }
  const first = await graph.sendMessage(PAGE, body)
  t.match(first, { kind: 'ok', httpStatus: 200, recipientId: 'p1' })
  t.ok(first.kind === 'ok' && first.messageId?.startsWith('m_'))
  for (let i = 0; i < 8; i++) t.equal((await graph.sendMessage(PAGE, body)).kind, 'ok')
  // undici may open a second socket while the first is being handed back; it never opens one per request.
  t.ok(connections <= 2, `keep-alive reuses connections (${connections} for 9 requests)`)
  t.equal(emulator.requests[0].path, `/${DEFAULT_GRAPH_VERSION}/me/messages`)
})

t.test('an answered send leaves no timer behind (the timeout is cleared once the answer is in)', async (t) => {
  const { emulator, base } = await startEmulator(t)
  emulator.addPage(PAGE)
  await emulator.personWrites(PAGE.id, 'p1')
  const graph = client(t, base, { timeoutMs: 60_000 })
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
  t.equal((await graph.sendMessage(PAGE, { recipient: { id: 'p1' }, message: { text: 'warm' } })).kind, 'ok')
  const before = timers()
  for (let i = 0; i < 10; i++) {
    t.equal((await graph.sendMessage(PAGE, { recipient: { id: 'p1' }, message: { text: `hi ${i}` } })).kind, 'ok')
    t.equal((await graph.sendMessage(PAGE, { recipient: { id: 'stranger' }, message: { text: 'x' } })).kind, 'graph_error')
  }
  // undici keeps one timer of its own for its connections; a timer per request would leave 20.
  t.ok(timers() - before <= 1, `timers before ${before}, after ${timers()}`)
})

t.test('the proof is the HMAC-SHA256 of the page token keyed with the app secret', async (t) => {
  const { createHmac } = await import('node:crypto')
  t.equal(appsecretProof('abc', 'secret'), createHmac('sha256', 'secret').update('abc').digest('hex'))
  const { emulator, base } = await startEmulator(t)
  emulator.addPage(PAGE)
  await emulator.personWrites(PAGE.id, 'p1')
  const wrongSecret = client(t, base, { appSecret: 'not-the-secret' })
  const refused = await wrongSecret.sendMessage(PAGE, { recipient: { id: 'p1' }, message: { text: 'hi' } })
  t.match(refused, { kind: 'graph_error', httpStatus: 400, error: { code: 100, message: /appsecret_proof/ } })
  t.equal(classifyGraphError(400, (refused as { error: GraphError }).error), 'permission', 'a bad proof is a configuration problem, not a bad token')
})

t.test('Graph errors are parsed into {code, subcode, message, fbtrace_id}', async (t) => {
  const { emulator, base } = await startEmulator(t)
  emulator.addPage(PAGE)
  const graph = client(t, base)
  const res = await graph.sendMessage(PAGE, { recipient: { one_time_notif_token: 'nope' }, messaging_type: 'UPDATE', message: { text: 'x' } })
  t.match(res, { kind: 'graph_error', httpStatus: 400, error: { code: 100, subcode: null, message: /one_time_notif_token/, fbtrace_id: /^A/ } })
  const window = await graph.sendMessage(PAGE, { recipient: { id: 'stranger' }, message: { text: 'x' } })
  t.match(window, { kind: 'graph_error', error: { code: 100, subcode: 2018001 } })

  t.same(parseGraphError(502, '<html>Bad Gateway</html>'), { code: null, subcode: null, message: 'HTTP 502 without a Graph error body', fbtrace_id: null })
  t.same(parseGraphError(400, '{"error":{"message":"m","code":613,"error_subcode":1893016,"fbtrace_id":"F"}}'),
    { code: 613, subcode: 1893016, message: 'm', fbtrace_id: 'F' })
})

t.test('no answer: timeouts and lost connections are ambiguous, a refused connection is not', async (t) => {
  const { emulator, base } = await startEmulator(t)
  emulator.addPage(PAGE)
  const graph = client(t, base, { timeoutMs: FAST_TIMEOUT_MS })
  const body = { recipient: { one_time_notif_token: 'x' }, message: { text: 'x' } }

  emulator.setFaults({ hangRate: 1 })
  const started = Date.now()
  const hung = await graph.sendMessage(PAGE, body)
  const took = Date.now() - started
  t.match(hung, { kind: 'no_answer', reason: 'timeout', sent: true })
  t.ok(took >= FAST_TIMEOUT_MS - 50 && took < FAST_TIMEOUT_MS + 3000, `the timeout is honoured (${took} ms)`)

  emulator.setFaults({ resetRate: 1 })
  t.match(await graph.sendMessage(PAGE, body), { kind: 'no_answer', reason: 'connection_lost', sent: true })

  emulator.clearFaults()
  t.match(await graph.sendMessage(PAGE, body), { kind: 'graph_error' }, 'the pool recovers after a reset')

  const closed = createServer()
  const deadUrl = await listen(closed)
  await new Promise((resolve) => closed.close(resolve))
  const dead = client(t, deadUrl)
  t.match(await dead.sendMessage(PAGE, body), { kind: 'no_answer', reason: 'unreachable', sent: false })
})

t.test('at most `connections` calls in flight: the others wait for a free socket, in order', async (t) => {
  const { emulator, base } = await startEmulator(t)
  emulator.addPage(PAGE)
  emulator.setFaults({ latencyMs: 150 }, PAGE.id)
  let sockets = 0
  emulator.app.server.on('connection', () => { sockets++ })
  let inFlight = 0
  let most = 0
  emulator.app.server.on('request', (_req, res) => {
    inFlight++
    most = Math.max(most, inFlight)
    res.once('close', () => { inFlight-- })
  })
  const graph = client(t, base, { connections: 2 })
  const psids = ['c1', 'c2', 'c3', 'c4', 'c5', 'c6']
  for (const psid of psids) await emulator.personWrites(PAGE.id, psid)
  const outcomes = await Promise.all(psids.map((psid) =>
    graph.sendMessage(PAGE, { recipient: { id: psid }, messaging_type: 'RESPONSE', message: { text: psid } })))
  t.same(outcomes.map((o) => o.kind), psids.map(() => 'ok'), 'every call is answered')
  t.ok(sockets <= 2, `two sockets at most (${sockets})`)
  t.ok(most <= 2, `two requests at the emulator at once at most (${most})`)
  const order = emulator.requests.map((r) => r.recipient.id)
  t.same([order.slice(0, 2).sort(), order.slice(4).sort()], [['c1', 'c2'], ['c5', 'c6']], 'first come, first served')
})

t.test('a call that finds no free socket within its timeout is not sent: busy, sent false', async (t) => {
  const received: string[] = []
  const server = createServer((req) => {
    let body = ''
    req.on('data', (chunk) => { body += chunk })
    req.on('end', () => { received.push(JSON.parse(body).message.text) })
  })
  const url = await listen(server)
  t.teardown(() => { server.closeAllConnections(); server.close() })
  const graph = client(t, url, { timeoutMs: FAST_TIMEOUT_MS, connections: 1 })
  // The server never answers: the first call holds the only socket until its timeout, and the
  // others' waits end at the same time (the second may just get the socket as the first lets go).
  const texts = ['a', 'b', 'c']
  const outcomes = await Promise.all(texts.map((text) =>
    graph.sendMessage(PAGE, { recipient: { one_time_notif_token: `token-${text}` }, message: { text } })))
  t.match(outcomes[0], { kind: 'no_answer', reason: 'timeout', sent: true })
  t.match(outcomes[2], { kind: 'no_answer', reason: 'busy', sent: false, detail: 'all 1 connections to the Graph API stayed busy' })
  t.ok(received.includes('a'), 'the first reached the server')
  for (const [i, o] of outcomes.entries()) {
    if (o.kind === 'no_answer' && !o.sent) t.notOk(received.includes(texts[i]), `${texts[i]}: not sent, and never reached the server`)
  }

  // The socket is free again once the calls are settled.
  server.removeAllListeners('request')
  server.on('request', (_req, res) => { res.writeHead(200, { 'content-type': 'application/json' }).end('{"recipient_id":"p","message_id":"m_1"}') })
  t.match(await graph.sendMessage(PAGE, { recipient: { id: 'p' }, message: { text: 'again' } }), { kind: 'ok' })
})

t.test('a call that waited for a socket has the whole timeout for its exchange', async (t) => {
  const { emulator, base } = await startEmulator(t)
  emulator.addPage(PAGE)
  emulator.setFaults({ latencyMs: 300 }, PAGE.id)
  for (const psid of ['w1', 'w2']) await emulator.personWrites(PAGE.id, psid)
  // The second waits about 300 ms, then its exchange takes about 300 more: 600 in all, over the
  // 500 ms timeout, which bounds the wait and the exchange each on its own.
  const graph = client(t, base, { connections: 1, timeoutMs: 500 })
  const outcomes = await Promise.all(['w1', 'w2'].map((psid) =>
    graph.sendMessage(PAGE, { recipient: { id: psid }, messaging_type: 'RESPONSE', message: { text: psid } })))
  t.same(outcomes.map((o) => o.kind), ['ok', 'ok'])
})

t.test('a slow body after the headers counts as no answer too', async (t) => {
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.write('{"recipient_id":')
  })
  const url = await listen(server)
  t.teardown(() => { server.closeAllConnections(); server.close() })
  const graph = client(t, url, { timeoutMs: FAST_TIMEOUT_MS })
  t.match(await graph.sendMessage(PAGE, { recipient: { id: 'p' }, message: { text: 'x' } }), { kind: 'no_answer', reason: 'timeout', sent: true })
})

t.test('nothing of the token or the query string appears in an outcome', async (t) => {
  const server = createServer((req, res) => { req.socket.destroy() })
  const url = await listen(server)
  t.teardown(() => server.close())
  const graph = client(t, url)
  const outcome = await graph.sendMessage(PAGE, { recipient: { one_time_notif_token: 'SECRET-TOKEN' }, message: { text: 'x' } })
  const text = JSON.stringify(outcome)
  t.notOk(text.includes(PAGE.accessToken))
  t.notOk(text.includes('SECRET-TOKEN'))
  t.notOk(text.includes('appsecret_proof'))
})

