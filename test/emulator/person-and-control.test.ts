import { createHmac, timingSafeEqual } from 'node:crypto'
import Fastify from 'fastify'
import t from 'tap'
import { request } from 'undici'
import { configFromEnv, startFromEnv } from '../../src/emulator/from-env.js'
import { OTHER_PAGE, PAGE, SEND_PATH, listening, otnRequest, send, setup, withToken } from './fixtures/setup.js'

const SECRET = 'webhook-secret'

interface Received {
  raw: Buffer
  body: any
  signature256?: string
  signature1?: string
  valid256: boolean
  valid1: boolean
}

function verify(raw: Buffer, header: string | undefined, algorithm: 'sha256' | 'sha1'): boolean {
  if (!header?.startsWith(`${algorithm}=`)) return false
  const expected = createHmac(algorithm, SECRET).update(raw).digest()
  const given = Buffer.from(header.slice(algorithm.length + 1), 'hex')
  return given.length === expected.length && timingSafeEqual(given, expected)
}

/** A stand-in for the service's webhook endpoint that checks signatures over the raw bytes. */
async function receiver(t: { teardown(fn: () => unknown): void }) {
  const received: Received[] = []
  let status = 200
  const app = Fastify()
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_req, raw, done) => done(null, raw))
  app.post('/webhooks/messenger', async (request, reply) => {
    const raw = request.body as Buffer
    const signature256 = request.headers['x-hub-signature-256'] as string | undefined
    const signature1 = request.headers['x-hub-signature'] as string | undefined
    received.push({
      raw,
      body: JSON.parse(raw.toString('utf8')),
      signature256,
      signature1,
      valid256: verify(raw, signature256, 'sha256'),
      valid1: verify(raw, signature1, 'sha1'),
    })
    return reply.code(status).send(status === 200 ? 'EVENT_RECEIVED' : 'nope')
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const { port } = app.server.address() as { port: number }
  return {
    url: `http://127.0.0.1:${port}/webhooks/messenger`,
    received,
    answer: (s: number) => {
      status = s
    },
  }
}

t.test('a person writing posts a signed message event and opens the window', async (t) => {
  const hook = await receiver(t)
  const { emu, now } = setup(t, { appSecret: SECRET, webhookUrl: hook.url })

  const result = await emu.personWrites(PAGE, 'u1', 'Hi, any news about my order? ✨')
  t.same(result, { status: 200 })
  t.equal(hook.received.length, 1)
  const [event] = hook.received
  t.ok(event.valid256, 'X-Hub-Signature-256 is the HMAC-SHA256 of the raw bytes')
  t.ok(event.valid1, 'X-Hub-Signature (sha1) too, like Meta')
  t.same(event.body, {
    object: 'page',
    entry: [
      {
        id: PAGE,
        time: now(),
        messaging: [
          {
            sender: { id: 'u1' },
            recipient: { id: PAGE },
            timestamp: now(),
            message: { mid: event.body.entry[0].messaging[0].message.mid, text: 'Hi, any news about my order? ✨' },
          },
        ],
      },
    ],
  })
  t.match(event.body.entry[0].messaging[0].message.mid, /^m_[\w-]+$/)
  t.equal(event.raw.toString('utf8'), emu.webhooks[0].body, 'the recorded body is the bytes sent')
  t.equal((await send(emu, { recipient: { id: 'u1' }, message: { text: 'Yes!' } })).status, 200, 'window open')
})

t.test('clicking Notify Me posts a signed messaging_optins event with a fresh token', async (t) => {
  const hook = await receiver(t)
  const { emu, now, advance } = setup(t, { appSecret: SECRET, webhookUrl: hook.url })
  await emu.personWrites(PAGE, 'u1')
  await send(emu, otnRequest('u1', 'Back in stock?', 'topic:restock'))
  advance(5000)

  const click = await emu.clickNotifyMe(PAGE, 'u1')
  t.equal(click.status, 200)
  const event = hook.received[1]
  t.ok(event.valid256)
  t.same(event.body.entry[0].messaging[0], {
    sender: { id: 'u1' },
    recipient: { id: PAGE },
    timestamp: now(),
    optin: { type: 'one_time_notif_req', payload: 'topic:restock', one_time_notif_token: click.token },
  })
  t.equal(event.body.entry[0].time, now())
  t.equal((await send(emu, withToken(click.token))).status, 200, 'the token in the webhook is usable')
})

t.test('a crowd: many people write and click Notify Me, delivered as batched signed webhooks whose tokens are usable', async (t) => {
  const hook = await receiver(t)
  const { emu } = setup(t, { appSecret: SECRET, webhookUrl: hook.url })
  const res = await emu.app.inject({
    method: 'POST', url: `/_emulator/pages/${PAGE}/crowd`,
    payload: { people: 120, psid_prefix: 'c', payload: 'topic:crowd', tokens_per_person: 2, writes: true, per_delivery: 100 },
  })
  t.equal(res.statusCode, 200, res.body)
  t.same(res.json(), { people: 120, events: 360, deliveries: 4, failed_deliveries: 0 })
  t.same(hook.received.map((r) => r.body.entry.length), [100, 100, 100, 60], 'one entry per event, at most per_delivery a delivery')
  t.ok(hook.received.every((r) => r.valid256), 'every delivery signed')
  const events = hook.received.flatMap((r) => r.body.entry.map((e: any) => e.messaging[0]))
  const tokens = events.filter((e) => e.optin).map((e) => e.optin.one_time_notif_token)
  t.equal(tokens.length, 240)
  t.equal(new Set(tokens).size, 240, 'every token fresh')
  t.equal(events.filter((e) => e.message && e.sender.id === 'c7').length, 1, 'each person wrote once')
  t.equal(hook.received.length, 4, 'not recorded as separate webhooks')
  t.equal(emu.webhooks.length, 0)
  t.equal((await send(emu, withToken(tokens[17]))).status, 200, 'a crowd token is usable')
  const unknown = await emu.app.inject({ method: 'POST', url: '/_emulator/pages/999/crowd', payload: { people: 1, psid_prefix: 'x' } })
  t.equal(unknown.statusCode, 404)
})

t.test("the receiver's status is passed back; redelivery repeats the exact bytes", async (t) => {
  const hook = await receiver(t)
  const { emu } = setup(t, { appSecret: SECRET, webhookUrl: hook.url })
  hook.answer(503)
  t.same(await emu.personWrites(PAGE, 'u1'), { status: 503 })
  hook.answer(200)
  t.same(await emu.redeliverWebhook(), { status: 200 })
  t.equal(hook.received.length, 2)
  t.ok(hook.received[0].raw.equals(hook.received[1].raw), 'byte for byte')
  t.equal(hook.received[0].signature256, hook.received[1].signature256)
  t.same(
    emu.webhooks.map((w) => w.status),
    [503, 200],
  )
  await t.rejects(emu.redeliverWebhook(9), RangeError)
})

t.test('without an app secret webhooks go out unsigned', async (t) => {
  const hook = await receiver(t)
  const { emu } = setup(t, { webhookUrl: hook.url })
  await emu.personWrites(PAGE, 'u1')
  t.equal(hook.received[0].signature256, undefined)
  t.equal(hook.received[0].signature1, undefined)
})

t.test('an unreachable webhook URL reports an error instead of throwing', async (t) => {
  const hook = await receiver(t)
  const deadUrl = hook.url.replace(/:\d+\//, ':1/')
  const { emu } = setup(t, { appSecret: SECRET, webhookUrl: deadUrl })
  const wrote = await emu.personWrites(PAGE, 'u1')
  t.equal(wrote.status, null)
  t.type(wrote.error, 'string')
  await send(emu, otnRequest('u1'))
  const click = await emu.clickNotifyMe(PAGE, 'u1')
  t.equal(click.status, null)
  t.ok(click.token, 'the person still clicked: the token exists')
  t.equal(emu.webhooks.length, 2)
})

type Call = (method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, body?: unknown) => Promise<{ status: number; json: any }>

async function control(t: Parameters<typeof listening>[0]) {
  const ctx = await listening(t)
  const call: Call = async (method, path, body) => {
    const res = await request(ctx.base + path, {
      method,
      dispatcher: ctx.agent,
      ...(body !== undefined ? { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) } : {}),
    })
    const textBody = await res.body.text()
    return { status: res.statusCode, json: textBody === '' ? undefined : JSON.parse(textBody) }
  }
  const sendAs = (accessToken: string, body: unknown) => call('POST', `${SEND_PATH}?access_token=${accessToken}`, body)
  return { ...ctx, call, sendAs }
}

const masked = /^.{4}….{4}$/

t.test('pages', async (t) => {
  const { call, sendAs } = await control(t)
  const created = await call('POST', '/_emulator/pages', { id: '3000003', access_token: 'third-token', name: 'Third' })
  t.equal(created.status, 201)
  t.same(created.json, { id: '3000003', name: 'Third' })
  const listed = await call('GET', '/_emulator/pages')
  t.same(listed.json.items.map((p: any) => p.id), [PAGE, OTHER_PAGE, '3000003'])
  t.notOk(JSON.stringify(listed.json).includes('token'), 'access tokens are never shown')

  const invalid = await call('POST', '/_emulator/pages', { id: '', access_token: 'x' })
  t.equal(invalid.status, 400)
  t.type(invalid.json.error, 'string')

  const sent = await sendAs('third-token', { recipient: { id: 'nobody' }, message: { text: 'x' } })
  t.equal(sent.json.error.error_subcode, 2018001, 'the new token authenticates')
})

t.test('person actions, inbox, requests and audit', async (t) => {
  const { emu, call, sendAs } = await control(t)

  t.equal((await call('POST', `/_emulator/persons/404/u1/messages`)).status, 404)
  const wrote = await call('POST', `/_emulator/persons/${PAGE}/u1/messages`, { text: 'hello page' })
  t.same(wrote, { status: 200, json: { webhook_status: null } })

  const noRequest = await call('POST', `/_emulator/persons/${PAGE}/u1/notify-me`)
  t.equal(noRequest.status, 409)
  t.match(noRequest.json.error, /no unanswered one_time_notif_req/)

  t.equal((await sendAs('page-token-1', otnRequest('u1', 'Restock', 'topic:restock'))).status, 200)
  const clicked = await call('POST', `/_emulator/persons/${PAGE}/u1/notify-me`)
  t.equal(clicked.status, 200)
  t.match(clicked.json, { token_issued: true, token: masked, webhook_status: null })
  const token: string = JSON.parse(emu.webhooks.at(-1)!.body).entry[0].messaging[0].optin.one_time_notif_token
  t.equal(clicked.json.token, `${token.slice(0, 4)}…${token.slice(-4)}`)

  t.equal((await sendAs('page-token-1', withToken(token, 'It is back'))).status, 200)
  t.equal((await sendAs('page-token-1', withToken(token, 'It is back'))).status, 400)

  const inbox = await call('GET', `/_emulator/persons/${PAGE}/u1/inbox`)
  t.equal(inbox.json.items.length, 2)
  t.match(inbox.json.items[0], { via: 'window', message: { attachment: { type: 'template' } } })
  t.match(inbox.json.items[1], { via: 'one_time_notif_token', token: masked, message: { text: 'It is back' } })

  const requests = await call('GET', '/_emulator/requests?limit=2')
  t.equal(requests.json.total, 3)
  t.equal(requests.json.items.length, 2)
  t.match(requests.json.items, [
    { outcome: 'accepted', recipient: { one_time_notif_token: masked }, tokenUsed: masked },
    { outcome: 'error', error: { code: 100 }, recipient: { one_time_notif_token: masked } },
  ])
  t.notOk(JSON.stringify(requests.json).includes(token), 'token values never leave over HTTP')
  t.equal((await call('GET', '/_emulator/requests?limit=0')).status, 400)

  const audit = await call('GET', '/_emulator/audit')
  t.same(audit.json, { requests: 3, accepted: 2, tokens_accepted: 1, double_spends: 0 })

  const unavailable = await call('PUT', `/_emulator/persons/${PAGE}/u1/availability`, { available: false })
  t.same(unavailable.json, { available: false, reason: 'unavailable' })
  const refused = await sendAs('page-token-1', { recipient: { id: 'u1' }, message: { text: 'x' } })
  t.equal(refused.json.error.code, 551)
})

t.test('faults over HTTP', async (t) => {
  const { call, sendAs } = await control(t)
  await call('POST', `/_emulator/persons/${PAGE}/u1/messages`)

  const set = await call('PUT', '/_emulator/faults', { errorRate: 1, error: { code: 2, subcode: 2018344 } })
  t.equal(set.status, 200)
  t.same(set.json, { global: { errorRate: 1, error: { code: 2, subcode: 2018344 } }, pages: {} })
  const perPage = await call('PUT', '/_emulator/faults', { page_id: PAGE, maxRps: 1 })
  t.same(perPage.json.pages, { [PAGE]: { maxRps: 1 } })

  t.equal((await sendAs('page-token-1', { recipient: { id: 'u1' }, message: { text: 'x' } })).status, 200)
  const limited = await sendAs('page-token-1', { recipient: { id: 'u1' }, message: { text: 'x' } })
  t.equal(limited.json.error.code, 613, 'the Page rule replaced the global error rate')

  t.equal((await call('PUT', '/_emulator/faults', { errorRate: 2 })).status, 400)
  t.equal((await call('PUT', '/_emulator/faults', { errrorRate: 1 })).status, 400, 'typos are refused')
  t.equal((await call('PUT', '/_emulator/faults', { processThenFail: 'boom' })).status, 400)

  t.equal((await call('DELETE', '/_emulator/faults')).status, 204)
  t.same((await call('GET', '/_emulator/faults')).json, { global: {}, pages: {} })
})

t.test('clock and reset', async (t) => {
  const { emu, call, sendAs, now } = await control(t)
  await call('POST', `/_emulator/persons/${PAGE}/u1/messages`)
  t.same((await call('GET', '/_emulator/clock')).json, { now: now() })

  const moved = await call('POST', '/_emulator/clock', { advance_ms: 24 * 60 * 60 * 1000 })
  t.same(moved.json, { now: now() + 24 * 60 * 60 * 1000 })
  t.equal(emu.now(), moved.json.now)
  const closed = await sendAs('page-token-1', { recipient: { id: 'u1' }, message: { text: 'x' } })
  t.equal(closed.json.error.error_subcode, 2018278, 'the advanced clock closed the window')
  t.equal((await call('POST', '/_emulator/clock', { advance_ms: -1 })).status, 400)

  t.equal((await call('POST', '/_emulator/reset')).status, 204)
  t.same((await call('GET', '/_emulator/audit')).json, { requests: 0, accepted: 0, tokens_accepted: 0, double_spends: 0 })
  t.same((await call('GET', '/_emulator/clock')).json, { now: now() }, 'reset puts the clock back')
  t.equal((await call('GET', '/_emulator/pages')).json.items.length, 2, 'Pages are kept')
  t.equal((await call('GET', '/_emulator/nope')).status, 404)
})

t.test('configuration from the environment', async (t) => {
  t.same(configFromEnv({}), {
    port: 3999,
    host: '127.0.0.1',
    appSecret: undefined,
    requireProof: false,
    webhookUrl: 'http://127.0.0.1:3000/webhooks/messenger',
    pages: [{ id: '1000001', accessToken: 'demo-page-token' }],
    webhookStamps: 'milliseconds',
    omitRecipient: false,
    paramErrors: 'detailed',
    tokenRefusal: 'invalid_parameter',
    optinRequestCooldownMs: undefined,
  })
  t.match(configFromEnv({ EMULATOR_PAGES: '1:a, 2:b:c', EMULATOR_REQUIRE_PROOF: 'true', META_APP_SECRET: 's' }), {
    pages: [
      { id: '1', accessToken: 'a' },
      { id: '2', accessToken: 'b:c' },
    ],
    requireProof: true,
    appSecret: 's',
  })
  t.throws(() => configFromEnv({ EMULATOR_PAGES: 'no-token-here' }), /EMULATOR_PAGES: expected pageId:accessToken/)
  t.throws(() => configFromEnv({ EMULATOR_PORT: '70000' }), /EMULATOR_PORT/)
  t.throws(() => configFromEnv({ EMULATOR_PORT: '' }), /EMULATOR_PORT/)
  t.throws(() => configFromEnv({ EMULATOR_REQUIRE_PROOF: 'yes' }), /EMULATOR_REQUIRE_PROOF/)

  const { emulator, url } = await startFromEnv(
    { EMULATOR_PORT: '0', EMULATOR_PAGES: '111:tok-a,222:tok-b', META_APP_SECRET: 's', EMULATOR_REQUIRE_PROOF: '1' },
    { logger: false },
  )
  t.teardown(() => emulator.close())
  t.match(url, /^http:\/\/127\.0\.0\.1:\d+$/)
  const pages = await request(`${url}/_emulator/pages`)
  t.same(await pages.body.json(), { items: [{ id: '111', name: 'Page 111' }, { id: '222', name: 'Page 222' }] })
  const sent = await request(`${url}/v21.0/me/messages?access_token=tok-b`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ recipient: { id: 'u' }, message: { text: 'x' } }),
  })
  t.match(await sent.body.json(), { error: { code: 100, message: /appsecret_proof/ } }, 'EMULATOR_REQUIRE_PROOF applies')
})
