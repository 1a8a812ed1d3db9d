import t from 'tap'
import { readFileSync } from 'node:fs'
import { ConfigError, EnvSchema, loadConfig, minimumLeaseMs } from '../src/config.js'

t.test('defaults fill in everything but API_KEYS', async (t) => {
  const config = loadConfig({ API_KEYS: 'key-one-123, key-two-456' })
  t.same(config.apiKeys, [
    { name: 'key-1', secret: 'key-one-123', pages: null, readOnly: false },
    { name: 'key-2', secret: 'key-two-456', pages: null, readOnly: false },
  ], 'bare keys are admin keys named by their position, as before scopes existed')
  t.equal(config.AUDIT_RETENTION_DAYS, 365)
  t.equal(config.PORT, 3000)
  t.equal(config.HOST, '127.0.0.1')
  t.equal(config.PGLITE_DATA_DIR, './data/pglite')
  t.equal(config.GRAPH_API_VERSION, 'v26.0')
  t.equal(config.GRAPH_API_CONNECTIONS, 512)
  t.equal(config.DATABASE_URL, undefined)
})

t.test('each bad value gets its own line naming the variable', async (t) => {
  const error = t.throws(() => loadConfig({
    PORT: 'eighty', LOG_LEVEL: 'loud', GRAPH_API_VERSION: '21', DATABASE_URL: 'mysql://x', PAGE_ID: '123', API_KEYS: 'short',
  })) as ConfigError
  t.type(error, ConfigError)
  const lines = error.problems
  t.equal(lines.length, 6, lines.join('\n'))
  t.match(lines, [
    /^DATABASE_URL: must match pattern/,
    /^PORT: must be integer/,
    /^LOG_LEVEL: must be one of fatal, error, warn, info, debug, trace, silent/,
    /^GRAPH_API_VERSION: must match pattern/,
    /^PAGE_ID and PAGE_ACCESS_TOKEN: set both or neither/,
    /^API_KEYS: entry 1: a key is at least 8 characters/,
  ])
  const missing = t.throws(() => loadConfig({})) as ConfigError
  t.match(missing.problems, [/^API_KEYS: is required/])
})

t.test('a lease shorter than one attempt can take is refused', async (t) => {
  // An attempt may wait GRAPH_API_TIMEOUT_MS for a connection and as long for Meta's answer;
  // a shorter lease would let recovery take over a send that is still in flight.
  const error = t.throws(() => loadConfig({ API_KEYS: 'key-one-123', TOKEN_LEASE_SECONDS: '10', GRAPH_API_TIMEOUT_MS: '5000' })) as ConfigError
  t.match(error.problems, [/^TOKEN_LEASE_SECONDS: must be at least 11 with GRAPH_API_TIMEOUT_MS=5000/])
  t.equal(loadConfig({ API_KEYS: 'key-one-123', TOKEN_LEASE_SECONDS: '11', GRAPH_API_TIMEOUT_MS: '5000' }).TOKEN_LEASE_SECONDS, 11)
  t.equal(loadConfig({ API_KEYS: 'key-one-123' }).TOKEN_LEASE_SECONDS * 1000 >= minimumLeaseMs(loadConfig({ API_KEYS: 'key-one-123' }).GRAPH_API_TIMEOUT_MS), true, 'the defaults keep the rule')
})

t.test('.env.example documents every variable', async (t) => {
  const example = readFileSync(new URL('../.env.example', import.meta.url), 'utf8')
  for (const key of Object.keys(EnvSchema.properties)) {
    t.match(example, new RegExp(`^#? ?${key}=`, 'm'), key)
  }
})

t.test('retention days and the erasure key: defaults, 0 keeps forever, bad values named', async (t) => {
  const config = loadConfig({ API_KEYS: 'key-one-123' })
  t.equal(config.WEBHOOK_BODY_RETENTION_DAYS, 30)
  t.equal(config.MESSAGE_BODY_RETENTION_DAYS, 90)
  t.equal(config.ERASURE_KEY, undefined)
  t.equal(loadConfig({ API_KEYS: 'key-one-123', WEBHOOK_BODY_RETENTION_DAYS: '0' }).WEBHOOK_BODY_RETENTION_DAYS, 0)
  const error = t.throws(() => loadConfig({ API_KEYS: 'key-one-123', ERASURE_KEY: 'short', MESSAGE_BODY_RETENTION_DAYS: '-1' })) as ConfigError
  t.match(error.problems, [/^ERASURE_KEY: /, /^MESSAGE_BODY_RETENTION_DAYS: /])
})

t.test('events: safe defaults, short values for tests, bad values named', async (t) => {
  const config = loadConfig({ API_KEYS: 'key-one-123' })
  t.match(config, {
    EVENTS_ALLOW_HTTP: false, EVENTS_ALLOW_PRIVATE_NETWORKS: false, EVENTS_ALLOWED_HOSTS: undefined, EVENTS_ATTEMPT_TIMEOUT_MS: 15000,
    EVENTS_RETRY_BASE_SECONDS: 5, EVENTS_MAX_ATTEMPTS: 15, EVENTS_DISABLE_AFTER_HOURS: 120, EVENTS_SECRET_GRACE_HOURS: 24, EVENTS_RETENTION_DAYS: 30,
  })
  t.equal(loadConfig({ API_KEYS: 'key-one-123', EVENTS_RETRY_BASE_SECONDS: '0.05', EVENTS_ALLOW_HTTP: 'true' }).EVENTS_RETRY_BASE_SECONDS, 0.05)
  t.equal(loadConfig({ API_KEYS: 'key-one-123', EVENTS_ALLOWED_HOSTS: 'hooks.internal, 10.0.0.0/8' }).EVENTS_ALLOWED_HOSTS, 'hooks.internal, 10.0.0.0/8')
  const error = t.throws(() => loadConfig({ API_KEYS: 'key-one-123', EVENTS_ALLOWED_HOSTS: '10.0.0.0/40', EVENTS_MAX_ATTEMPTS: '0', EVENTS_ALLOW_HTTP: 'yes' })) as ConfigError
  t.match(error.problems, [/^EVENTS_ALLOW_HTTP: /, /^EVENTS_MAX_ATTEMPTS: /, /^EVENTS_ALLOWED_HOSTS: 10.0.0.0\/40: not an address range/])
})

t.test('API_KEYS: every form of entry, each with its name, Pages and rights', async (t) => {
  const config = loadConfig({
    API_KEYS: ' bare-secret-1 , ops:ops-secret-22, shop-a:shop-secret-a:pages=1001+1002,reports:report-secret:read-only,' +
      'Shop_B.2:b-secret-xyz:read-only:pages=2002, mixed:m-secret-123:pages=3003:read-only',
  })
  t.same(config.apiKeys, [
    { name: 'key-1', secret: 'bare-secret-1', pages: null, readOnly: false },
    { name: 'ops', secret: 'ops-secret-22', pages: null, readOnly: false },
    { name: 'shop-a', secret: 'shop-secret-a', pages: ['1001', '1002'], readOnly: false },
    { name: 'reports', secret: 'report-secret', pages: null, readOnly: true },
    { name: 'Shop_B.2', secret: 'b-secret-xyz', pages: ['2002'], readOnly: true },
    { name: 'mixed', secret: 'm-secret-123', pages: ['3003'], readOnly: true },
  ])
})

t.test('API_KEYS: a malformed entry stops start-up with a line naming it, never its secret', async (t) => {
  const cases: Array<[string, RegExp]> = [
    ['short', /^API_KEYS: entry 1: a key is at least 8 characters/],
    ['good-key-123,,other-key-456', /^API_KEYS: entry 2 is empty/],
    ['bad name!:secret-secret', /^API_KEYS: entry 1: the name before the first colon/],
    [':secret-secret', /^API_KEYS: entry 1: the name before the first colon/],
    ['shop:tiny', /^API_KEYS: entry 1 \(shop\): the secret is at least 8 characters/],
    ['shop:secret-secret:pages=', /^API_KEYS: entry 1 \(shop\): pages= takes Page ids/],
    ['shop:secret-secret:pages=12a', /^API_KEYS: entry 1 \(shop\): pages= takes Page ids/],
    ['shop:secret-secret:pages=1+', /^API_KEYS: entry 1 \(shop\): pages= takes Page ids/],
    ['shop:secret-secret:pages=1:pages=2', /^API_KEYS: entry 1 \(shop\): pages= is given twice/],
    ['shop:secret-secret:read-only:read-only', /^API_KEYS: entry 1 \(shop\): read-only is given twice/],
    ['shop:secret-secret:readonly', /^API_KEYS: entry 1 \(shop\): unknown scope "readonly"/],
    ['shop:secret-secret:', /^API_KEYS: entry 1 \(shop\): unknown scope ""/],
    ['a:secret-one-1,a:secret-two-2', /^API_KEYS: the name a is given to two keys/],
    ['a:same-secret-1,b:same-secret-1', /^API_KEYS: key b: the same secret is listed twice/],
    ['key-2:own-secret-1,bare-secret-2', /^API_KEYS: the name key-2 is given to two keys/],
  ]
  for (const [value, expected] of cases) {
    const error = t.throws(() => loadConfig({ API_KEYS: value }), value) as ConfigError
    t.type(error, ConfigError)
    t.match(error.problems, [expected], value)
    for (const secret of ['secret-secret', 'secret-one-1', 'secret-two-2', 'same-secret-1', 'own-secret-1', 'tiny']) {
      if (value.includes(secret)) t.notOk(error.message.includes(secret), `${value}: the message does not quote the secret`)
    }
  }
  const two = t.throws(() => loadConfig({ API_KEYS: 'short,x:y' })) as ConfigError
  t.equal(two.problems.length, 2, 'every bad entry at once')
})

t.test('ENCRYPTION_KEYS: the first key encrypts, all decrypt; a malformed entry is a line naming it, never the key', async (t) => {
  const k1 = Buffer.alloc(32, 1).toString('base64')
  const k2 = Buffer.alloc(32, 2).toString('base64')
  const config = loadConfig({ API_KEYS: 'key-one-123', ENCRYPTION_KEYS: `new:${k2}, old:${k1}` })
  t.same(config.encryptionKeys.map((k) => [k.id, k.key.toString('base64')]), [['new', k2], ['old', k1]])
  t.same(loadConfig({ API_KEYS: 'key-one-123' }).encryptionKeys, [], 'unset: none (the embedded database makes its own)')
  const bad = t.throws(() => loadConfig({ API_KEYS: 'key-one-123', ENCRYPTION_KEYS: `a:${k1},b:${k1.slice(0, 20)},${k2}` })) as ConfigError
  t.match(bad.problems, [
    /^ENCRYPTION_KEYS: entry 2 \(id b\): the key must be 32 bytes/,
    /^ENCRYPTION_KEYS: entry 3: is not <id>:<base64 key>/,
  ])
  t.equal(bad.problems.length, 2)
  t.notMatch(bad.message, k1.slice(0, 20))
  t.notMatch(bad.message, k2)
})

t.test('DATABASE_URL without ENCRYPTION_KEYS is refused, unless ALLOW_PLAINTEXT_SECRETS=true', async (t) => {
  const url = 'postgres://otn@db.example:5432/otn'
  const refused = t.throws(() => loadConfig({ API_KEYS: 'key-one-123', DATABASE_URL: url })) as ConfigError
  t.match(refused.problems, [/^ENCRYPTION_KEYS: is required with DATABASE_URL, so that Page access tokens and event signing secrets are not stored in plaintext \(set ALLOW_PLAINTEXT_SECRETS=true/])
  t.equal(refused.problems.length, 1)
  const allowed = loadConfig({ API_KEYS: 'key-one-123', DATABASE_URL: url, ALLOW_PLAINTEXT_SECRETS: 'true' })
  t.equal(allowed.ALLOW_PLAINTEXT_SECRETS, true)
  t.same(allowed.encryptionKeys, [])
  t.equal(loadConfig({ API_KEYS: 'key-one-123' }).ALLOW_PLAINTEXT_SECRETS, false, 'off by default')
  t.throws(() => loadConfig({ API_KEYS: 'key-one-123', DATABASE_URL: url, ALLOW_PLAINTEXT_SECRETS: 'yes' }), /ALLOW_PLAINTEXT_SECRETS: must be boolean/)
  t.ok(loadConfig({ API_KEYS: 'key-one-123', DATABASE_URL: url, ENCRYPTION_KEYS: `k:${Buffer.alloc(32).toString('base64')}` }), 'with a key it starts')
})
