import Fastify from 'fastify'
import t from 'tap'
import type { Emulator } from '../../src/emulator/emulator.js'
import { OTHER_PAGE, PAGE, expectGraphError, otnRequest, send, setup, text, withToken } from './fixtures/setup.js'

const DAY = 24 * 60 * 60 * 1000

const GENERIC = { message: '(#100) Invalid parameter', type: 'OAuthException', code: 100 }

/** The exact error body, fbtrace_id aside (checked for its format). */
function errorBody(t: { match(...args: any[]): void }, json: any) {
  t.match(json?.error?.fbtrace_id, /^A[\w-]{22}$/, 'a fresh fbtrace_id')
  const { fbtrace_id: _trace, ...rest } = json.error
  return rest
}

const lastEvent = (emu: Emulator) => JSON.parse(emu.webhooks.at(-1)!.body)

t.test('webhookStamps: how timestamp and entry.time are stamped', async (t) => {
  const expected = (now: number) => ({
    milliseconds: { time: now, timestamp: now },
    seconds: { time: Math.floor(now / 1000), timestamp: Math.floor(now / 1000) },
    string: { time: String(now), timestamp: String(now) },
    omitted: { time: now, timestamp: undefined },
  })
  for (const stamps of ['milliseconds', 'seconds', 'string', 'omitted'] as const) {
    const { emu, advance, now } = setup(t, { webhookStamps: stamps })
    advance(1234)
    await emu.personWrites(PAGE, 'u1', 'hi')
    const body = lastEvent(emu)
    const event = body.entry[0].messaging[0]
    t.same(
      { time: body.entry[0].time, timestamp: event.timestamp },
      expected(now())[stamps],
      `${stamps}: entry.time ${JSON.stringify(body.entry[0].time)}, timestamp ${JSON.stringify(event.timestamp)}`,
    )
    t.equal('timestamp' in event, stamps !== 'omitted', `${stamps}: timestamp key present unless omitted`)
    t.same(event.sender, { id: 'u1' })
    t.same(event.recipient, { id: PAGE }, 'recipient kept by default')
    t.equal(emu.webhooks.at(-1)!.at, now(), 'the record keeps epoch ms')
  }

  const { emu, advance, now } = setup(t, { webhookStamps: 'seconds' })
  advance(999)
  await emu.personWrites(PAGE, 'u1')
  const seconds = lastEvent(emu).entry[0].messaging[0].timestamp
  t.ok(Number.isInteger(seconds) && seconds < 1e11, 'seconds are an integer below 10^11 (MESSENGER.md §8)')
  t.equal(seconds, Math.floor(now() / 1000), 'rounded down')
})

t.test("webhookStamps 'mixed' cycles milliseconds, seconds, string, omitted, one per webhook", async (t) => {
  const received: any[] = []
  const hook = Fastify()
  hook.post('/webhooks/messenger', async (request) => {
    received.push(request.body)
    return 'EVENT_RECEIVED'
  })
  await hook.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => hook.close())
  const { port } = hook.server.address() as { port: number }

  const { emu, advance, now } = setup(t, { webhookStamps: 'mixed', webhookUrl: `http://127.0.0.1:${port}/webhooks/messenger` })
  const stamps: [unknown, unknown][] = []
  const expected: [unknown, unknown][] = []
  const kinds = ['milliseconds', 'seconds', 'string', 'omitted']
  for (let i = 0; i < 9; i++) {
    advance(1001)
    // Person writes and Notify Me clicks share the cycle.
    if (i % 3 === 2) {
      await send(emu, otnRequest('u1', 'Restock', `topic:${i}`))
      t.equal((await emu.clickNotifyMe(PAGE, 'u1')).status, 200)
    } else {
      t.equal((await emu.personWrites(PAGE, 'u1')).status, 200)
    }
    const body = received.at(-1)
    stamps.push([body.entry[0].time, body.entry[0].messaging[0].timestamp])
    const ms = now()
    const s = Math.floor(ms / 1000)
    expected.push(
      ({ milliseconds: [ms, ms], seconds: [s, s], string: [String(ms), String(ms)], omitted: [ms, undefined] } as const)[
        kinds[i % 4] as 'milliseconds'
      ] as [unknown, unknown],
    )
  }
  t.same(stamps, expected)
  t.same(
    received.map((b) => ('timestamp' in b.entry[0].messaging[0] ? 'has' : 'none')),
    ['has', 'has', 'has', 'none', 'has', 'has', 'has', 'none', 'has'],
  )
  t.match(received[2].entry[0].messaging[0], { optin: { type: 'one_time_notif_req', payload: 'topic:2' } })

  t.same(await emu.redeliverWebhook(), { status: 200 })
  t.same(received.at(-1), received.at(-2), 'a redelivery repeats the bytes and does not move the cycle')
  await emu.personWrites(PAGE, 'u1')
  t.equal(typeof received.at(-1).entry[0].messaging[0].timestamp, 'number')
  t.equal(received.at(-1).entry[0].messaging[0].timestamp, Math.floor(now() / 1000), 'the 10th webhook is the 2nd kind: seconds')

  emu.settings({ webhookStamps: 'mixed' })
  await emu.personWrites(PAGE, 'u1')
  t.equal(lastEvent(emu).entry[0].messaging[0].timestamp, now(), 'setting the stamps restarts the cycle at milliseconds')
  emu.reset()
  t.equal(emu.settings().webhookStamps, 'mixed', 'reset keeps the creation-time option')
  await emu.personWrites(PAGE, 'u1')
  t.equal(lastEvent(emu).entry[0].messaging[0].timestamp, emu.now(), 'and restarts the cycle')
})

t.test('omitRecipient: events carry no recipient, entry.id names the Page', async (t) => {
  const { emu, now } = setup(t, { omitRecipient: true })
  await emu.personWrites(OTHER_PAGE, 'u2', 'hey')
  t.same(lastEvent(emu), {
    object: 'page',
    entry: [
      {
        id: OTHER_PAGE,
        time: now(),
        messaging: [{ sender: { id: 'u2' }, timestamp: now(), message: { mid: lastEvent(emu).entry[0].messaging[0].message.mid, text: 'hey' } }],
      },
    ],
  })
  await emu.personWrites(PAGE, 'u1')
  await send(emu, otnRequest('u1'))
  const click = await emu.clickNotifyMe(PAGE, 'u1')
  const optin = lastEvent(emu)
  t.equal(optin.entry[0].id, PAGE)
  t.same(optin.entry[0].messaging[0], {
    sender: { id: 'u1' },
    timestamp: now(),
    optin: { type: 'one_time_notif_req', payload: 'topic:restock', one_time_notif_token: click.token },
  })

  emu.settings({ omitRecipient: false, webhookStamps: 'string' })
  await emu.personWrites(PAGE, 'u1')
  t.match(lastEvent(emu).entry[0].messaging[0], { recipient: { id: PAGE }, timestamp: String(now()) }, 'changed at run time')
})

const INVALID_BODIES: [string, Record<string, unknown>][] = [
  ['no recipient', { message: { text: 'x' } }],
  ['two recipient fields', { recipient: { id: 'u1', one_time_notif_token: 'abc' }, message: { text: 'x' } }],
  ['unsupported recipient', { recipient: { user_ref: 'r' }, message: { text: 'x' } }],
  ['no message', { recipient: { id: 'u1' } }],
  ['empty text', { recipient: { id: 'u1' }, message: { text: '  ' } }],
  ['text too long', { recipient: { id: 'u1' }, message: { text: 'a'.repeat(2001) } }],
  ['attachment type', { recipient: { id: 'u1' }, message: { attachment: { type: 'gif', payload: {} } } }],
  ['otn title too long', otnRequest('u1', 'x'.repeat(66))],
  ['messaging_type', { ...text('u1'), messaging_type: 'PROMO' }],
  ['tag missing', { ...text('u1'), messaging_type: 'MESSAGE_TAG' }],
  ['notification_type', { ...text('u1'), notification_type: 'LOUD' }],
  ['sender_action', { recipient: { id: 'u1' }, sender_action: 'dance' }],
]

t.test("paramErrors 'generic': every parameter refusal is the bare (#100) Invalid parameter", async (t) => {
  const { emu } = setup(t, { paramErrors: 'generic' })
  await emu.personWrites(PAGE, 'u1')
  for (const [name, body] of INVALID_BODIES) {
    const res = await send(emu, body)
    t.equal(res.status, 400, `${name}: 400`)
    t.same(errorBody(t, res.json), GENERIC, `${name}: bare body, no subcode`)
  }
  t.equal(emu.inbox(PAGE, 'u1').length, 0)

  const malformed = await emu.app.inject({
    method: 'POST',
    url: '/v21.0/me/messages?access_token=page-token-1',
    headers: { 'content-type': 'application/json' },
    payload: '{not json',
  })
  t.same(errorBody(t, malformed.json()), GENERIC, 'a body that does not parse too')

  t.match(expectGraphError((await send(emu, text('nobody'))).json), { code: 100, subcode: 2018001 }, 'non-parameter errors keep their detail')
  t.equal((await send(emu, text('u1'))).status, 200, 'a valid message still goes')
})

t.test('a refused parameter never spends the token, in either wording', async (t) => {
  for (const paramErrors of ['generic', 'detailed'] as const) {
    const { emu } = setup(t, { paramErrors })
    const token = emu.issueToken(PAGE, 'u1', 'topic')
    const bad: Record<string, unknown>[] = [
      { ...withToken(token), message: { text: '' } },
      { ...withToken(token), messaging_type: 'PROMO' },
      { ...withToken(token), notification_type: 'LOUD' },
      { ...withToken(token), message: otnRequest('u1').message },
      { recipient: { one_time_notif_token: token, id: 'u1' }, message: { text: 'x' } },
    ]
    for (const body of bad) {
      const res = await send(emu, body)
      const e = expectGraphError(res.json)
      if (paramErrors === 'generic') t.same(errorBody(t, res.json), GENERIC)
      else t.not(e.message, GENERIC.message, `detailed: ${e.message}`)
    }
    t.same(emu.tokenUses(), new Map(), `${paramErrors}: not spent`)
    t.same(emu.audit(), { requests: bad.length, accepted: 0, tokens_accepted: 0, double_spends: 0 })
    t.equal((await send(emu, withToken(token))).status, 200, `${paramErrors}: the token is still good`)
    t.same(emu.tokenUses(), new Map([[token, 1]]))
  }
})

t.test("tokenRefusal 'generic_parameter': used, unknown, expired and foreign tokens get the bare 100", async (t) => {
  const { emu, advance } = setup(t, { tokenRefusal: 'generic_parameter' })
  const used = emu.issueToken(PAGE, 'u1', 'topic')
  const expiring = emu.issueToken(PAGE, 'u1', 'topic')
  const foreign = emu.issueToken(OTHER_PAGE, 'u9', 'topic')
  t.equal((await send(emu, withToken(used))).status, 200)
  advance(365 * DAY)
  for (const [name, token] of [
    ['used', used],
    ['unknown', 'x'.repeat(64)],
    ['expired', expiring],
    ['foreign', foreign],
  ]) {
    const res = await send(emu, withToken(token))
    t.equal(res.status, 400)
    t.same(errorBody(t, res.json), GENERIC, `${name}: no subcode, nothing named`)
  }
  t.same(emu.tokenUses(), new Map([[used, 1]]))
  t.same(emu.doubleSpends(), [])

  emu.settings({ tokenRefusal: 'invalid_parameter' })
  t.match(expectGraphError((await send(emu, withToken(used))).json), { message: '(#100) The parameter one_time_notif_token is invalid' })
  emu.settings({ tokenRefusal: 'outside_window' })
  t.match(expectGraphError((await send(emu, withToken(used))).json), { code: 10, subcode: 2018278 })
})

t.test('person-level refusals by reason; none spends a token', async (t) => {
  const cases = [
    [
      'unavailable',
      { message: "(#551) This person isn't available right now.", type: 'OAuthException', code: 551, error_subcode: 1545041 },
    ],
    ['not_receiving', { message: "(#200) This person isn't receiving messages from you right now.", type: 'OAuthException', code: 200 }],
    ['blocked', { message: "(#10) This person isn't available right now.", type: 'OAuthException', code: 10 }],
  ] as const
  for (const [reason, expected] of cases) {
    const { emu } = setup(t)
    await emu.personWrites(PAGE, 'u1')
    const otn = emu.issueToken(PAGE, 'u1', 'topic')
    const recurring = emu.issueToken(PAGE, 'u1', 'weekly', { kind: 'notification_messages' })
    emu.setPersonAvailable(PAGE, 'u1', false, reason)
    for (const body of [
      text('u1'),
      otnRequest('u1'),
      { recipient: { id: 'u1' }, sender_action: 'typing_on' },
      withToken(otn),
      { recipient: { notification_messages_token: recurring }, message: { text: 'x' } },
    ]) {
      const res = await send(emu, body)
      t.equal(res.status, 400)
      t.same(errorBody(t, res.json), expected, `${reason}: ${JSON.stringify(Object.keys(body.recipient as object))}`)
    }
    t.same(emu.tokenUses(), new Map(), `${reason}: the token was not spent`)
    t.same(emu.audit(), { requests: 5, accepted: 0, tokens_accepted: 0, double_spends: 0 })
    t.same(emu.inbox(PAGE, 'u1'), [])
    t.match(emu.requests.at(-2), { outcome: 'error', error: { code: expected.code } })

    emu.setPersonAvailable(PAGE, 'u1', true)
    t.equal((await send(emu, withToken(otn))).status, 200, `${reason}: available again, the token works`)
  }

  const { emu } = setup(t)
  emu.setPersonAvailable(PAGE, 'u1', false)
  await emu.personWrites(PAGE, 'u1')
  t.match(expectGraphError((await send(emu, text('u1'))).json), { code: 551, subcode: 1545041 }, "the default reason is 'unavailable'")
  t.throws(() => emu.setPersonAvailable(PAGE, 'u1', false, 'asleep' as any), RangeError)
})

t.test('availability over the control API takes a reason', async (t) => {
  const { emu } = setup(t)
  await emu.personWrites(PAGE, 'u1')
  const token = emu.issueToken(PAGE, 'u1', 'topic')
  const put = (body: unknown, pageId = PAGE) =>
    emu.app.inject({ method: 'PUT', url: `/_emulator/persons/${pageId}/u1/availability`, payload: body as object })

  const blocked = await put({ available: false, reason: 'blocked' })
  t.equal(blocked.statusCode, 200)
  t.same(blocked.json(), { available: false, reason: 'blocked' })
  t.same(errorBody(t, (await send(emu, withToken(token))).json), {
    message: "(#10) This person isn't available right now.",
    type: 'OAuthException',
    code: 10,
  })

  t.same((await put({ available: false, reason: 'not_receiving' })).json(), { available: false, reason: 'not_receiving' })
  t.match(expectGraphError((await send(emu, withToken(token))).json), { code: 200, subcode: undefined })

  t.same((await put({ available: false })).json(), { available: false, reason: 'unavailable' })
  t.match(expectGraphError((await send(emu, withToken(token))).json), { code: 551, subcode: 1545041 })

  const wrong = await put({ available: false, reason: 'asleep' })
  t.equal(wrong.statusCode, 400)
  t.type(wrong.json().error, 'string')
  t.equal((await put({ available: false }, '404')).statusCode, 404)
  t.same(emu.tokenUses(), new Map(), 'nothing spent so far')

  t.same((await put({ available: true })).json(), { available: true })
  t.equal((await send(emu, withToken(token))).status, 200)
})

t.test('repeated opt-in requests: 613/1893016 with its exact body, settable at run time', async (t) => {
  const { emu, advance } = setup(t)
  await emu.personWrites(PAGE, 'u1')
  t.equal((await send(emu, otnRequest('u1'))).status, 200)
  t.equal((await send(emu, otnRequest('u1'))).status, 200, 'unlimited by default')

  emu.settings({ optinRequestCooldownMs: 60_000 })
  const refused = await send(emu, otnRequest('u1'))
  t.equal(refused.status, 400)
  t.same(errorBody(t, refused.json), {
    message: '(#613) A one-time notification request on this topic was sent to this person recently.',
    type: 'OAuthException',
    code: 613,
    error_subcode: 1893016,
    is_transient: true,
  })
  advance(60_000)
  t.equal((await send(emu, otnRequest('u1'))).status, 200, 'after the cooldown')
  emu.settings({ optinRequestCooldownMs: null })
  t.equal((await send(emu, otnRequest('u1'))).status, 200, 'null lifts the limit')
  t.equal(emu.inbox(PAGE, 'u1').length, 4)
})
