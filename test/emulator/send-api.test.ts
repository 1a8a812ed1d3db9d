import t from 'tap'
import { EmulatorError, appsecretProof } from '../../src/emulator/emulator.js'
import {
  OTHER_PAGE,
  OTHER_PAGE_TOKEN,
  PAGE,
  PAGE_TOKEN,
  expectGraphError,
  otnRequest,
  send,
  setup,
  text,
  withToken,
} from './fixtures/setup.js'

const HOUR = 60 * 60 * 1000
const DAY = 24 * HOUR

t.test('page access token', async (t) => {
  const { emu } = setup(t)
  await emu.personWrites(PAGE, 'u1')

  const good = await send(emu, text('u1'))
  t.equal(good.status, 200)
  t.equal(good.json.recipient_id, 'u1')
  t.match(good.json.message_id, /^m_[\w-]{20,}$/)
  t.equal(emu.inbox(PAGE, 'u1').length, 1)
  t.same(emu.inbox(PAGE, 'u1')[0].message, { text: 'hello' })
  t.equal(emu.inbox(PAGE, 'u1')[0].via, 'window')

  for (const [name, token] of [
    ['wrong', 'not-a-token'],
    ['missing', null],
  ] as const) {
    const res = await send(emu, text('u1'), { token })
    t.equal(res.status, 400, `${name} token: HTTP 400`)
    const e = expectGraphError(res.json)
    t.equal(e.code, 190, `${name} token: code 190`)
    t.equal(e.type, 'OAuthException')
    t.match(e.message, /Invalid OAuth access token/)
  }
  t.equal(emu.inbox(PAGE, 'u1').length, 1, 'refused sends deliver nothing')

  const inBody = await send(emu, { ...text('u1'), access_token: PAGE_TOKEN }, { token: null })
  t.equal(inBody.status, 200, 'token accepted from the JSON body')

  const byPath = await send(emu, text('u1'), { path: `/v21.0/${PAGE}/messages` })
  t.equal(byPath.status, 200, 'POST /{page-id}/messages with that Page token')

  const foreign = await send(emu, text('u1'), { path: `/v21.0/${PAGE}/messages`, token: OTHER_PAGE_TOKEN })
  t.equal(foreign.status, 400)
  t.equal(expectGraphError(foreign.json).code, 200, "another Page's token on /{page-id}/messages: permission error 200")

  const badVersion = await send(emu, text('u1'), { path: '/latest/me/messages' })
  t.equal(expectGraphError(badVersion.json).code, 2500)

  t.same(
    emu.requests.map((r) => [r.outcome, r.error?.code ?? null, r.pageId ?? null]),
    [
      ['accepted', null, PAGE],
      ['error', 190, null],
      ['error', 190, null],
      ['accepted', null, PAGE],
      ['accepted', null, PAGE],
      ['error', 200, PAGE],
      ['error', 2500, PAGE],
    ],
  )
})

t.test('appsecret_proof', async (t) => {
  const secret = 'app-secret'
  const proof = appsecretProof(PAGE_TOKEN, secret)
  t.match(proof, /^[0-9a-f]{64}$/)

  t.test('required', async (t) => {
    const { emu } = setup(t, { appSecret: secret, requireProof: true })
    await emu.personWrites(PAGE, 'u1')

    const missing = await send(emu, text('u1'))
    t.equal(missing.status, 400)
    t.match(expectGraphError(missing.json), { code: 100, type: 'GraphMethodException', message: /require an appsecret_proof/ })

    const wrong = await send(emu, text('u1'), { query: { appsecret_proof: appsecretProof(PAGE_TOKEN, 'other-secret') } })
    t.match(expectGraphError(wrong.json), { code: 100, type: 'GraphMethodException', message: /Invalid appsecret_proof/ })

    const garbage = await send(emu, text('u1'), { query: { appsecret_proof: 'zz' } })
    t.match(expectGraphError(garbage.json), { code: 100, message: /Invalid appsecret_proof/ })

    const otherPagesProof = await send(emu, text('u1'), { query: { appsecret_proof: appsecretProof(OTHER_PAGE_TOKEN, secret) } })
    t.match(expectGraphError(otherPagesProof.json), { code: 100, message: /Invalid appsecret_proof/ })

    const right = await send(emu, text('u1'), { query: { appsecret_proof: proof } })
    t.equal(right.status, 200)
    const rightInBody = await send(emu, { ...text('u1'), appsecret_proof: proof })
    t.equal(rightInBody.status, 200)
    t.equal(emu.inbox(PAGE, 'u1').length, 2, 'only the proven sends were delivered')
  })

  t.test('not required: absent is fine, a wrong one is still refused', async (t) => {
    const { emu } = setup(t, { appSecret: secret })
    await emu.personWrites(PAGE, 'u1')
    t.equal((await send(emu, text('u1'))).status, 200)
    const wrong = await send(emu, text('u1'), { query: { appsecret_proof: appsecretProof(PAGE_TOKEN, 'x') } })
    t.equal(expectGraphError(wrong.json).code, 100)
  })
})

t.test('24-hour window follows the clock', async (t) => {
  const { emu, advance } = setup(t)

  const stranger = await send(emu, text('nobody'))
  t.match(expectGraphError(stranger.json), { code: 100, subcode: 2018001 }, 'a PSID never seen: no matching user')

  await emu.personWrites(PAGE, 'u1', 'hi there')
  advance(24 * HOUR - 1)
  t.equal((await send(emu, text('u1'))).status, 200, 'open until 24 h after the last message')

  advance(1)
  const closed = await send(emu, text('u1'))
  t.equal(closed.status, 400)
  t.match(expectGraphError(closed.json), { code: 10, subcode: 2018278, message: /outside of allowed window/ })

  const humanAgent = await send(emu, { ...text('u1'), messaging_type: 'MESSAGE_TAG', tag: 'HUMAN_AGENT' })
  t.equal(humanAgent.status, 200, 'HUMAN_AGENT tag extends the window to 7 days')
  advance(7 * 24 * HOUR)
  const lateAgent = await send(emu, { ...text('u1'), messaging_type: 'MESSAGE_TAG', tag: 'HUMAN_AGENT' })
  t.equal(expectGraphError(lateAgent.json).code, 10)

  await emu.personWrites(PAGE, 'u1')
  t.equal((await send(emu, text('u1'))).status, 200, 'a new message reopens it')

  await emu.personWrites(OTHER_PAGE, 'u2')
  t.match(expectGraphError((await send(emu, text('u2'))).json), { code: 100, subcode: 2018001 }, 'windows are per Page')

  t.equal(emu.inbox(PAGE, 'u1').length, 3)
})

t.test('person unavailable', async (t) => {
  const { emu } = setup(t)
  await emu.personWrites(PAGE, 'u1')
  const token = emu.issueToken(PAGE, 'u1', 'topic')
  emu.setPersonAvailable(PAGE, 'u1', false)
  for (const body of [text('u1'), { recipient: { one_time_notif_token: token }, message: { text: 'x' } }]) {
    const res = await send(emu, body)
    t.match(expectGraphError(res.json), { code: 551, subcode: 1545041 })
  }
  t.same(emu.tokenUses(), new Map(), 'the token was not spent')
  emu.setPersonAvailable(PAGE, 'u1', true)
  t.equal((await send(emu, { recipient: { one_time_notif_token: token }, message: { text: 'x' } })).status, 200)
})

t.test('message validation', async (t) => {
  const { emu } = setup(t)
  await emu.personWrites(PAGE, 'u1')
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['no recipient', { message: { text: 'x' } }, /recipient must be non-empty/],
    ['two recipient fields', { recipient: { id: 'u1', one_time_notif_token: 'abc' }, message: { text: 'x' } }, /exactly one/],
    ['unsupported recipient', { recipient: { user_ref: 'r' }, message: { text: 'x' } }, /unsupported field user_ref/],
    ['no message', { recipient: { id: 'u1' } }, /message must be non-empty/],
    ['empty message', { recipient: { id: 'u1' }, message: {} }, /text or attachment/],
    ['text and attachment', { recipient: { id: 'u1' }, message: { text: 'x', attachment: { type: 'image', payload: {} } } }, /Only one of/],
    ['empty text', { recipient: { id: 'u1' }, message: { text: '  ' } }, /non-empty/],
    ['text not a string', { recipient: { id: 'u1' }, message: { text: 5 } }, /non-empty/],
    ['text too long', { recipient: { id: 'u1' }, message: { text: 'a'.repeat(2001) } }, /less than or equal to 2000/],
    ['attachment type', { recipient: { id: 'u1' }, message: { attachment: { type: 'gif', payload: {} } } }, /attachment\]\[type\]/],
    ['attachment payload', { recipient: { id: 'u1' }, message: { attachment: { type: 'image' } } }, /payload\] must be non-empty/],
    ['template_type', { recipient: { id: 'u1' }, message: { attachment: { type: 'template', payload: {} } } }, /template_type/],
    ['messaging_type', { ...text('u1'), messaging_type: 'PROMO' }, /messaging_type/],
    ['tag missing', { ...text('u1'), messaging_type: 'MESSAGE_TAG' }, /param tag/],
    ['notification_type', { ...text('u1'), notification_type: 'LOUD' }, /notification_type/],
    ['sender_action', { recipient: { id: 'u1' }, sender_action: 'dance' }, /sender_action/],
  ]
  for (const [name, body, message] of cases) {
    const res = await send(emu, body)
    t.equal(res.status, 400, `${name}: 400`)
    t.match(expectGraphError(res.json), { code: 100, message }, name)
  }
  t.equal(emu.inbox(PAGE, 'u1').length, 0, 'nothing invalid was delivered')

  const max = await send(emu, { recipient: { id: 'u1' }, message: { text: '😀'.repeat(2000) } })
  t.equal(max.status, 200, '2000 characters (counted as code points) is fine')
  const ok = await send(emu, {
    recipient: { id: 'u1' },
    messaging_type: 'UPDATE',
    notification_type: 'SILENT_PUSH',
    message: { attachment: { type: 'image', payload: { url: 'https://example.com/a.png' } } },
  })
  t.equal(ok.status, 200)
  const typing = await send(emu, { recipient: { id: 'u1' }, sender_action: 'typing_on' })
  t.same(typing.json, { recipient_id: 'u1' }, 'sender actions answer without a message id')
  t.equal(emu.inbox(PAGE, 'u1').length, 2)
  t.same(emu.requests.at(-2)?.notificationType, 'SILENT_PUSH')
})

t.test('one_time_notif_req template', async (t) => {
  const { emu, advance } = setup(t)
  await emu.personWrites(PAGE, 'u1')

  const title65 = 'x'.repeat(65)
  const ok = await send(emu, otnRequest('u1', title65, 'topic:a'))
  t.equal(ok.status, 200)
  t.equal(emu.inbox(PAGE, 'u1')[0].message.attachment.payload.title, title65)

  const long = await send(emu, otnRequest('u1', 'x'.repeat(66), 'topic:a'))
  t.match(expectGraphError(long.json), { code: 100, message: /title\] must be less than or equal to 65/ })
  const noTitle = await send(emu, otnRequest('u1', '', 'topic:a'))
  t.match(expectGraphError(noTitle.json), { code: 100, message: /title\] must be non-empty/ })
  const noPayload = await send(emu, otnRequest('u1', 'Title', ''))
  t.match(expectGraphError(noPayload.json), { code: 100, message: /\[payload\]\[payload\]/ })

  const token = emu.issueToken(PAGE, 'u1', 'topic:a')
  const viaToken = await send(emu, { recipient: { one_time_notif_token: token }, message: otnRequest('u1').message })
  t.match(expectGraphError(viaToken.json), { code: 100, message: /recipient id/ })
  t.same(emu.tokenUses(), new Map(), 'refused before the token was looked at')

  advance(24 * 60 * 60 * 1000)
  const outside = await send(emu, otnRequest('u1'))
  t.match(expectGraphError(outside.json), { code: 10, subcode: 2018278 }, 'a request needs the 24-hour window')
  const taggedOutside = await send(emu, { ...otnRequest('u1'), messaging_type: 'MESSAGE_TAG', tag: 'ACCOUNT_UPDATE' })
  t.match(expectGraphError(taggedOutside.json), { code: 10, subcode: 2018278 }, 'tags do not stretch it for requests')
  t.equal(emu.inbox(PAGE, 'u1').length, 1)
})

t.test('form-encoded bodies like the Graph API accepts', async (t) => {
  const { emu } = setup(t)
  await emu.personWrites(PAGE, 'u1')
  const form = new URLSearchParams({
    access_token: PAGE_TOKEN,
    recipient: JSON.stringify({ id: 'u1' }),
    message: JSON.stringify({ text: 'from a form' }),
  })
  const res = await emu.app.inject({
    method: 'POST',
    url: '/v21.0/me/messages',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    payload: form.toString(),
  })
  t.equal(res.statusCode, 200)
  t.same(emu.inbox(PAGE, 'u1')[0].message, { text: 'from a form' })

  const broken = await emu.app.inject({
    method: 'POST',
    url: `/v21.0/me/messages?access_token=${PAGE_TOKEN}`,
    headers: { 'content-type': 'application/json' },
    payload: '{not json',
  })
  t.equal(broken.statusCode, 400)
  t.equal(expectGraphError(broken.json()).code, 100, 'malformed JSON gets a Graph-shaped error')
})

t.test('an OTN token is accepted exactly once', async (t) => {
  const { emu, advance } = setup(t)
  const token = emu.issueToken(PAGE, 'u1', 'topic:restock')
  t.ok(token.length >= 40, 'tokens are long')
  t.match(token, /^[\w-]+$/, 'and url-safe')
  advance(30 * DAY)

  const first = await send(emu, withToken(token, 'Back in stock'))
  t.equal(first.status, 200, 'no open window needed')
  t.equal(first.json.recipient_id, 'u1', 'recipient_id is the PSID behind the token')
  t.match(first.json.message_id, /^m_/)

  const second = await send(emu, withToken(token, 'Back in stock, again'))
  t.equal(second.status, 400)
  t.match(expectGraphError(second.json), { code: 100, message: /one_time_notif_token is invalid/ })
  t.equal(second.json.error.error_subcode, undefined, 'no subcode')

  const inbox = emu.inbox(PAGE, 'u1')
  t.equal(inbox.length, 1, 'the second send was not delivered')
  t.match(inbox[0], { via: 'one_time_notif_token', token, message: { text: 'Back in stock' }, messageId: first.json.message_id })
  t.same(emu.tokenUses(), new Map([[token, 1]]))
  t.same(emu.doubleSpends(), [])
  t.match(emu.requests, [
    { outcome: 'accepted', tokenUsed: token, messagingType: 'UPDATE' },
    { outcome: 'error', error: { code: 100 } },
  ])
  t.same(emu.audit(), { requests: 2, accepted: 1, tokens_accepted: 1, double_spends: 0 })
})

t.test("unknown and other Pages' tokens are refused and not spent", async (t) => {
  const { emu } = setup(t)
  const foreign = emu.issueToken(OTHER_PAGE, 'u9', 'topic')
  const unknown = await send(emu, withToken('x'.repeat(64)))
  t.match(expectGraphError(unknown.json), { code: 100, message: /one_time_notif_token/ })
  const other = await send(emu, withToken(foreign))
  t.match(expectGraphError(other.json), { code: 100, message: /one_time_notif_token/ })
  t.same(emu.tokenUses(), new Map())
  t.equal(emu.inbox(OTHER_PAGE, 'u9').length, 0)

  const recurring = emu.issueToken(PAGE, 'u1', 'topic', { kind: 'notification_messages' })
  const wrongKind = await send(emu, withToken(recurring))
  t.equal(expectGraphError(wrongKind.json).code, 100, 'a recurring token is not an OTN token')
})

t.test('OTN tokens expire one year (365 days) after the opt-in', async (t) => {
  const { emu, now, advance } = setup(t)
  const optedInAt = now() - 10 * DAY
  const a = emu.issueToken(PAGE, 'u1', 'topic', { optedInAt })
  const b = emu.issueToken(PAGE, 'u1', 'topic', { optedInAt })
  advance(365 * DAY - 10 * DAY - 1)
  t.equal((await send(emu, withToken(a))).status, 200, 'still valid one ms before expiry')
  advance(1)
  const expired = await send(emu, withToken(b))
  t.match(expectGraphError(expired.json), { code: 100, message: /one_time_notif_token is invalid/ })
  t.same(emu.tokenUses(), new Map([[a, 1]]))
})

t.test("tokenRefusal: 'outside_window' answers 10/2018278 instead", async (t) => {
  const { emu } = setup(t, { tokenRefusal: 'outside_window' })
  const token = emu.issueToken(PAGE, 'u1', 'topic')
  t.equal((await send(emu, withToken(token))).status, 200)
  const again = await send(emu, withToken(token))
  t.match(expectGraphError(again.json), { code: 10, subcode: 2018278 })
})

t.test('recurring notification_messages tokens are reusable while valid', async (t) => {
  const { emu, now, advance } = setup(t)
  const forever = emu.issueToken(PAGE, 'u1', 'weekly', { kind: 'notification_messages' })
  const ending = emu.issueToken(PAGE, 'u1', 'weekly', { kind: 'notification_messages', expiresAt: now() + DAY })
  const body = (token: string) => ({ recipient: { notification_messages_token: token }, message: { text: 'Weekly deals' } })
  t.equal((await send(emu, body(ending))).status, 200)
  // Meta's 48-hour cooldown separates two sends with one token.
  for (let i = 0; i < 3; i++) {
    t.equal((await send(emu, body(forever))).status, 200)
    advance(2 * DAY)
  }
  t.match(expectGraphError((await send(emu, body(ending))).json), { code: 100, message: /notification_messages_token/ })
  t.equal((await send(emu, body(forever))).status, 200, 'no expiry unless given one')
  t.equal(emu.inbox(PAGE, 'u1').filter((m) => m.via === 'notification_messages_token').length, 5)
  t.same(emu.tokenUses(), new Map(), 'only OTN tokens are audited for single use')
  t.same(emu.doubleSpends(), [])
  const otn = emu.issueToken(PAGE, 'u1', 'x')
  const asRecurring = await send(emu, body(otn))
  t.equal(expectGraphError(asRecurring.json).code, 100, 'an OTN token is not a recurring token')
})

t.test('clickNotifyMe answers the delivered request', async (t) => {
  const { emu } = setup(t)
  await emu.personWrites(PAGE, 'u1')
  await t.rejects(emu.clickNotifyMe(PAGE, 'u1'), EmulatorError, 'nothing to click yet')
  t.match(await emu.clickNotifyMe('404', 'u1', { payload: 'p' }).catch((e: unknown) => e), { statusCode: 404 })

  t.equal((await send(emu, otnRequest('u1', 'Restock', 'topic:a'))).status, 200)
  t.equal((await send(emu, otnRequest('u1', 'Price drop', 'topic:b'))).status, 200)

  const clicked = await emu.clickNotifyMe(PAGE, 'u1')
  t.equal(clicked.status, null, 'no webhook URL configured')
  const a = await emu.clickNotifyMe(PAGE, 'u1')
  await t.rejects(emu.clickNotifyMe(PAGE, 'u1'), /no unanswered one_time_notif_req/, 'each request takes one click')
  const forced = await emu.clickNotifyMe(PAGE, 'u1', { payload: 'topic:b' })

  t.same(
    emu.webhooks.filter((w) => w.event === 'optin').map((w) => JSON.parse(w.body).entry[0].messaging[0].optin),
    [
      { type: 'one_time_notif_req', payload: 'topic:b', one_time_notif_token: clicked.token },
      { type: 'one_time_notif_req', payload: 'topic:a', one_time_notif_token: a.token },
      { type: 'one_time_notif_req', payload: 'topic:b', one_time_notif_token: forced.token },
    ],
    'the most recent unanswered request first; a payload bypasses the check',
  )
  t.equal(new Set([clicked.token, a.token, forced.token]).size, 3, 'every click issues a fresh token')

  for (const token of [clicked.token, a.token, forced.token]) t.equal((await send(emu, withToken(token))).status, 200)
  t.equal(emu.tokenUses().size, 3)
  t.same(emu.doubleSpends(), [])
})

t.test('optinRequestCooldownMs limits repeated requests on one topic', async (t) => {
  const { emu, advance } = setup(t, { optinRequestCooldownMs: 60_000 })
  await emu.personWrites(PAGE, 'u1')
  t.equal((await send(emu, otnRequest('u1', 'Restock', 'topic:a'))).status, 200)
  const again = await send(emu, otnRequest('u1', 'Restock', 'topic:a'))
  t.match(expectGraphError(again.json), { code: 613, subcode: 1893016 })
  t.equal((await send(emu, otnRequest('u1', 'Other', 'topic:b'))).status, 200, 'other topics are not limited')
  advance(60_000)
  t.equal((await send(emu, otnRequest('u1', 'Restock', 'topic:a'))).status, 200)
  t.equal(emu.inbox(PAGE, 'u1').length, 3)
})

t.test('reset clears state but keeps Pages', async (t) => {
  const { emu } = setup(t)
  await emu.personWrites(PAGE, 'u1')
  const token = emu.issueToken(PAGE, 'u1', 'x')
  await send(emu, withToken(token))
  emu.setFaults({ errorRate: 1 })
  emu.advanceClock(1000)
  const requests = emu.requests
  emu.reset()
  t.equal(requests.length, 0, 'the same array is emptied, so held references see it')
  t.same(emu.inbox(PAGE, 'u1'), [])
  t.same(emu.tokenUses(), new Map())
  t.same(emu.audit(), { requests: 0, accepted: 0, tokens_accepted: 0, double_spends: 0 })
  t.match(expectGraphError((await send(emu, withToken(token))).json), { code: 100 }, 'tokens are gone')
  t.match(expectGraphError((await send(emu, { recipient: { id: 'u1' }, message: { text: 'x' } })).json), { code: 100, subcode: 2018001 })
  const fresh = emu.issueToken(PAGE, 'u1', 'x')
  t.equal((await send(emu, withToken(fresh))).status, 200, 'Pages and their tokens survive; faults are cleared')
})

t.test('recordLimit bounds the request log, not the audit', async (t) => {
  const { emu } = setup(t, { recordLimit: 10 })
  await emu.personWrites(PAGE, 'u1')
  for (let i = 0; i < 30; i++) await send(emu, text('u1', `message ${i}`))
  const token = emu.issueToken(PAGE, 'u1', 'x')
  await send(emu, withToken(token))
  t.ok(emu.requests.length >= 10 && emu.requests.length <= 13, `${emu.requests.length} kept`)
  t.match(emu.requests.at(-1), { tokenUsed: token })
  t.same(emu.audit(), { requests: 31, accepted: 31, tokens_accepted: 1, double_spends: 0 })
  t.equal(emu.inbox(PAGE, 'u1').length, 31)
})
