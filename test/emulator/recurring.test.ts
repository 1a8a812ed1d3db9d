import { createHmac } from 'node:crypto'
import Fastify from 'fastify'
import t from 'tap'
import type { Emulator } from '../../src/emulator/emulator.js'
import { OTHER_PAGE, PAGE, expectGraphError, send, setup } from './fixtures/setup.js'

const SECRET = 'webhook-secret'
const HOUR = 60 * 60 * 1000
const DAY = 24 * HOUR

const recurringRequest = (psid: string, options: Record<string, unknown> = {}) => ({
  recipient: { id: psid },
  message: {
    attachment: {
      type: 'template',
      payload: { template_type: 'notification_messages', title: 'Weekly deals', payload: 'topic:deals', ...options },
    },
  },
})

const withRecurring = (token: string, text = 'Deal of the week') => ({
  recipient: { notification_messages_token: token },
  messaging_type: 'UPDATE',
  message: { text },
})

const lastEvent = (emu: Emulator) => JSON.parse(emu.webhooks.at(-1)!.body).entry[0].messaging[0]

async function control(emu: Emulator, method: 'GET' | 'POST' | 'PUT', url: string, payload?: object) {
  const res = await emu.app.inject({ method, url: `/_emulator${url}`, ...(payload !== undefined ? { payload } : {}) })
  return { status: res.statusCode, body: res.body, json: res.body === '' ? undefined : (res.json() as any) }
}

/** A stand-in for the service's webhook endpoint that keeps the raw bytes and checks the signature. */
async function receiver(t: { teardown(fn: () => unknown): void }) {
  const received: { body: any; valid: boolean }[] = []
  const app = Fastify()
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_req, raw, done) => done(null, raw))
  app.post('/webhooks/messenger', async (request) => {
    const raw = request.body as Buffer
    const expected = 'sha256=' + createHmac('sha256', SECRET).update(raw).digest('hex')
    received.push({ body: JSON.parse(raw.toString('utf8')), valid: request.headers['x-hub-signature-256'] === expected })
    return 'EVENT_RECEIVED'
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const { port } = app.server.address() as { port: number }
  return { url: `http://127.0.0.1:${port}/webhooks/messenger`, received }
}

t.test('the notification_messages template: to a recipient id inside the window, validated as Meta documents it', async (t) => {
  const { emu, advance } = setup(t)
  await emu.personWrites(PAGE, 'u1')
  const full = recurringRequest('u1', {
    image_url: 'https://example.com/deals.png',
    notification_messages_frequency: 'WEEKLY',
    notification_messages_cta_text: 'GET_UPDATES',
    notification_messages_reoptin: 'ENABLED',
    notification_messages_timezone: 'Europe/Paris',
  })
  const ok = await send(emu, full)
  t.equal(ok.status, 200, JSON.stringify(ok.json))
  t.match(ok.json, { recipient_id: 'u1', message_id: /^m_/ })
  t.equal((await send(emu, recurringRequest('u1', { title: '🔔'.repeat(65) }))).status, 200, '65 characters (code points) is the limit')

  const refused: [Record<string, unknown>, RegExp][] = [
    [{ payload: undefined }, /\[payload\]\[payload\] must be a non-empty string/],
    [{ title: 'x'.repeat(66) }, /\[title\] must be less than or equal to 65/],
    [{ title: ' ' }, /\[title\] must be non-empty/],
    [{ notification_messages_frequency: 'HOURLY' }, /notification_messages_frequency\] must be one of \{DAILY, WEEKLY, MONTHLY\}/],
    [{ notification_messages_cta_text: 'FREQUENCY' }, /notification_messages_cta_text\] must be one of \{ALLOW, GET, GET_UPDATES, OPT_IN, SIGN_UP\}/],
    [{ notification_messages_reoptin: 'YES' }, /notification_messages_reoptin\] must be one of \{ENABLED\}/],
    [{ notification_messages_timezone: 'Mars/Olympus_Mons' }, /notification_messages_timezone\] must be a valid time zone/],
    [{ image_url: 'deals.png' }, /image_url\] should represent a valid URL/],
  ]
  for (const [options, message] of refused) {
    const res = await send(emu, recurringRequest('u1', options))
    t.equal(res.status, 400, JSON.stringify(options))
    t.match(expectGraphError(res.json), { code: 100, type: 'OAuthException', message }, JSON.stringify(options))
  }

  const token = emu.issueToken(PAGE, 'u1', 'topic:deals', { kind: 'notification_messages' })
  const toToken = await send(emu, { ...recurringRequest('u1'), recipient: { notification_messages_token: token } })
  t.match(expectGraphError(toToken.json), { code: 100, message: /notification_messages template can only be sent to a recipient id/ })

  advance(DAY)
  const late = await send(emu, { ...recurringRequest('u1'), messaging_type: 'MESSAGE_TAG', tag: 'HUMAN_AGENT' })
  t.match(expectGraphError(late.json), { code: 10, subcode: 2018278 }, 'only inside the 24-hour window, whatever the tag')
  t.equal(emu.requests.filter((r) => r.outcome === 'accepted').length, 2)
})

t.test('a person accepts: a signed opt-in webhook with the frequency and time zone the template asked; the token sends', async (t) => {
  const hook = await receiver(t)
  const { emu, now, advance } = setup(t, { appSecret: SECRET, webhookUrl: hook.url })
  await emu.personWrites(PAGE, 'u1')
  await send(emu, recurringRequest('u1', { notification_messages_frequency: 'WEEKLY', notification_messages_timezone: 'Europe/Paris' }))
  advance(5000)

  const res = await control(emu, 'POST', `/persons/${PAGE}/u1/recurring/accept`)
  t.equal(res.status, 200, res.body)
  t.match(res.json, { token_issued: true, token: /^.{4}….{4}$/, webhook_status: 200 })
  t.equal(hook.received.length, 2)
  t.ok(hook.received[1].valid, 'signed with the app secret')
  const event = hook.received[1].body.entry[0].messaging[0]
  const token = event.optin.notification_messages_token
  t.notOk(res.body.includes(token), 'the control API never shows the token')
  t.same(event, {
    sender: { id: 'u1' },
    recipient: { id: PAGE },
    timestamp: now(),
    optin: {
      type: 'notification_messages',
      payload: 'topic:deals',
      notification_messages_token: token,
      notification_messages_frequency: 'WEEKLY',
      notification_messages_timezone: 'Europe/Paris',
      token_expiry_timestamp: Date.UTC(2026, 9, 15, 12, 0, 5), // weekly: nine months
      user_token_status: 'NOT_REFRESHED',
      title: 'Weekly deals',
    },
  })
  const again = await control(emu, 'POST', `/persons/${PAGE}/u1/recurring/accept`)
  t.equal(again.status, 409, 'the request was answered')

  advance(7 * DAY) // the window has closed: the token is what reaches the person
  const sent = await send(emu, withRecurring(token))
  t.equal(sent.status, 200, JSON.stringify(sent.json))
  t.match(emu.inbox(PAGE, 'u1').at(-1), { via: 'notification_messages_token', token, message: { text: 'Deal of the week' } })
  t.match(emu.requests.at(-1), { outcome: 'accepted', tokenUsed: token })
  t.same(emu.tokenUses(), new Map(), 'recurring tokens are not counted as single-use OTN tokens')
})

t.test('without a frequency: no frequency and no expiry, the time zone of the person, Meta’s default title', async (t) => {
  const { emu, now } = setup(t)
  await emu.personWrites(PAGE, 'u1')
  await send(emu, recurringRequest('u1', { title: undefined }))
  const { token } = await emu.acceptRecurring(PAGE, 'u1', { timezone: 'Asia/Tokyo' })
  t.same(lastEvent(emu).optin, {
    type: 'notification_messages',
    payload: 'topic:deals',
    notification_messages_token: token,
    notification_messages_timezone: 'Asia/Tokyo',
    user_token_status: 'NOT_REFRESHED',
    title: 'Updates and promotions',
  })
  t.match(emu.recurringTokens(PAGE, 'u1'), [{ expiresAt: null, timezone: 'Asia/Tokyo', status: 'active' }])

  await emu.personWrites(PAGE, 'u2')
  await send(emu, recurringRequest('u2', { notification_messages_frequency: 'DAILY' }))
  await emu.acceptRecurring(PAGE, 'u2')
  t.match(lastEvent(emu).optin, { notification_messages_timezone: 'UTC', token_expiry_timestamp: Date.UTC(2026, 6, 15, 12) }, 'daily: six months')
  await send(emu, recurringRequest('u2', { notification_messages_frequency: 'MONTHLY', payload: 'topic:monthly' }))
  await emu.acceptRecurring(PAGE, 'u2', { payload: 'topic:monthly' })
  t.equal(lastEvent(emu).optin.token_expiry_timestamp, Date.UTC(2027, 0, 15, 12), 'monthly: twelve months')
  t.equal(lastEvent(emu).optin.token_expiry_timestamp - now(), 365 * DAY)

  t.equal((await control(emu, 'POST', `/persons/${PAGE}/u3/recurring/accept`)).status, 409, 'nothing delivered to accept')
  t.equal((await control(emu, 'POST', `/persons/${PAGE}/u1/recurring/accept`, { payload: 'p', timezone: 'Nowhere/Land' })).status, 400)
  t.equal((await control(emu, 'POST', `/persons/404/u1/recurring/accept`, { payload: 'p' })).status, 404)
  const direct = await control(emu, 'POST', `/persons/${PAGE}/u3/recurring/accept`, { payload: 'topic:direct' })
  t.equal(direct.status, 200, 'with a payload, a token even without a delivered request')
  t.same(lastEvent(emu).optin.title, 'Updates and promotions')
})

t.test('stop and resume: the token is refused with 10/1893015 while stopped, then sends again', async (t) => {
  const { emu, advance } = setup(t)
  const a = emu.issueToken(PAGE, 'u1', 'topic:a', { kind: 'notification_messages', title: 'A', frequency: 'DAILY' })
  const b = emu.issueToken(PAGE, 'u1', 'topic:b', { kind: 'notification_messages', title: 'B' })

  const stop = await control(emu, 'POST', `/persons/${PAGE}/u1/recurring/stop`, { payload: 'topic:a' })
  t.equal(stop.status, 200, stop.body)
  t.notOk(stop.body.includes(a), 'masked')
  t.match(lastEvent(emu).optin, {
    type: 'notification_messages',
    payload: 'topic:a',
    notification_messages_token: a,
    notification_messages_frequency: 'DAILY',
    notification_messages_status: 'STOP_NOTIFICATIONS',
    user_token_status: 'NOT_REFRESHED',
    title: 'A',
  })
  const refused = await send(emu, withRecurring(a))
  t.equal(refused.status, 400)
  t.same(
    { ...refused.json.error, fbtrace_id: undefined },
    { message: '(#10) The person stopped notifications on this topic.', type: 'OAuthException', code: 10, error_subcode: 1893015, fbtrace_id: undefined },
  )
  t.equal((await send(emu, withRecurring(b))).status, 200, 'the other topic is not stopped')
  t.equal((await control(emu, 'POST', `/persons/${PAGE}/u1/recurring/stop`, { payload: 'topic:a' })).status, 409, 'already stopped')
  const listed = await control(emu, 'GET', `/persons/${PAGE}/u1/recurring`)
  t.notOk(listed.body.includes(a) || listed.body.includes(b), 'the listing masks the tokens')
  t.match(listed.json.items, [
    { payload: 'topic:a', status: 'stopped', uses: 0, frequency: 'DAILY', expires_at: null },
    { payload: 'topic:b', status: 'active', uses: 1, frequency: null },
  ])

  const resume = await control(emu, 'POST', `/persons/${PAGE}/u1/recurring/resume`, { payload: 'topic:a', spelling: 'space' })
  t.equal(resume.status, 200, resume.body)
  t.equal(lastEvent(emu).optin.notification_messages_status, 'RESUME NOTIFICATIONS', "Meta's table spelling on request")
  t.equal((await control(emu, 'POST', `/persons/${PAGE}/u1/recurring/resume`, { payload: 'topic:a' })).status, 409, 'not stopped')
  t.equal((await send(emu, withRecurring(a))).status, 200, 'resumed: sends again')
  await emu.stopRecurring(PAGE, 'u1', { payload: 'topic:b', spelling: 'space' })
  t.equal(lastEvent(emu).optin.notification_messages_status, 'STOP NOTIFICATIONS')
  advance(3 * DAY)
  t.match(expectGraphError((await send(emu, withRecurring(b))).json), { code: 10, subcode: 1893015 })
  t.equal((await control(emu, 'POST', `/persons/${PAGE}/u1/recurring/stop`, { spelling: 'dashes' })).status, 400)
  t.equal((await control(emu, 'POST', `/persons/${PAGE}/u9/recurring/stop`)).status, 409, 'no token to stop')
})

t.test("Meta's re-opt-in refresh: a new REFRESHED token with a new expiry; the old one is then invalid", async (t) => {
  const { emu, now, advance } = setup(t)
  const old = emu.issueToken(PAGE, 'u1', 'topic:deals', {
    kind: 'notification_messages', title: 'Weekly deals', frequency: 'WEEKLY', timezone: 'Europe/Paris', expiresAt: now() + 30 * DAY,
  })
  t.equal((await send(emu, withRecurring(old))).status, 200)
  advance(HOUR)

  const res = await control(emu, 'POST', `/persons/${PAGE}/u1/recurring/refresh`, { payload: 'topic:deals' })
  t.equal(res.status, 200, res.body)
  const optin = lastEvent(emu).optin
  const fresh = optin.notification_messages_token
  t.not(fresh, old)
  t.notOk(res.body.includes(fresh) || res.body.includes(old), 'masked')
  t.same(optin, {
    type: 'notification_messages',
    payload: 'topic:deals',
    notification_messages_token: fresh,
    notification_messages_frequency: 'WEEKLY',
    notification_messages_timezone: 'Europe/Paris',
    token_expiry_timestamp: Date.UTC(2026, 9, 15, 13), // nine months after the refresh
    user_token_status: 'REFRESHED',
    title: 'Weekly deals',
  })
  const stale = await send(emu, withRecurring(old))
  t.match(expectGraphError(stale.json), { code: 100, message: '(#100) The parameter notification_messages_token is invalid' })
  // The refresh does not restart the cooldown: the send an hour before it still counts.
  t.match(expectGraphError((await send(emu, withRecurring(fresh))).json), { code: 4, subcode: 2018354 })
  advance(47 * HOUR)
  t.match(expectGraphError((await send(emu, withRecurring(fresh))).json), { code: 4, subcode: 2018354 }, 'weekly: still the same week')
  advance(4 * DAY)
  t.equal((await send(emu, withRecurring(fresh))).status, 200, 'the next week')
  t.match(emu.recurringTokens(PAGE, 'u1'), [
    { status: 'replaced', userTokenStatus: 'NOT_REFRESHED', uses: 1 },
    { status: 'active', userTokenStatus: 'REFRESHED', uses: 1, expiresAt: Date.UTC(2026, 9, 15, 13) },
  ])
  advance(9 * 30 * DAY)
  t.match(emu.recurringTokens(PAGE, 'u1')[1], { status: 'expired' })
  t.match(expectGraphError((await send(emu, withRecurring(fresh))).json), { code: 100, message: /notification_messages_token is invalid/ }, 'expired')
  t.equal((await control(emu, 'POST', `/persons/${PAGE}/u2/recurring/refresh`)).status, 409, 'nothing to refresh')
})

t.test("the cooldown: 48 hours by default on the emulator's clock (control API /clock), settable", async (t) => {
  const { emu } = setup(t)
  const token = emu.issueToken(PAGE, 'u1', 'topic', { kind: 'notification_messages' })
  t.equal((await send(emu, withRecurring(token))).status, 200)
  await control(emu, 'POST', '/clock', { advance_ms: 48 * HOUR - 1 })
  const early = await send(emu, withRecurring(token))
  t.equal(early.status, 400)
  t.same(
    { ...early.json.error, fbtrace_id: undefined },
    {
      message: '(#4) There has to be a minimum delay between 2 notifications for the given notification',
      type: 'OAuthException',
      code: 4,
      error_subcode: 2018354,
      is_transient: true,
      fbtrace_id: undefined,
    },
  )
  await control(emu, 'POST', '/clock', { advance_ms: 1 })
  t.equal((await send(emu, withRecurring(token))).status, 200, 'the token stays usable: 48 hours later it sends again')

  t.match((await control(emu, 'PUT', '/settings', { recurring_cooldown_hours: 24 })).json, { recurring_cooldown_hours: 24 })
  await control(emu, 'POST', '/clock', { advance_ms: 24 * HOUR - 1 })
  t.equal((await send(emu, withRecurring(token))).status, 400)
  await control(emu, 'POST', '/clock', { advance_ms: 1 })
  t.equal((await send(emu, withRecurring(token))).status, 200)
  t.equal(emu.inbox(PAGE, 'u1').length, 3)
  t.match(emu.recurringTokens(PAGE, 'u1'), [{ uses: 3, lastSentAt: emu.now() }])

  const foreign = emu.issueToken(OTHER_PAGE, 'u1', 'topic', { kind: 'notification_messages' })
  t.match(expectGraphError((await send(emu, withRecurring(foreign))).json), { code: 100, message: /notification_messages_token is invalid/ })
})

t.test("one message per calendar period of the token's frequency, counted in the token's time zone", async (t) => {
  const { emu, setClock } = setup(t, { recurringCooldownHours: 0 })
  const at = async (iso: string, token: string) => {
    setClock(Date.parse(iso))
    const res = await send(emu, withRecurring(token))
    return res.status === 200 ? 'sent' : `${res.json.error.code}/${res.json.error.error_subcode}`
  }
  const weekly = (timezone: string) => emu.issueToken(PAGE, 'u1', `weekly:${timezone}`, { kind: 'notification_messages', frequency: 'WEEKLY', timezone })

  // Sunday 23:00 and Monday 00:00 in New York are both Monday in UTC.
  const ny = weekly('America/New_York')
  t.equal(await at('2026-01-19T04:00:00Z', ny), 'sent', 'Sunday 23:00 in New York')
  t.equal(await at('2026-01-19T05:00:00Z', ny), 'sent', 'Monday 00:00 in New York: a new week')
  t.equal(await at('2026-01-26T04:59:59Z', ny), '4/2018354', 'Sunday 23:59:59 in New York: the same week')
  t.equal(await at('2026-01-26T05:00:00Z', ny), 'sent')
  const utc = weekly('UTC')
  t.equal(await at('2026-01-19T04:00:00Z', utc), 'sent')
  t.equal(await at('2026-01-19T05:00:00Z', utc), '4/2018354', 'in UTC both are Monday')

  const tokyo = emu.issueToken(PAGE, 'u1', 'daily', { kind: 'notification_messages', frequency: 'DAILY', timezone: 'Asia/Tokyo' })
  t.equal(await at('2026-01-20T14:59:00Z', tokyo), 'sent', '23:59 in Tokyo')
  t.equal(await at('2026-01-20T15:00:00Z', tokyo), 'sent', 'midnight in Tokyo: a new day')
  t.equal(await at('2026-01-21T14:59:59Z', tokyo), '4/2018354')

  const paris = emu.issueToken(PAGE, 'u1', 'monthly', { kind: 'notification_messages', frequency: 'MONTHLY', timezone: 'Europe/Paris' })
  t.equal(await at('2026-01-31T22:30:00Z', paris), 'sent', 'January 31, 23:30 in Paris')
  t.equal(await at('2026-01-31T23:00:00Z', paris), 'sent', 'February 1 in Paris')
  t.equal(await at('2026-02-28T22:59:59Z', paris), '4/2018354', 'still February in Paris')
  t.equal(await at('2026-02-28T23:00:00Z', paris), 'sent', 'March 1 in Paris')

  const none = emu.issueToken(PAGE, 'u1', 'plain', { kind: 'notification_messages' })
  t.equal(await at('2026-03-01T00:00:00Z', none), 'sent')
  t.equal(await at('2026-03-01T00:00:01Z', none), 'sent', 'no frequency and no cooldown: no limit')
})

t.test('issueToken checks the recurring options it is given', async (t) => {
  const { emu } = setup(t)
  t.throws(() => emu.issueToken(PAGE, 'u1', 'p', { kind: 'notification_messages', frequency: 'HOURLY' as any }), /frequency/)
  t.throws(() => emu.issueToken(PAGE, 'u1', 'p', { kind: 'notification_messages', timezone: 'Nowhere' }), /timezone/)
  await t.rejects(emu.acceptRecurring(PAGE, 'u1', { payload: 'p', timezone: 'Nowhere' }), RangeError)
})
