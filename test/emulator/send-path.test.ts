import t from 'tap'
import { fbtraceId } from '../../src/emulator/graph-errors.js'
import { appsecretProof, processSend, type SendContext } from '../../src/emulator/send-api.js'
import { EmulatorState, messageId, newToken } from '../../src/emulator/state.js'

const NOW = Date.UTC(2026, 0, 15, 12)

function world() {
  const state = new EmulatorState()
  state.addPage({ id: 'p1', accessToken: 'token-1' })
  state.touchPerson('p1', 'u1').lastInteractionAt = NOW
  const ctx = (appSecret?: string): SendContext => ({
    state,
    now: NOW,
    appSecret,
    requireProof: appSecret !== undefined,
    tokenRefusal: 'invalid_parameter',
  })
  return { state, ctx }
}

const textTo = (text: string) => ({ recipient: { id: 'u1' }, message: { text } })

t.test('ids keep their format and are never repeated across pool refills', async (t) => {
  // 36 + 48 + 16 bytes a round: 2,000 rounds draw about twelve 16 KiB pools.
  const rounds = Array.from({ length: 2000 }, () => [messageId(), newToken(), fbtraceId()])
  t.ok(rounds.every(([m]) => /^m_[A-Za-z0-9_-]{48}$/.test(m)), 'message ids: m_ and 36 bytes in base64url')
  t.ok(rounds.every(([, token]) => /^[A-Za-z0-9_-]{64}$/.test(token)), 'tokens: 48 bytes in base64url')
  t.ok(rounds.every(([, , trace]) => /^A[A-Za-z0-9_-]{22}$/.test(trace)), 'fbtrace ids: A and 16 bytes in base64url')
  t.equal(new Set(rounds.flat()).size, 6000, 'all distinct')
})

t.test('appsecret_proof is checked against the secret of each call, not a stale cached one', async (t) => {
  const { ctx } = world()
  const send = (secret: string, proof: string | undefined) =>
    processSend(ctx(secret), { accessToken: 'token-1', proof, body: textTo('hi') })
  for (let round = 0; round < 3; round++) {
    t.ok(send('secret-a', appsecretProof('token-1', 'secret-a')).ok, 'a with its proof')
    t.ok(send('secret-b', appsecretProof('token-1', 'secret-b')).ok, 'b with its proof')
    t.match(send('secret-a', appsecretProof('token-1', 'secret-b')), { ok: false, error: { code: 100, message: /Invalid appsecret_proof/ } })
    t.match(send('secret-b', appsecretProof('token-1', 'secret-a')), { ok: false, error: { code: 100, message: /Invalid appsecret_proof/ } })
  }
  const proof = appsecretProof('token-1', 'secret-a')
  t.ok(send('secret-a', proof.toUpperCase()).ok, 'hex is case-insensitive')
  for (const bad of [proof.slice(1), proof + '0', 'z' + proof.slice(1), '']) {
    t.match(send('secret-a', bad), { ok: false, error: { code: 100, message: /Invalid appsecret_proof/ } }, `refused: ${bad.length} chars`)
  }
  t.match(send('secret-a', undefined), { ok: false, error: { code: 100, message: /require an appsecret_proof/ } })
})

t.test('appsecret_proof stays right past the cache bound', async (t) => {
  const { state, ctx } = world()
  for (let i = 0; i < 10_050; i++) {
    const token = `many-${i}`
    state.addPage({ id: 'p1', accessToken: token })
    const r = processSend(ctx('s'), { accessToken: token, proof: appsecretProof(token, 's'), body: textTo('hi') })
    if (!r.ok) t.fail(`token ${i} refused`)
  }
  state.addPage({ id: 'p1', accessToken: 'many-0' })
  t.ok(processSend(ctx('s'), { accessToken: 'many-0', proof: appsecretProof('many-0', 's'), body: textTo('hi') }).ok)
  t.notOk(processSend(ctx('s'), { accessToken: 'many-0', proof: appsecretProof('many-1', 's'), body: textTo('hi') }).ok)
})

t.test('text and title limits count code points', async (t) => {
  const { ctx } = world()
  const ok = (text: string) => processSend(ctx(), { accessToken: 'token-1', body: textTo(text) }).ok
  t.ok(ok('a'.repeat(2000)))
  t.notOk(ok('a'.repeat(2001)))
  t.ok(ok('😀'.repeat(2000)), '2000 code points in 4000 UTF-16 units')
  t.notOk(ok('😀'.repeat(2000) + 'a'))
  t.notOk(ok('😀'.repeat(2001)))
  t.ok(ok('a'.repeat(1999) + '😀'))
  t.ok(ok('\ud800'.repeat(1000) + 'a'.repeat(1000)), 'a lone surrogate counts as one')
  t.notOk(ok('\ud800'.repeat(2001)))
  t.notOk(ok('a'.repeat(4001)))

  const title = (s: string) =>
    processSend(ctx(), {
      accessToken: 'token-1',
      body: {
        recipient: { id: 'u1' },
        message: { attachment: { type: 'template', payload: { template_type: 'one_time_notif_req', title: s, payload: s } } },
      },
    }).ok
  t.ok(title('😀'.repeat(65)))
  t.notOk(title('😀'.repeat(66)))
  t.notOk(title('x'.repeat(66)))
})
