import t, { type Test } from 'tap'
import net from 'node:net'
import { once } from 'node:events'
import type { FastifyInstance } from 'fastify'
import { API_KEY, build } from './helper.js'

// Slow, silent and malformed clients on real sockets (#24 points 4 and 8). The limits are small here
// so that the test is short; every wait below is for an event (a close, an answer), never a duration.
const limits = {
  HTTP_HEADERS_TIMEOUT_MS: '400',
  HTTP_REQUEST_TIMEOUT_MS: '800',
  HTTP_KEEP_ALIVE_TIMEOUT_MS: '400',
}

async function listening (t: Test, env: Record<string, string> = {}, setup?: (app: FastifyInstance) => void): Promise<{ app: FastifyInstance, port: number }> {
  const app = await build(t, { ...limits, ...env })
  setup?.(app)
  await app.listen({ host: '127.0.0.1', port: 0, backlog: 2048 })
  return { app, port: (app.server.address() as net.AddressInfo).port }
}

interface Client { socket: net.Socket, received: () => string, closed: Promise<void> }

/**
 * A raw TCP client that sends `first` as soon as it is connected: what it received, and a promise
 * of the server closing the connection (a write after that fails quietly, as a real client's would).
 */
async function connect (port: number, first?: string): Promise<Client> {
  const socket = net.connect(port, '127.0.0.1')
  let received = ''
  socket.setEncoding('latin1')
  socket.on('data', (chunk: string) => { received += chunk })
  socket.on('error', () => {})
  const closed = once(socket, 'close').then(() => {})
  await Promise.race([once(socket, 'connect'), closed])
  if (first !== undefined && !socket.destroyed) socket.write(first)
  return { socket, received: () => received, closed }
}

/** The status and JSON body of the last HTTP answer in `text` (answers on one connection follow each other). */
function lastAnswer (text: string): { status: number, type: string, body: any } {
  const start = text.lastIndexOf('HTTP/1.1 ')
  const [head, body] = text.slice(start).split('\r\n\r\n')
  return {
    status: Number(head.slice(9, 12)),
    type: /^content-type: (.*)$/im.exec(head)?.[1] ?? '',
    body: body ? JSON.parse(body) : undefined,
  }
}

const problem = (status: number, code: string) => ({ status, code, type: `https://otn.invalid/problems/${code}` })

t.test('a silent connection, a thousand half-sent headers and a dripped body are closed with 408', async (t) => {
  const { port } = await listening(t)

  const silent = await connect(port)
  const drip = await connect(port, `POST /v1/topics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${API_KEY}\r\n` +
    'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{')
  // One byte at a time for as long as the server keeps the connection.
  const dripping = setInterval(() => { if (!drip.socket.destroyed) drip.socket.write(' ') }, 50)
  t.teardown(() => clearInterval(dripping))
  const halves: Client[] = []
  // In tens of a hundred: a thousand connects at once overflow the kernel's queue and wait for SYN retries.
  for (let i = 0; i < 10; i++) {
    halves.push(...await Promise.all(Array.from({ length: 100 }, () => connect(port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: '))))
  }

  await silent.closed
  t.match(lastAnswer(silent.received()), { status: 408, type: /^application\/problem\+json/, body: problem(408, 'request_timeout') })
  await Promise.all(halves.map((h) => h.closed))
  t.equal(halves.filter((h) => lastAnswer(h.received()).status === 408).length, 1000, 'every half-sent request was answered 408 and closed')
  await drip.closed
  t.match(lastAnswer(drip.received()), { status: 408, body: problem(408, 'request_timeout') })
  t.ok(drip.socket.bytesWritten < 100000, `the body was never finished (${drip.socket.bytesWritten} bytes sent)`)
})

t.test('an idle keep-alive connection is closed; a handler slower than the request timeout still answers', async (t) => {
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  const { port } = await listening(t, {}, (app) => app.get('/slow', async () => { await gate; return { done: true } }))

  const idle = await connect(port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
  await idle.closed
  t.match(lastAnswer(idle.received()), { status: 200, body: { status: 'ok' } }, 'answered, then closed by the server when idle')

  const slow = await connect(port, 'GET /slow HTTP/1.1\r\nHost: x\r\n\r\n')
  // A client that starts after it and never finishes is closed by the request timeout first; the
  // slow handler's request was whole, so its own time is not limited.
  const late = await connect(port, 'POST /v1/topics HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{')
  await late.closed
  t.equal(lastAnswer(late.received()).status, 408)
  t.equal(slow.received(), '', 'not answered yet')
  release()
  await new Promise<void>((resolve) => slow.socket.once('data', () => resolve()))
  t.match(lastAnswer(slow.received()), { status: 200, body: { done: true } })
  slow.socket.destroy()
})

t.test('HTTP_MAX_CONNECTIONS: a connection over the cap is closed unanswered; one that frees up makes room', async (t) => {
  const { port } = await listening(t, { HTTP_MAX_CONNECTIONS: '5', HTTP_KEEP_ALIVE_TIMEOUT_MS: '60000', HTTP_HEADERS_TIMEOUT_MS: '60000', HTTP_REQUEST_TIMEOUT_MS: '60000' })
  const held: Client[] = []
  for (let i = 0; i < 5; i++) {
    const c = await connect(port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
    await once(c.socket, 'data')
    held.push(c)
  }
  t.teardown(() => { for (const c of held) c.socket.destroy() })
  const over = await connect(port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
  await over.closed
  t.equal(over.received(), '', 'the sixth connection is closed without an answer')
  t.ok(held.every((c) => !c.socket.destroyed), 'the five stay open')

  held.shift()!.socket.destroy()
  // The server learns of the close when it reads it: try until a connection is accepted again.
  let answer = ''
  while (answer === '') {
    const next = await connect(port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
    await next.closed
    answer = next.received()
  }
  t.match(lastAnswer(answer), { status: 200, body: { status: 'ok' } })
})

t.test("Node's own 400 and 431 answers come in the problem shape", async (t) => {
  const { port } = await listening(t)
  const bad = await connect(port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\u0001b\r\n\r\n')
  await bad.closed
  t.match(lastAnswer(bad.received()), { status: 400, type: /^application\/problem\+json/, body: { ...problem(400, 'malformed_request'), title: 'Bad Request', detail: String } })

  const big = await connect(port, `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20000)}\r\n\r\n`)
  await big.closed
  t.match(lastAnswer(big.received()), { status: 431, body: { ...problem(431, 'headers_too_large'), title: 'Request Header Fields Too Large' } })

  const garbage = await connect(port, 'NOT HTTP AT ALL\r\n\r\n')
  await garbage.closed
  t.match(lastAnswer(garbage.received()), { status: 400, body: problem(400, 'malformed_request') })
})

t.test('the limits are settings with defaults, checked together', async (t) => {
  const { testConfig } = await import('./helper.js')
  t.match(testConfig(), { HTTP_HEADERS_TIMEOUT_MS: 10000, HTTP_REQUEST_TIMEOUT_MS: 30000, HTTP_KEEP_ALIVE_TIMEOUT_MS: 72000, HTTP_MAX_CONNECTIONS: 4096, BODY_MAX_DEPTH: 32 })
  const refused = t.throws(() => testConfig({ HTTP_HEADERS_TIMEOUT_MS: '5000', HTTP_REQUEST_TIMEOUT_MS: '1000' })) as unknown as { problems: string[] }
  t.match(refused.problems, [/^HTTP_HEADERS_TIMEOUT_MS: must not be above HTTP_REQUEST_TIMEOUT_MS/])
  const app = await build(t)
  t.equal(app.server.maxConnections, 4096)
  t.equal(app.server.headersTimeout, 10000)
  t.equal(app.server.requestTimeout, 30000)
  t.equal(app.server.keepAliveTimeout, 72000)
})
