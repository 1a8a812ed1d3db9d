import t from 'tap'
import { request } from 'undici'
import { configFromEnv, startFromEnv } from '../../src/emulator/from-env.js'
import { DEFAULT_GRAPH_VERSION, GRAPH_VERSIONS, oldestServed } from '../../src/graph/versions.js'
import { PAGE, expectGraphError, otnRequest, send, setup, text, withToken } from './fixtures/setup.js'

const DEFAULTS = {
  webhook_stamps: 'milliseconds',
  omit_recipient: false,
  param_errors: 'detailed',
  token_refusal: 'invalid_parameter',
  optin_request_cooldown_ms: null,
  recurring_cooldown_hours: 48,
}

t.test('GET/PUT /_emulator/settings round-trip; reset restores the creation-time options', async (t) => {
  const { emu } = setup(t, { tokenRefusal: 'outside_window', optinRequestCooldownMs: 5000 })
  const call = async (method: 'GET' | 'PUT' | 'POST', url: string, payload?: object) => {
    const res = await emu.app.inject({ method, url, ...(payload !== undefined ? { payload } : {}) })
    return { status: res.statusCode, json: res.body === '' ? undefined : res.json() }
  }
  const created = { ...DEFAULTS, token_refusal: 'outside_window', optin_request_cooldown_ms: 5000 }
  t.same(await call('GET', '/_emulator/settings'), { status: 200, json: created })

  const put = await call('PUT', '/_emulator/settings', { webhook_stamps: 'seconds', param_errors: 'generic' })
  t.same(put, { status: 200, json: { ...created, webhook_stamps: 'seconds', param_errors: 'generic' } }, 'merged, whole object back')
  const all = {
    webhook_stamps: 'mixed',
    omit_recipient: true,
    param_errors: 'generic',
    token_refusal: 'generic_parameter',
    optin_request_cooldown_ms: null,
    recurring_cooldown_hours: 24,
  }
  t.same((await call('PUT', '/_emulator/settings', all)).json, all)
  t.same((await call('GET', '/_emulator/settings')).json, all)
  t.same((await call('PUT', '/_emulator/settings', {})).json, all, 'an empty body changes nothing')
  t.same(emu.settings(), {
    webhookStamps: 'mixed',
    omitRecipient: true,
    paramErrors: 'generic',
    tokenRefusal: 'generic_parameter',
    optinRequestCooldownMs: null,
    recurringCooldownHours: 24,
  })

  for (const bad of [
    { webhook_stamps: 'minutes' },
    { omit_recipient: 'yes' },
    { param_errors: 'terse' },
    { token_refusal: 'nope' },
    { optin_request_cooldown_ms: -1 },
    { optin_request_cooldown_ms: 1.5 },
    { recurring_cooldown_hours: -1 },
    { recurring_cooldown_hours: 'two days' },
    { tokenRefusal: 'outside_window' },
  ]) {
    const res = await call('PUT', '/_emulator/settings', bad)
    t.equal(res.status, 400, `refused: ${JSON.stringify(bad)}`)
    t.type(res.json.error, 'string')
  }
  t.same((await call('GET', '/_emulator/settings')).json, all, 'a refused PUT changes nothing')

  // The settings take effect: the token refusal is now the bare 100.
  const token = emu.issueToken(PAGE, 'u1', 'topic')
  await send(emu, withToken(token))
  t.match((await send(emu, withToken(token))).json.error, { message: '(#100) Invalid parameter', code: 100, error_subcode: undefined })

  t.equal((await call('POST', '/_emulator/reset')).status, 204)
  t.same((await call('GET', '/_emulator/settings')).json, created, 'reset restores the options given at creation')
  t.same(emu.settings().tokenRefusal, 'outside_window')

  t.throws(() => emu.settings({ paramErrors: 'loud' as any }), RangeError)
  t.throws(() => emu.settings({ optinRequestCooldownMs: -5 }), RangeError)
  t.throws(() => emu.settings({ recurringCooldownHours: Number.NaN }), /recurringCooldownHours/)
  t.throws(() => emu.settings({ webhookStamps: 'seconds', tokenRefusal: 'x' as any }), RangeError)
  t.equal(emu.settings().webhookStamps, 'milliseconds', 'a refused patch changes nothing, not even its valid fields')
})

t.test('invalid creation-time options are refused', async (t) => {
  t.throws(() => setup(t, { webhookStamps: 'weekly' as any }), /webhookStamps must be one of/)
  t.throws(() => setup(t, { optinRequestCooldownMs: Number.NaN }), /optinRequestCooldownMs/)
})

const versionTo = (path: string) => path.split('/')[1]
const endOf = (version: string) => Date.parse(`${GRAPH_VERSIONS.find((v) => v.version === version)!.until}T23:59:59.999Z`)

t.test('facebook-api-version names the version that served the call', async (t) => {
  const { emu } = setup(t)
  await emu.personWrites(PAGE, 'u1')
  const current = await send(emu, text('u1'), { path: '/v21.0/me/messages' })
  t.equal(current.status, 200)
  t.equal(current.headers['facebook-api-version'], 'v21.0', 'a served version answers as itself')
  t.match(emu.requests.at(-1), { version: 'v21.0', servedVersion: 'v21.0', outcome: 'accepted' })

  const newest = await send(emu, text('u1'), { path: `/${DEFAULT_GRAPH_VERSION}/${PAGE}/messages` })
  t.equal(newest.headers['facebook-api-version'], DEFAULT_GRAPH_VERSION)

  const refused = await send(emu, text('u1'), { path: '/v22.0/me/messages', token: 'wrong' })
  t.equal(expectGraphError(refused.json).code, 190)
  t.equal(refused.headers['facebook-api-version'], 'v22.0', 'Graph errors carry it too')

  const future = await send(emu, text('u1'), { path: '/v99.0/me/messages' })
  t.equal(future.status, 200)
  t.equal(future.headers['facebook-api-version'], 'v99.0', 'a newer version than the table knows is served as itself')
  t.match(emu.requests.at(-1), { version: 'v99.0', servedVersion: 'v99.0' })

  const ancient = await send(emu, text('u1'), { path: '/v2.12/me/messages' })
  t.equal(ancient.headers['facebook-api-version'], oldestServed(emu.now()), 'a version older than the table is long retired')
  t.equal(ancient.headers['facebook-api-version'], 'v20.0')

  const malformed = await send(emu, text('u1'), { path: '/latest/me/messages' })
  t.equal(expectGraphError(malformed.json).code, 2500, 'a malformed version: unknown path as before')
  t.equal(malformed.headers['facebook-api-version'], undefined)
  t.match(emu.requests.at(-1), { version: 'latest', servedVersion: undefined })

  emu.setFaults({ errorRate: 1 })
  const fault = await send(emu, text('u1'), { path: '/v23.0/me/messages' })
  t.equal(fault.status, 500)
  t.equal(fault.headers['facebook-api-version'], 'v23.0', 'an injected Graph error carries it')
  emu.setFaults({ http5xxRate: 1 })
  const gateway = await emu.app.inject({ method: 'POST', url: '/v23.0/me/messages?access_token=page-token-1', payload: text('u1') })
  t.equal(gateway.headers['facebook-api-version'], undefined, 'a gateway 5xx page does not')
})

t.test('a retired version is served by the oldest version still available (emulator clock)', async (t) => {
  const { emu } = setup(t)
  t.equal((await send(emu, text('nobody'), { path: '/v20.0/me/messages' })).headers['facebook-api-version'], 'v20.0', 'before its end')

  emu.advanceClock(endOf('v20.0') - emu.now())
  t.equal((await send(emu, text('nobody'), { path: '/v20.0/me/messages' })).headers['facebook-api-version'], 'v20.0', 'its last millisecond')
  emu.advanceClock(1)
  await emu.personWrites(PAGE, 'u1')
  const retired = await send(emu, text('u1'), { path: '/v20.0/me/messages' })
  t.equal(retired.status, 200, 'still answered')
  t.equal(retired.headers['facebook-api-version'], 'v21.0')
  t.match(emu.requests.at(-1), { version: 'v20.0', servedVersion: 'v21.0', path: '/v20.0/me/messages' })

  emu.advanceClock(endOf('v21.0') + 1 - emu.now())
  await emu.personWrites(PAGE, 'u1')
  const token = emu.issueToken(PAGE, 'u1', 'topic')
  for (const path of ['/v20.0/me/messages', '/v21.0/me/messages', `/v21.0/${PAGE}/messages`]) {
    const res = await send(emu, text('u1'), { path })
    t.equal(res.headers['facebook-api-version'], 'v22.0', `${versionTo(path)} after v21.0's end: served as v22.0`)
  }
  const spent = await send(emu, withToken(token), { path: '/v21.0/me/messages' })
  t.equal(spent.headers['facebook-api-version'], 'v22.0')
  const again = await send(emu, withToken(token), { path: '/v21.0/me/messages' })
  t.equal(expectGraphError(again.json).code, 100)
  t.equal(again.headers['facebook-api-version'], 'v22.0', 'an error answer from a retired version too')
  t.equal((await send(emu, text('u1'), { path: '/v22.0/me/messages' })).headers['facebook-api-version'], 'v22.0')

  const malformedBody = await emu.app.inject({
    method: 'POST',
    url: '/v21.0/me/messages?access_token=page-token-1',
    headers: { 'content-type': 'application/json' },
    payload: '{not json',
  })
  t.equal(malformedBody.statusCode, 400)
  t.equal(malformedBody.headers['facebook-api-version'], 'v22.0', 'a body that does not parse is still answered by a version')

  emu.reset()
  t.equal((await send(emu, text('nobody'), { path: '/v21.0/me/messages' })).headers['facebook-api-version'], 'v21.0', 'reset puts the clock back')
})

t.test('settings from the environment', async (t) => {
  t.match(
    configFromEnv({
      EMULATOR_WEBHOOK_STAMPS: 'mixed',
      EMULATOR_OMIT_RECIPIENT: 'true',
      EMULATOR_PARAM_ERRORS: 'generic',
      EMULATOR_TOKEN_REFUSAL: 'generic_parameter',
      EMULATOR_OPTIN_REQUEST_COOLDOWN_MS: '60000',
      EMULATOR_RECURRING_COOLDOWN_HOURS: '24',
    }),
    {
      webhookStamps: 'mixed',
      omitRecipient: true,
      paramErrors: 'generic',
      tokenRefusal: 'generic_parameter',
      optinRequestCooldownMs: 60000,
      recurringCooldownHours: 24,
    },
  )
  t.match(
    configFromEnv({ EMULATOR_WEBHOOK_STAMPS: '', EMULATOR_OMIT_RECIPIENT: '0', EMULATOR_OPTIN_REQUEST_COOLDOWN_MS: '' }),
    { webhookStamps: 'milliseconds', omitRecipient: false, optinRequestCooldownMs: undefined },
    'empty means the default',
  )
  t.equal(configFromEnv({ EMULATOR_OPTIN_REQUEST_COOLDOWN_MS: '0' }).optinRequestCooldownMs, 0)

  const errors: [Record<string, string>, string][] = [
    [{ EMULATOR_WEBHOOK_STAMPS: 'minutes' }, 'EMULATOR_WEBHOOK_STAMPS: expected one of milliseconds, seconds, string, omitted, mixed, got "minutes"'],
    [{ EMULATOR_OMIT_RECIPIENT: 'yes' }, 'EMULATOR_OMIT_RECIPIENT: expected true or false, got "yes"'],
    [{ EMULATOR_PARAM_ERRORS: 'terse' }, 'EMULATOR_PARAM_ERRORS: expected one of detailed, generic, got "terse"'],
    [
      { EMULATOR_TOKEN_REFUSAL: 'invalid' },
      'EMULATOR_TOKEN_REFUSAL: expected one of invalid_parameter, outside_window, generic_parameter, got "invalid"',
    ],
    [{ EMULATOR_OPTIN_REQUEST_COOLDOWN_MS: '-5' }, 'EMULATOR_OPTIN_REQUEST_COOLDOWN_MS: expected a whole number of milliseconds >= 0, got "-5"'],
    [{ EMULATOR_OPTIN_REQUEST_COOLDOWN_MS: '1.5' }, 'EMULATOR_OPTIN_REQUEST_COOLDOWN_MS: expected a whole number of milliseconds >= 0, got "1.5"'],
    [{ EMULATOR_OPTIN_REQUEST_COOLDOWN_MS: '1m' }, 'EMULATOR_OPTIN_REQUEST_COOLDOWN_MS: expected a whole number of milliseconds >= 0, got "1m"'],
    [{ EMULATOR_RECURRING_COOLDOWN_HOURS: '-1' }, 'EMULATOR_RECURRING_COOLDOWN_HOURS: expected a number of hours >= 0, got "-1"'],
  ]
  for (const [env, message] of errors) t.throws(() => configFromEnv(env), { message }, message)

  const { emulator, url } = await startFromEnv(
    {
      EMULATOR_PORT: '0',
      EMULATOR_PAGES: `${PAGE}:tok-a`,
      EMULATOR_PARAM_ERRORS: 'generic',
      EMULATOR_OPTIN_REQUEST_COOLDOWN_MS: '60000',
      EMULATOR_WEBHOOK_STAMPS: 'seconds',
      EMULATOR_RECURRING_COOLDOWN_HOURS: '12',
    },
    { logger: false },
  )
  t.teardown(() => emulator.close())
  const settings = await request(`${url}/_emulator/settings`)
  t.same(await settings.body.json(), {
    ...DEFAULTS,
    webhook_stamps: 'seconds',
    param_errors: 'generic',
    optin_request_cooldown_ms: 60000,
    recurring_cooldown_hours: 12,
  })

  const post = async (body: unknown) => {
    const res = await request(`${url}/${DEFAULT_GRAPH_VERSION}/me/messages?access_token=tok-a`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
    return { status: res.statusCode, version: res.headers['facebook-api-version'], json: (await res.body.json()) as any }
  }
  await emulator.personWrites(PAGE, 'u1')
  t.equal(typeof JSON.parse(emulator.webhooks[0].body).entry[0].time, 'number')
  t.ok(JSON.parse(emulator.webhooks[0].body).entry[0].time < 1e11, 'EMULATOR_WEBHOOK_STAMPS applies')
  const first = await post(otnRequest('u1'))
  t.equal(first.status, 200)
  t.equal(first.version, DEFAULT_GRAPH_VERSION)
  const second = await post(otnRequest('u1'))
  t.equal(second.status, 400)
  t.match(second.json.error, { code: 613, error_subcode: 1893016, type: 'OAuthException' }, 'EMULATOR_OPTIN_REQUEST_COOLDOWN_MS applies')
  const bad = await post({ recipient: { id: 'u1' }, message: { text: '' } })
  t.same(Object.keys(bad.json.error).sort(), ['code', 'fbtrace_id', 'message', 'type'])
  t.match(bad.json.error, { message: '(#100) Invalid parameter', code: 100 }, 'EMULATOR_PARAM_ERRORS applies')
})
