import { readFileSync } from 'node:fs'
import t, { type Test } from 'tap'
import type { Emulator } from '../../src/emulator/emulator.js'
import { PAGE, send, setup } from './fixtures/setup.js'

// The emulator's recurring webhooks and answers, held against bodies published by Meta and by
// open-source clients (test/fixtures/meta, provenance in SOURCES.md): same keys, same value types.

const fixture = (path: string) => JSON.parse(readFileSync(new URL(`../fixtures/meta/${path}`, import.meta.url), 'utf8'))

type Shape = Record<string, string>

function typeOf(v: unknown): string {
  if (Array.isArray(v)) return 'array'
  if (v === null) return 'null'
  return typeof v
}

/** Every key path (objects only; an array is walked through its first item) with its value's type. */
function shape(value: unknown, prefix = '', out: Shape = {}): Shape {
  if (Array.isArray(value)) {
    out[prefix] = 'array'
    if (value.length > 0) shape(value[0], `${prefix}[]`, out)
    return out
  }
  if (typeOf(value) === 'object') {
    if (prefix !== '') out[prefix] = 'object'
    for (const [k, v] of Object.entries(value as object)) shape(v, prefix === '' ? k : `${prefix}.${k}`, out)
    return out
  }
  out[prefix] = typeOf(value)
  return out
}

/**
 * The emulator's body has every key of every fixture with the same type, and no key that none of
 * them has: where the fixtures disagree (courier's stop carries no time zone), either is Meta's.
 */
function sameShape(t: Test, emulated: unknown, files: string[]) {
  const ours = shape(emulated)
  const union: Shape = {}
  for (const file of files) {
    const theirs = shape(fixture(file))
    for (const [key, type] of Object.entries(theirs)) {
      t.equal(ours[key], type, `${file}: ${key} is a ${type}`)
      union[key] = type
    }
  }
  t.same(Object.keys(ours).filter((k) => !(k in union)), [], `no key that ${files.join(' / ')} lack`)
}

const lastBody = (emu: Emulator) => JSON.parse(emu.webhooks.at(-1)!.body)

const recurringRequest = (psid: string, options: Record<string, unknown> = {}) => ({
  recipient: { id: psid },
  message: { attachment: { type: 'template', payload: { template_type: 'notification_messages', title: 'Bird Facts', payload: '3456', ...options } } },
})

t.test('opt-in with a frequency (courier) and without one (Meta)', async (t) => {
  const { emu } = setup(t)
  await emu.personWrites(PAGE, 'u1')
  await send(emu, recurringRequest('u1', { notification_messages_frequency: 'DAILY', notification_messages_timezone: 'UTC' }))
  await emu.acceptRecurring(PAGE, 'u1')
  const daily = lastBody(emu)
  sameShape(t, daily, ['webhooks/courier-notification-messages-optin.json'])
  const courier = fixture('webhooks/courier-notification-messages-optin.json').entry[0].messaging[0].optin
  t.match(daily.entry[0].messaging[0].optin, { type: courier.type, notification_messages_frequency: courier.notification_messages_frequency, user_token_status: courier.user_token_status, notification_messages_timezone: courier.notification_messages_timezone })

  await send(emu, recurringRequest('u1', { payload: 'other' }))
  await emu.acceptRecurring(PAGE, 'u1')
  sameShape(t, lastBody(emu), ['webhooks/recurring/meta-docs-mm-faq-optin-no-frequency.json'])
})

t.test('REFRESHED, stop and resume', async (t) => {
  const { emu } = setup(t)
  emu.issueToken(PAGE, 'u1', '3456', { kind: 'notification_messages', frequency: 'DAILY', title: 'Bird Facts', expiresAt: Date.UTC(2027, 0, 1) })
  await emu.refreshRecurring(PAGE, 'u1')
  const refreshed = lastBody(emu)
  sameShape(t, refreshed, ['webhooks/recurring/meta-docs-optin-refreshed-filled.json'])
  t.equal(refreshed.entry[0].messaging[0].optin.user_token_status, 'REFRESHED')

  const stops = ['webhooks/courier-notification-messages-stop.json', 'webhooks/recurring/meta-docs-optin-stop-space-filled.json']
  await emu.stopRecurring(PAGE, 'u1')
  sameShape(t, lastBody(emu), stops)
  t.equal(lastBody(emu).entry[0].messaging[0].optin.notification_messages_status, fixture(stops[0]).entry[0].messaging[0].optin.notification_messages_status, 'courier spelling')
  await emu.resumeRecurring(PAGE, 'u1', { spelling: 'space' })
  const resume = 'webhooks/recurring/meta-docs-optin-resume-space-filled.json'
  sameShape(t, lastBody(emu), [resume])
  t.equal(lastBody(emu).entry[0].messaging[0].optin.notification_messages_status, fixture(resume).entry[0].messaging[0].optin.notification_messages_status)
  await emu.stopRecurring(PAGE, 'u1', { spelling: 'space' })
  t.equal(lastBody(emu).entry[0].messaging[0].optin.notification_messages_status, fixture(stops[1]).entry[0].messaging[0].optin.notification_messages_status, "Meta's table spelling")
})

t.test("courier's send with recipient.notification_messages_token and Meta's opt-in request are accepted; the answer has courier's keys", async (t) => {
  const { emu } = setup(t)
  const token = emu.issueToken(PAGE, 'u1', 'topic', { kind: 'notification_messages' })
  const body = fixture('send-api/courier-notification-messages-token-request.json')
  body.recipient.notification_messages_token = token // courier's "345678" is no token the emulator issued
  const res = await send(emu, body)
  const expected = fixture('send-api/courier-notification-messages-token-response.json')
  t.equal(res.status, expected.http_status)
  for (const [key, value] of Object.entries(expected.body)) t.equal(typeOf(res.json[key]), typeOf(value), `answer has ${key}`)

  await emu.personWrites(PAGE, 'u1')
  const request = fixture('send-api/meta-docs-notification-messages-optin-request.json')
  t.equal((await send(emu, request)).json.error.code, 100, 'as published, the "IMAGE-URL" placeholder is no URL')
  request.recipient.id = 'u1' // "PSID-OR-IGSID"
  request.message.attachment.payload.image_url = 'https://example.com/bird.png' // "IMAGE-URL"
  const accepted = await send(emu, request)
  t.equal(accepted.status, 200, JSON.stringify(accepted.json))
  await emu.acceptRecurring(PAGE, 'u1')
  t.match(lastBody(emu).entry[0].messaging[0].optin, { title: 'TITLE', payload: 'ADDITIONAL-WEBHOOK-INFORMATION', notification_messages_timezone: 'UTC' })
})
