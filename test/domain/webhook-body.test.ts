import { readdirSync, readFileSync } from 'node:fs'
import t from 'tap'
import { eventTimeMs, mentionSubjects, namedIds, parseDelivery, type Delivery, type RecurringRecord } from '../../src/domain/webhook-body.js'
import { subjectOf } from '../../src/domain/erasure.js'
import { OTN_TOKEN_LIFETIME_MS } from '../../src/domain/window.js'

const RECEIVED = new Date('2026-12-02T10:00:00.000Z')
const dir = new URL('../fixtures/meta/webhooks/', import.meta.url)
const fixture = (name: string): string => readFileSync(new URL(name, dir), 'utf8')

t.test('event times: milliseconds, seconds, numeric strings; absent or implausible ones are undefined', async (t) => {
  const now = RECEIVED.getTime()
  const cases: Array<[unknown, number | undefined]> = [
    [1458692752478, 1458692752478], // Meta's reference examples: milliseconds
    [1701599111, 1701599111000], // courier's referral_seconds.json: seconds
    ['1527459824', 1527459824000], // Meta's messaging_postbacks sample: a numeric string, in seconds
    ['1458692752478', 1458692752478],
    [' 1458692752478 ', 1458692752478],
    [1492414608982.0, 1492414608982], // bottender's echo: written as a float literal
    [1701599111.5, 1701599111500],
    [now + 60_000, now + 60_000], // a minute of clock skew is kept (the store holds it at now())
    [undefined, undefined], [null, undefined], ['', undefined], ['soon', undefined], ['1e12', undefined], [-5, undefined], [0, undefined],
    [12341, undefined], // fbmessenger-hs's entry.time: 1970 in any unit
    [253402300800000, undefined], // the year 10000
    [8.64e15 + 1, undefined], [Number.NaN, undefined], [Number.POSITIVE_INFINITY, undefined],
    [now + 2 * 86_400_000, undefined], // two days ahead: not a skew
    [{ ms: 1 }, undefined], [[1458692752478], undefined],
  ]
  for (const [value, expected] of cases) t.equal(eventTimeMs(value, now), expected, JSON.stringify(value) ?? String(value))
})

/** Every real body we hold: what it parses to (its source: test/fixtures/meta/SOURCES.md). */
type Expected = Omit<Partial<Delivery>, 'recurring'> & { recurring?: Array<Partial<RecurringRecord>> }
const EXPECTED: Record<string, Expected | 'invalid'> = {
  'botman-checkbox-optin-no-sender.json': { interactions: 0, skipped: { unsupported_optin: 1 } },
  'botman-echo.json': { interactions: 0, skipped: { echo: 1 } },
  'botman-read.json': { interactions: 0, skipped: { receipt: 1 } },
  'botman-referral.json': { interactions: 1, skipped: {} },
  'bottender-changes-test-button.json': { interactions: 0, skipped: { changes_field: 1 } },
  'bottender-echo-float-timestamps.json': { interactions: 0, skipped: { echo: 1 } },
  'courier-delivery.json': { interactions: 0, skipped: { receipt: 1 } },
  'courier-echo-no-entry-time.json': { interactions: 0, skipped: { echo: 1 } },
  'courier-instagram-echo.json': { object: 'instagram', interactions: 0, skipped: { not_page_object: 1 } },
  'courier-instagram-like-heart.json': { object: 'instagram', interactions: 0, skipped: { not_page_object: 1 } },
  'courier-notification-messages-optin.json': { interactions: 0, skipped: {}, recurring: [{ event: 'optin' }] },
  'courier-notification-messages-stop.json': { interactions: 0, skipped: {}, recurring: [{ event: 'stop' }] },
  'courier-optin-ref.json': { interactions: 0, skipped: { unsupported_optin: 1 } },
  'courier-optin-user-ref.json': { interactions: 0, skipped: { unsupported_optin: 1 } },
  'courier-postback-referral.json': { interactions: 1, skipped: {} },
  'courier-referral-timestamp-seconds.json': { interactions: 1, skipped: {} },
  'courier-sticker-numeric-id.json': { interactions: 1, skipped: {} },
  'courier-unknown-messaging-entry.json': { interactions: 0, skipped: { unsupported_event: 1 } },
  'fbmessenger-hs-delivery-no-timestamp.json': { interactions: 0, skipped: { receipt: 1 } },
  'fbmessenger-hs-optin-plugin-ref.json': { interactions: 0, skipped: { unsupported_optin: 1 } },
  // Meta's reference examples name the Page with placeholders ("PAGE_ID", "<PAGE_ID>"): no id the API could address.
  'fbmessenger-hs-postback-payload-only.json': { interactions: 0, rejected_events: 1, skipped: { invalid_page_id: 1 } },
  'fbmessenger-hs-text-message.json': { interactions: 0, rejected_events: 1, skipped: { invalid_page_id: 1 } },
  'meta-docs-echo-standby-template.json': { interactions: 0, skipped: { echo: 1 } },
  'meta-docs-message-attachment-entry.json': { interactions: 0, rejected_events: 1, skipped: { invalid_page_id: 1 } },
  'meta-docs-message-text-quick-reply.json': { interactions: 0, rejected_events: 1, skipped: { invalid_page_id: 1 } },
  // Meta's placeholders ("<PAGE_ID>") are no ids: the recurring opt-in is read, and rejected for its Page.
  'meta-docs-notification-messages-optin-placeholders.json': { interactions: 0, rejected_events: 1, skipped: { invalid_page_id: 1 } },
  // Meta's field/value sample is not a delivery (the App Dashboard wraps it in entry[].changes).
  'meta-docs-postbacks-field-value-string-timestamp.json': 'invalid',
  'meta-docs-reaction.json': { interactions: 0, rejected_events: 1, skipped: { invalid_page_id: 1 } },
  'meta-docs-standby-minimal.json': { interactions: 0, skipped: { unsupported_event: 1 } },
  'vlab-event-no-sender-no-recipient.json': { interactions: 0, skipped: { page_unknown: 1 } },
  'vlab-otn-optin-json-string-payload.json': { interactions: 0, skipped: {} },
  'vlab-standby-no-object.json': { interactions: 0, rejected_events: 1, skipped: { invalid_page_id: 1 } },
}

t.test('every collected real body parses without failing the delivery, each event judged with its reason', async (t) => {
  const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort()
  t.same(files, Object.keys(EXPECTED).sort(), 'every fixture has an expectation')
  for (const file of files) {
    const expected = EXPECTED[file]
    if (expected === 'invalid') {
      t.throws(() => parseDelivery(Buffer.from(fixture(file)), RECEIVED), { code: 'invalid_webhook_body' }, file)
      continue
    }
    const d = parseDelivery(Buffer.from(fixture(file)), RECEIVED)
    t.match(d, { object: 'page', rejected_events: 0, ...expected }, file)
    t.same(d.skipped, expected.skipped, `${file}: reasons`)
    const counted = Object.values(d.skipped).reduce((a, b) => a + b, 0)
    t.equal(d.ignored_events + d.rejected_events, counted, `${file}: every event not recorded has a reason`)
  }
})

t.test("Meta's placeholders replaced by real ids: the reference examples are read as interactions", async (t) => {
  // The only change: "PAGE_ID"/"<PAGE_ID>"/"USER_ID"/"PAGE-ID"/"PSID" become digits, as a real delivery has them.
  for (const file of ['fbmessenger-hs-text-message.json', 'meta-docs-message-text-quick-reply.json', 'meta-docs-reaction.json',
    'meta-docs-message-attachment-entry.json', 'fbmessenger-hs-postback-payload-only.json']) {
    const raw = fixture(file).replace(/<?PAGE[_-]ID>?/g, '1000001').replace(/<?(USER_ID|PSID)>?/g, '4242')
    const d = parseDelivery(Buffer.from(raw), RECEIVED)
    t.equal(d.interactions, 1, file)
    t.equal(d.subscribers[0]?.page_id, '1000001', file)
  }
})

t.test('a referral stamped in seconds opens the window at that time (courier referral_seconds.json)', async (t) => {
  const d = parseDelivery(Buffer.from(fixture('courier-referral-timestamp-seconds.json')), RECEIVED)
  t.same(d.subscribers, [{ page_id: '1234567890', psid: '5678', first_seen_at: '2023-12-03T10:25:11.000Z', last_interaction_at: '2023-12-03T10:25:11.000Z' }])
})

t.test("an OTN opt-in with a JSON payload, a uuid PSID and no object (vlab's harness) is a token with that payload", async (t) => {
  const d = parseDelivery(Buffer.from(fixture('vlab-otn-optin-json-string-payload.json')), RECEIVED)
  const at = 1700000000000
  t.same(d.tokens, [{
    kind: 'one_time_notif', page_id: '935593143497601', psid: '00000000-0000-4000-8000-000000000001',
    payload: '{ "ref": "908088b3-5e9e-4b53-b746-799ac51bc758"}', token: 'FOOBAR',
    opted_in_at: new Date(at).toISOString(), expires_at: new Date(at + OTN_TOKEN_LIFETIME_MS).toISOString(),
  }])
})

t.test("an event's time: its own, else the entry's (in any unit), else the receipt's", async (t) => {
  const optin = (extra: Record<string, unknown>, token: string) => ({
    sender: { id: '4242' }, recipient: { id: '1000001' }, optin: { type: 'one_time_notif_req', payload: 'p', one_time_notif_token: token }, ...extra,
  })
  const body = {
    object: 'page',
    entry: [
      { id: '1000001', time: 1764669600, messaging: [optin({ timestamp: '1764669000' }, 'tok-string-seconds'), optin({}, 'tok-entry-seconds')] },
      { id: '1000001', time: '1764669600000', messaging: [optin({ timestamp: 'yesterday' }, 'tok-entry-string-ms')] },
      { id: '1000001', messaging: [optin({ timestamp: 253402300800000 }, 'tok-year-10000')] },
    ],
  }
  const d = parseDelivery(Buffer.from(JSON.stringify(body)), RECEIVED)
  const at = Object.fromEntries(d.tokens.map((x) => [x.token, x.opted_in_at]))
  t.same(at, {
    'tok-string-seconds': '2025-12-02T09:50:00.000Z',
    'tok-entry-seconds': '2025-12-02T10:00:00.000Z',
    'tok-entry-string-ms': '2025-12-02T10:00:00.000Z',
    'tok-year-10000': RECEIVED.toISOString(),
  })
  t.equal(d.restamped_events, 3)
})

t.test('events take their Page from the entry when they name no recipient; no Page at all is ignored, not an error', async (t) => {
  const body = {
    object: 'page',
    entry: [
      { id: '1000001', time: RECEIVED.getTime(), messaging: [{ sender: { id: '4242' }, timestamp: RECEIVED.getTime(), optin: { type: 'one_time_notif_req', payload: 'p', one_time_notif_token: 'tok-a' } }] },
      { time: RECEIVED.getTime(), messaging: [{ sender: { id: '4243' }, timestamp: RECEIVED.getTime(), message: { mid: 'm', text: 'hi' } }] },
      { id: 1000002, messaging: [{ sender: { id: 4244 }, timestamp: RECEIVED.getTime(), postback: { payload: 'x' } }] },
    ],
  }
  const d = parseDelivery(Buffer.from(JSON.stringify(body)), RECEIVED)
  t.same(d.tokens.map((x) => [x.page_id, x.psid]), [['1000001', '4242']])
  t.same(d.subscribers.map((s) => [s.page_id, s.psid]), [['1000001', '4242'], ['1000002', '4244']], 'numeric ids are read as ids')
  t.same(d.skipped, { page_unknown: 1 })
})

t.test('ids, tokens and payloads the service could never address are rejected per event; the good ones beside them are kept', async (t) => {
  const ev = (sender: string, recipient: string, token: string, payload = 'p') =>
    ({ sender: { id: sender }, recipient: { id: recipient }, timestamp: RECEIVED.getTime(), optin: { type: 'one_time_notif_req', payload, one_time_notif_token: token } })
  const body = {
    object: 'page',
    entry: [{
      id: '1000001',
      messaging: [
        ev('4242', '1000001', 'tok-good'),
        ev('x'.repeat(5000), '1000001', 'tok-long-psid'),
        ev('42 42', '1000001', 'tok-space'),
        ev('4242', '1'.repeat(40), 'tok-long-page'),
        ev('4242', '1000001', 't'.repeat(3000)),
        ev('4242', '1000001', 'tok with spaces'),
        ev('4242', '1000001', 'tok-long-payload', 'é'.repeat(1001)),
        ev('4242', '1000001', 'tok-json-payload', '{"ref":"notify_ref", "note": "спасибо 🔔"}'),
        { sender: { id: '4242' }, recipient: { id: '1000001' }, optin: { type: 'one_time_notif_req', payload: 'p' } },
      ],
    }],
  }
  const d = parseDelivery(Buffer.from(JSON.stringify(body)), RECEIVED)
  t.same(d.tokens.map((x) => x.token), ['tok-good', 'tok-json-payload'])
  t.same(d.skipped, { invalid_psid: 2, invalid_page_id: 1, invalid_token: 3, invalid_payload: 1 })
  t.equal(d.rejected_events, 7)
})

t.test("recurring opt-ins as Meta delivers them: courier's opt-in (frequency, expiry) and stop; Meta's documented fields with real ids", async (t) => {
  const optin = parseDelivery(Buffer.from(fixture('courier-notification-messages-optin.json')), RECEIVED)
  t.same(optin.recurring, [{
    page_id: '1234567890', psid: '5678', payload: '3456', token: '12345678901234567890', at: new Date(1459991487970).toISOString(),
    event: 'optin', title: 'Bird Facts', frequency: 'DAILY', timezone: 'UTC', user_token_status: 'NOT_REFRESHED',
    expires_at: new Date(2145916800000).toISOString(),
  }])
  t.same(optin.tokens, [], 'not a one-time token')
  t.same(optin.subscribers.map((s) => s.last_interaction_at), [null], 'an opt-in does not open the window')
  const stop = parseDelivery(Buffer.from(fixture('courier-notification-messages-stop.json')), RECEIVED)
  t.match(stop.recurring, [{ page_id: '12345', token: '12345678901234567890', event: 'stop', timezone: null }])

  // Meta's reference example with its placeholders replaced, as a real delivery has them: the status with a space.
  const raw = fixture('meta-docs-notification-messages-optin-placeholders.json')
    .replace(/PAGE-ID/g, '1000001').replace(/"PSID"/g, '"4242"').replace(/"TIMESTAMP"/g, '"1764669000000"')
    .replace('FREQUENCY', 'WEEKLY').replace('TIMEZONE-ID', 'Europe/Berlin').replace('TOKEN-STATUS', 'REFRESHED')
    .replace('NOTIFICATION-STATUS', 'STOP NOTIFICATIONS')
  const d = parseDelivery(Buffer.from(raw), RECEIVED)
  t.match(d.recurring, [{ event: 'stop', frequency: 'WEEKLY', timezone: 'Europe/Berlin', user_token_status: 'REFRESHED', title: 'TITLE',
    at: '2025-12-02T09:50:00.000Z', expires_at: '2025-12-02T09:50:00.000Z' }])
})

t.test('recurring events: both spellings of the status, expiry from the frequency when Meta gives none, none without frequency', async (t) => {
  const at = Date.UTC(2026, 0, 31, 12)
  const ev = (token: string, extra: Record<string, unknown>) => ({
    sender: { id: '4242' }, recipient: { id: '1000001' }, timestamp: at,
    optin: { type: 'notification_messages', payload: 'deals', notification_messages_token: token, title: 'Deals', ...extra },
  })
  const body = {
    object: 'page',
    entry: [{
      id: '1000001',
      messaging: [
        ev('tok-daily', { notification_messages_frequency: 'DAILY' }),
        ev('tok-weekly', { notification_messages_frequency: 'weekly' }),
        ev('tok-monthly', { notification_messages_frequency: 'MONTHLY', token_expiry_timestamp: '1780000000' }),
        ev('tok-none', { notification_messages_timezone: 'Mars/Olympus_Mons' }),
        ev('tok-stop-space', { notification_messages_status: 'STOP NOTIFICATIONS' }),
        ev('tok-stop-underscore', { notification_messages_status: 'STOP_NOTIFICATIONS' }),
        ev('tok-resume', { notification_messages_status: 'RESUME NOTIFICATIONS' }),
        ev('tok-resume-underscore', { notification_messages_status: 'resume_notifications' }),
        { sender: { id: '4242' }, recipient: { id: '1000001' }, optin: { type: 'notification_messages', payload: 'deals' } },
      ],
    }],
  }
  const d = parseDelivery(Buffer.from(JSON.stringify(body)), RECEIVED)
  const by = Object.fromEntries(d.recurring.map((r) => [r.token, r]))
  t.equal(by['tok-daily'].expires_at, '2026-07-31T12:00:00.000Z', 'daily: 6 months')
  t.equal(by['tok-weekly'].expires_at, '2026-10-31T12:00:00.000Z', 'weekly (any case): 9 months')
  t.equal(by['tok-weekly'].frequency, 'WEEKLY')
  t.equal(by['tok-monthly'].expires_at, new Date(1780000000 * 1000).toISOString(), "Meta's expiry wins (here in seconds)")
  t.equal(by['tok-none'].expires_at, '9999-12-31T00:00:00.000Z', 'no frequency, no expiry: none')
  t.equal(by['tok-none'].timezone, null, 'an unknown time zone is not kept')
  t.same(d.recurring.map((r) => r.event), ['optin', 'optin', 'optin', 'optin', 'stop', 'stop', 'resume', 'resume'])
  t.same(d.skipped, { invalid_token: 1 }, 'no token: rejected')
})

t.test('the ids a body names, by event, whatever its kind: what a sealed body is found by for erasure', async (t) => {
  const echo = JSON.parse(fixture('meta-docs-echo-standby-template.json').replaceAll('<PAGE_ID>', '111').replaceAll('<PSID>', '222'))
  t.same(namedIds(echo), [['111', '222']], 'an echo names the person as its recipient (not recorded, still named)')
  t.same(parseDelivery(Buffer.from(JSON.stringify(echo)), RECEIVED).named, [['111', '222']], 'parseDelivery keeps them')
  t.same(namedIds(JSON.parse(fixture('vlab-otn-optin-json-string-payload.json'))),
    [['00000000-0000-4000-8000-000000000000', '00000000-0000-4000-8000-000000000001', '935593143497601']], 'entry, sender and recipient, as given')
  t.same(namedIds(Buffer.from('not json')), [], 'what is not JSON names no one')
  const key = Buffer.from('k'.repeat(32))
  const subjects = mentionSubjects([['111', '222'], ['111', '222']], key).map((s) => s.toString('hex'))
  t.equal(subjects.length, 2, 'each ordered pair once')
  t.ok(subjects.includes(subjectOf(key, '111', '222').toString('hex')), 'the Page and the person: the subject an erasure looks up')
})
