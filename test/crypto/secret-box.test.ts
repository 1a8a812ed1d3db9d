import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { Keyring, newEncryptionKey, parseEncryptionKeys, SecretUnreadableError } from '../../src/crypto/secret-box.js'

const key = (id: string) => parseEncryptionKeys(newEncryptionKey(id)).keys[0]

t.test('a value is sealed under the first key with a fresh IV, and opens to itself', async (t) => {
  const ring = new Keyring([key('k2'), key('k1')])
  const a = ring.seal('pages.access_token', 'EAA-secret-token')
  const b = ring.seal('pages.access_token', 'EAA-secret-token')
  t.match(a, /^enc:v1:k2:[A-Za-z0-9_-]+$/, 'the stored form names the version and the key id')
  t.not(a, b, 'a random IV: the same value gives another ciphertext')
  t.notOk(a.includes('EAA-secret-token') || a.includes(Buffer.from('EAA-secret-token').toString('base64')), 'neither the value nor its base64')
  t.equal(ring.open('pages.access_token', a), 'EAA-secret-token')
  t.ok(ring.isCurrent(a))
})

t.test('every listed key decrypts; a value under a key no longer listed fails naming its id, never the value', async (t) => {
  const old = key('old')
  const sealed = new Keyring([old]).seal('event_subscriptions.secret', 'whsec_value')
  const rotated = new Keyring([key('new'), old])
  t.equal(rotated.open('event_subscriptions.secret', sealed), 'whsec_value', 'an older key still decrypts')
  t.notOk(rotated.isCurrent(sealed), 'but it is not current: rotation takes it')
  const err = t.throws(() => new Keyring([key('new')]).open('event_subscriptions.secret', sealed)) as Error
  t.type(err, SecretUnreadableError)
  t.match(err.message, /key id "old"/)
  t.notMatch(err.message, /whsec_value|enc:v1/)
})

t.test('legacy plaintext is read as it is, and is not current once a key is configured', async (t) => {
  const ring = new Keyring([key('k1')])
  t.equal(ring.open('pages.access_token', 'EAA-plain'), 'EAA-plain')
  t.notOk(ring.isCurrent('EAA-plain'))
  t.ok(new Keyring([]).isCurrent('EAA-plain'), 'without keys plaintext is what is written')
  t.equal(new Keyring([]).seal('pages.access_token', 'EAA-plain'), 'EAA-plain')
})

t.test('a tampered ciphertext, one moved to another column, or the wrong key with the same id fail closed', async (t) => {
  const k = key('k1')
  const ring = new Keyring([k])
  const sealed = ring.seal('pages.access_token', 'EAA-secret-token')
  const body = sealed.slice('enc:v1:k1:'.length)
  const flipped = Buffer.from(body, 'base64url')
  flipped[flipped.length - 1] ^= 1
  const tampered = `enc:v1:k1:${flipped.toString('base64url')}`
  for (const [what, value, column] of [
    ['a flipped ciphertext bit', tampered, 'pages.access_token'],
    ['another column', sealed, 'event_subscriptions.secret'],
    ['truncated', 'enc:v1:k1:AAAA', 'pages.access_token'],
  ] as const) {
    const err = t.throws(() => ring.open(column, value), what) as Error
    t.type(err, SecretUnreadableError, what)
    t.notMatch(err.message, /EAA-secret-token/, what)
  }
  const impostor = new Keyring([{ id: 'k1', key: randomBytes(32) }])
  t.throws(() => impostor.open('pages.access_token', sealed), /fails authentication/)
  t.throws(() => ring.open('pages.access_token', 'enc:v9:k1:xx'), /unknown encryption format/)
})

t.test('ENCRYPTION_KEYS: one problem per bad entry, by position and id, never quoting a key', async (t) => {
  const good = newEncryptionKey('a')
  const short = `b:${Buffer.alloc(16).toString('base64')}`
  const { keys, problems } = parseEncryptionKeys(`${good}, ${short},nocolon,bad id:${Buffer.alloc(32).toString('base64')},c:not*base64,${good}`)
  t.same(keys.map((k) => k.id), ['a'])
  t.same(problems, [
    'entry 2 (id b): the key must be 32 bytes (44 base64 characters), it is 16',
    'entry 3: is not <id>:<base64 key>',
    'entry 4: its id must be 1 to 32 letters, digits, "-" or "_"',
    'entry 5 (id c): the key is not base64',
    'entry 6: id a is used twice',
  ])
  t.notMatch(problems.join('\n'), new RegExp(good.slice(2, 20).replace(/[+/]/g, '.')))
})

t.test('keyed digests: stable per key and purpose, different across keys and purposes, the unkeyed SHA-256 last for rows not yet rotated', async (t) => {
  const [a, b] = [key('a'), key('b')]
  const ring = new Keyring([a, b])
  const d = ring.digest('optin_token', 'TOKEN-1')
  t.equal(d.length, 32)
  t.same(ring.digest('optin_token', 'TOKEN-1'), d, 'the same value, the same digest')
  t.notSame(ring.digest('psid', 'TOKEN-1'), d, 'another purpose, another digest')
  t.notSame(new Keyring([b, a]).digest('optin_token', 'TOKEN-1'), d, 'another current key, another digest')
  const all = ring.digests('optin_token', 'TOKEN-1')
  t.equal(all.length, 3)
  t.same(all[0], d, 'the current key first')
  t.same(all[1], new Keyring([b]).digest('optin_token', 'TOKEN-1'), 'then every older key')
  t.same(all[2], createHash('sha256').update('TOKEN-1').digest(), 'then the unkeyed digest')
  t.same(new Keyring([]).digest('webhook_body', 'x'), createHash('sha256').update('x').digest(), 'no key: the unkeyed digest')
  t.same(new Keyring([]).digests('webhook_body', 'x'), [createHash('sha256').update('x').digest()], 'no key: the stored digest is the only lookup')
  t.notMatch(d.toString('hex'), createHash('sha256').update('TOKEN-1').digest('hex'), 'keyed is not the plain hash')
})

t.test('bytes are sealed to the same stored form, open to themselves, and legacy bytes are read as they are', async (t) => {
  const ring = new Keyring([key('a')])
  const body = Buffer.from('{"object":"page","entry":[]}')
  const sealed = ring.sealBytes('webhook_events.body', body)
  t.match(sealed.toString('utf8'), /^enc:v1:a:/)
  t.notMatch(sealed.toString('utf8'), 'entry')
  t.same(ring.openBytes('webhook_events.body', sealed), body)
  t.same(ring.openBytes('webhook_events.body', body), body, 'legacy plaintext')
  t.ok(ring.isCurrent(sealed))
  t.notOk(ring.isCurrent(body))
  t.throws(() => ring.openBytes('optin_tokens.token', sealed), SecretUnreadableError, 'bound to its column')
  t.same(new Keyring([]).sealBytes('webhook_events.body', body), body, 'no key: stored as it is')
})
