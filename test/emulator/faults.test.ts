import t from 'tap'
import { Agent, request } from 'undici'
import { createEmulator } from '../../src/emulator/emulator.js'
import {
  OTHER_PAGE,
  OTHER_PAGE_TOKEN,
  PAGE,
  PAGE_TOKEN,
  SEND_PATH,
  expectGraphError,
  listening,
  send,
  setup,
  text,
  withToken,
} from './fixtures/setup.js'

const sendPath = `${SEND_PATH}?access_token=${PAGE_TOKEN}`

async function waitFor(check: () => boolean, ms = 2000) {
  const until = Date.now() + ms
  while (!check()) {
    if (Date.now() > until) throw new Error('condition not reached')
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

t.test('errorRate answers a Graph error and processes nothing', async (t) => {
  const { emu } = setup(t)
  const token = emu.issueToken(PAGE, 'u1', 'topic')
  emu.setFaults({ errorRate: 1 })

  const res = await send(emu, withToken(token))
  t.equal(res.status, 500)
  t.match(expectGraphError(res.json), { code: 2, message: 'Service temporarily unavailable', type: 'OAuthException' })
  t.equal(res.json.error.is_transient, true)
  t.match(emu.requests[0], { outcome: 'error', fault: 'error_rate', error: { code: 2 } })
  t.same(emu.tokenUses(), new Map(), 'the token was not spent')

  emu.setFaults({ errorRate: 1, error: { code: 4, subcode: 2018354, message: '(#4) Too many notifications' } })
  const custom = await send(emu, withToken(token))
  t.equal(custom.status, 400)
  t.match(expectGraphError(custom.json), { code: 4, subcode: 2018354, message: '(#4) Too many notifications' })

  emu.setFaults({ errorRate: 1, error: { status: 503, code: 1 } })
  const withStatus = await send(emu, withToken(token))
  t.equal(withStatus.status, 503)
  t.equal(expectGraphError(withStatus.json).code, 1)

  emu.setFaults({ errorRate: 0 })
  t.equal((await send(emu, withToken(token))).status, 200)
  t.equal(emu.inbox(PAGE, 'u1').length, 1)
})

t.test('errorRate between 0 and 1 follows the random source', async (t) => {
  const draws = [0.1, 0.9, 0.49, 0.5]
  const { emu } = setup(t, { random: () => draws.shift() ?? 1 })
  await emu.personWrites(PAGE, 'u1')
  emu.setFaults({ errorRate: 0.5 })
  const statuses = []
  for (let i = 0; i < 4; i++) statuses.push((await send(emu, text('u1'))).status)
  t.same(statuses, [500, 200, 500, 200])
})

t.test('a Page configuration replaces the global one for that Page', async (t) => {
  const { emu } = setup(t)
  await emu.personWrites(PAGE, 'u1')
  await emu.personWrites(OTHER_PAGE, 'u2')

  emu.setFaults({ errorRate: 1, error: { code: 2 } })
  emu.setFaults({}, PAGE)
  t.equal((await send(emu, text('u1'))).status, 200, 'PAGE has its own empty configuration')
  t.equal((await send(emu, text('u2'), { token: OTHER_PAGE_TOKEN })).status, 500, 'OTHER_PAGE uses the global one')

  emu.clearFaults()
  emu.setFaults({ errorRate: 1, error: { code: 613 } }, OTHER_PAGE)
  t.equal((await send(emu, text('u1'))).status, 200)
  const other = await send(emu, text('u2'), { token: OTHER_PAGE_TOKEN })
  t.equal(expectGraphError(other.json).code, 613)
  const byPath = await send(emu, text('u2'), { token: OTHER_PAGE_TOKEN, path: `/v21.0/${OTHER_PAGE}/messages` })
  t.equal(expectGraphError(byPath.json).code, 613, 'the Page is found from the path as well')
})

t.test('http5xxRate answers a plain 502/503', async (t) => {
  const { emu } = setup(t)
  await emu.personWrites(PAGE, 'u1')
  emu.setFaults({ http5xxRate: 1 })
  for (let i = 0; i < 4; i++) {
    const res = await emu.app.inject({ method: 'POST', url: sendPath, payload: text('u1') })
    t.ok(res.statusCode === 502 || res.statusCode === 503, `status ${res.statusCode}`)
    t.match(res.headers['content-type'], /text\/html/)
    t.throws(() => JSON.parse(res.body), 'not a Graph body')
  }
  t.ok(emu.requests.every((r) => r.outcome === 'fault' && r.fault === 'http_5xx'))
  t.equal(emu.inbox(PAGE, 'u1').length, 0)
})

t.test('hangRate: never answers; the client times out; nothing is processed', async (t) => {
  const { emu, post } = await listening(t)
  const token = emu.issueToken(PAGE, 'u1', 'topic')
  emu.setFaults({ hangRate: 1 })
  await t.rejects(post(sendPath, withToken(token), { timeoutMs: 150 }), { name: 'TimeoutError' })
  t.match(emu.requests, [{ outcome: 'fault', fault: 'hang' }])
  t.same(emu.tokenUses(), new Map())
  emu.clearFaults()
  const retry = await post(sendPath, withToken(token))
  t.equal(retry.statusCode, 200, 'the token is still good')
  await retry.body.dump()
})

t.test('resetRate: the socket is destroyed without an answer', async (t) => {
  const { emu, post } = await listening(t)
  const token = emu.issueToken(PAGE, 'u1', 'topic')
  emu.setFaults({ resetRate: 1 })
  await t.rejects(post(sendPath, withToken(token)), { code: 'UND_ERR_SOCKET' })
  t.match(emu.requests, [{ outcome: 'fault', fault: 'reset' }])
  t.same(emu.tokenUses(), new Map())
  t.equal(emu.inbox(PAGE, 'u1').length, 0)
})

for (const mode of ['hang', 'reset'] as const) {
  t.test(`processThenFail '${mode}': delivered and spent, answer lost`, async (t) => {
    const { emu, post } = await listening(t)
    const token = emu.issueToken(PAGE, 'u1', 'topic')
    emu.setFaults(mode === 'hang' ? { hangRate: 1, processThenFail: 'hang' } : { resetRate: 1, processThenFail: 'reset' })

    const expected = mode === 'hang' ? { name: 'TimeoutError' } : { code: 'UND_ERR_SOCKET' }
    await t.rejects(post(sendPath, withToken(token, 'Ambiguous'), { timeoutMs: 150 }), expected)
    t.match(emu.requests[0], { outcome: 'accepted', fault: mode, tokenUsed: token, messageId: /^m_/ })
    t.same(emu.tokenUses(), new Map([[token, 1]]), 'the token was spent although the client saw an error')
    t.match(emu.inbox(PAGE, 'u1'), [{ message: { text: 'Ambiguous' }, via: 'one_time_notif_token' }])

    emu.clearFaults()
    const retry = await post(sendPath, withToken(token, 'Ambiguous'))
    t.equal(retry.statusCode, 400)
    t.equal(expectGraphError(await retry.body.json()).code, 100, 'the retry is refused as an invalid token')
    t.equal(emu.inbox(PAGE, 'u1').length, 1, 'and delivers nothing')
    t.same(emu.doubleSpends(), [])
  })
}

t.test("processThenFail names the mode that is deferred; the other one still happens first", async (t) => {
  const { emu, post } = await listening(t)
  const token = emu.issueToken(PAGE, 'u1', 'topic')
  emu.setFaults({ resetRate: 1, processThenFail: 'hang' })
  await t.rejects(post(sendPath, withToken(token)), { code: 'UND_ERR_SOCKET' })
  t.same(emu.tokenUses(), new Map())
})

t.test('latency delays the answer; a client that gives up early still spends the token', async (t) => {
  const { emu, post } = await listening(t)
  await emu.personWrites(PAGE, 'u1')
  emu.setFaults({ latencyMs: 120 })
  const started = Date.now()
  const res = await post(sendPath, text('u1'))
  await res.body.dump()
  t.equal(res.statusCode, 200)
  t.ok(Date.now() - started >= 110, `answered after ${Date.now() - started} ms`)

  const token = emu.issueToken(PAGE, 'u1', 'topic')
  emu.setFaults({ latencyMs: 200 })
  await t.rejects(post(sendPath, withToken(token), { timeoutMs: 50 }), { name: 'TimeoutError' })
  await waitFor(() => emu.tokenUses().get(token) === 1)
  t.pass('Meta-like: the request was processed after the client left')
})

t.test('many delayed answers at once raise no listener-leak warning', async (t) => {
  const { emu, base } = await listening(t)
  // More at once than the fixture's four connections, and more than EventTarget's default of 10 listeners.
  const agent = new Agent({ connections: 32 })
  t.teardown(() => agent.destroy())
  const warnings: string[] = []
  const onWarning = (w: Error) => { warnings.push(w.name) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  emu.setFaults({ latencyMs: 50 })
  const people = Array.from({ length: 20 }, (_, i) => `many${i}`)
  for (const psid of people) await emu.personWrites(PAGE, psid)
  const answers = await Promise.all(people.map(async (psid) => {
    const res = await request(base + sendPath, { method: 'POST', dispatcher: agent, headers: { 'content-type': 'application/json' }, body: JSON.stringify(text(psid)) })
    await res.body.dump()
    return res.statusCode
  }))
  t.same(answers, people.map(() => 200))
  await new Promise((resolve) => setImmediate(resolve))
  t.notOk(warnings.includes('MaxListenersExceededWarning'), warnings.join(', '))
})

t.test('maxRps answers 613 above the limit, per scope, on the emulator clock', async (t) => {
  const { emu, advance } = setup(t)
  await emu.personWrites(PAGE, 'u1')
  await emu.personWrites(OTHER_PAGE, 'u2')
  emu.setFaults({ maxRps: 2 })

  const statuses = []
  for (let i = 0; i < 3; i++) statuses.push((await send(emu, text('u1'))).status)
  t.same(statuses, [200, 200, 400])
  const limited = await send(emu, text('u2'), { token: OTHER_PAGE_TOKEN })
  t.match(expectGraphError(limited.json), { code: 613, message: /exceeded the rate limit/ }, 'global limit counts all Pages')
  t.match(emu.requests.at(-1), { outcome: 'error', fault: 'rate_limit', error: { code: 613 } })
  advance(1000)
  t.equal((await send(emu, text('u1'))).status, 200, 'a second later there is room again')

  emu.clearFaults()
  emu.setFaults({ maxRps: 1 }, PAGE)
  t.equal((await send(emu, text('u1'))).status, 200)
  t.equal(expectGraphError((await send(emu, text('u1'))).json).code, 613)
  t.equal((await send(emu, text('u2'), { token: OTHER_PAGE_TOKEN })).status, 200, 'other Pages are not limited')
  t.equal((await send(emu, text('u2'), { token: OTHER_PAGE_TOKEN })).status, 200)
  t.equal(emu.inbox(PAGE, 'u1').length, 4)
})

t.test('invalid fault configurations are refused', async (t) => {
  const { emu } = setup(t)
  t.throws(() => emu.setFaults({ errorRate: 1.5 }), RangeError)
  t.throws(() => emu.setFaults({ hangRate: -1 }), RangeError)
  t.throws(() => emu.setFaults({ latencyMs: -5 }), RangeError)
  t.throws(() => emu.setFaults({ processThenFail: 'explode' as 'hang' }), RangeError)
})

t.test('close() is prompt with hung requests and pending latency', async (t) => {
  const emu = createEmulator()
  emu.addPage({ id: PAGE, accessToken: PAGE_TOKEN })
  const base = await emu.listen(0)
  emu.setFaults({ hangRate: 1 })
  const post = () =>
    request(`${base}${sendPath}`, { method: 'POST', body: JSON.stringify(text('u1')), headers: { 'content-type': 'application/json' } })
  const hung = post()
  hung.catch(() => {})
  emu.setFaults({ latencyMs: 60_000 })
  const slow = post()
  slow.catch(() => {})
  await waitFor(() => emu.requests.length === 2)
  const started = Date.now()
  await emu.close()
  t.ok(Date.now() - started < 1000, `closed in ${Date.now() - started} ms`)
  await t.rejects(hung)
  await t.rejects(slow)
})
