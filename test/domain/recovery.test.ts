import { DEFAULT_GRAPH_VERSION } from '../../src/graph/versions.js'
import t, { type Test } from 'tap'
import { sql } from 'kysely'
import { recoverLeases, RECOVERY_ATTEMPTS_CAP } from '../../src/domain/recovery.js'
import { directSteps } from '../../src/domain/send-steps.js'
import type { SendDeps } from '../../src/domain/send.js'
import { claimFree } from '../fixtures/tokens.js'
import { appsecretProof, createGraphClient } from '../../src/graph/client.js'
import type { Notification } from '../../src/db/types.js'
import { auth, build, TEST_ENCRYPTION_KEYS } from '../helper.js'
import { APP_SECRET, FAST_TIMEOUT_MS, giveTokens, graphEnv, newPsid, tokenStates, world, type World } from '../fixtures/otn.js'

const LEASE = 60

function depsFor (t: Test, w: World, timeoutMs = 2000): SendDeps {
  const graph = createGraphClient({ baseUrl: w.base, version: DEFAULT_GRAPH_VERSION, appSecret: APP_SECRET, timeoutMs, connectTimeoutMs: 1000 })
  t.teardown(() => graph.close())
  return { db: w.db, graph, config: { TOKEN_LEASE_SECONDS: LEASE, GRAPH_API_MAX_RETRIES: 2 }, steps: directSteps(w.db, LEASE) }
}

async function pendingNotification (w: World, psid: string, extra: Partial<{ attempts: number, route: 'window' | 'token', broadcast_id: string }> = {}): Promise<Notification> {
  return w.db.insertInto('notifications').values({
    page_id: w.pageId, topic_id: w.topic.id, psid, message: JSON.stringify({ text: 'back in stock' }), request_hash: 'h', ...extra,
  }).returningAll().executeTakeFirstOrThrow()
}

/** The process that claimed the token dies here: the reservation stays, its lease runs out. */
async function claimAndDie (w: World, n: Notification, opts: { attempts?: number } = {}) {
  const claimed = await claimFree(w.db, { page_id: w.pageId, payload: w.topic.payload, psid: n.psid, notification_id: n.id, leaseSeconds: LEASE })
  if (!claimed) throw new Error('nothing to claim')
  await w.db.updateTable('notifications')
    .set({ attempts: opts.attempts ?? 0, route: 'token', token_id: claimed.id, updated_at: sql`now() - interval '1 hour'` })
    .where('id', '=', n.id).execute()
  await expireLease(w, claimed.id)
  return claimed
}

async function expireLease (w: World, tokenId: string): Promise<void> {
  await w.db.updateTable('optin_tokens').set({ lease_expires_at: sql`now() - interval '1 second'` }).where('id', '=', tokenId).execute()
}

const row = (w: World, id: string) => w.db.selectFrom('notifications').selectAll().where('id', '=', id).executeTakeFirstOrThrow()

t.test('claimed, then the process died before sending: recovery sends the same token once', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 2)
  const n = await pendingNotification(w, psid)
  const claimed = await claimAndDie(w, n)
  t.equal(claimed.id, tokens[0].id)

  const finals: string[] = []
  t.equal(await recoverLeases({ ...depsFor(t, w), onFinal: (f) => finals.push(`${f.id} ${f.status}/${f.route}`) }), 1)
  t.same(await tokenStates(w.db, tokens.map((x) => x.id)), ['used', 'available'])
  t.match(await row(w, n.id), { status: 'sent', route: 'token', token_state: 'used', attempts: 1 })
  t.same(finals, [`${n.id} sent/token`], 'the outcome recovery wrote is counted once (otn_notifications_total)')
  t.equal(w.emulator.inbox(w.pageId, psid).length, 1)
  t.same(w.emulator.requests.map((r) => r.recipient), [{ one_time_notif_token: tokens[0].token }])
  t.same(w.emulator.doubleSpends(), [])
  t.equal(await recoverLeases(depsFor(t, w)), 0, 'nothing left stranded')
})

t.test('sent and delivered, then the process died: Meta refuses the re-send, so the outcome is unconfirmed', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 2)
  const n = await pendingNotification(w, psid)
  const claimed = await claimAndDie(w, n, { attempts: 1 })
  // What the dead process managed: its send arrived, its answer died with it.
  const delivered = await w.emulator.app.inject({
    method: 'POST', url: `/${DEFAULT_GRAPH_VERSION}/me/messages?access_token=${w.accessToken}&appsecret_proof=${appsecretProof(w.accessToken, APP_SECRET)}`,
    payload: { recipient: { one_time_notif_token: claimed.token }, messaging_type: 'UPDATE', message: { text: 'back in stock' } },
  })
  t.equal(delivered.statusCode, 200)

  t.equal(await recoverLeases(depsFor(t, w)), 1)
  t.same(await tokenStates(w.db, tokens.map((x) => x.id)), ['unconfirmed', 'available'], 'never handed to another send, the next token untouched')
  t.match(await row(w, n.id), { status: 'unconfirmed', token_state: 'unconfirmed', attempts: 2 })
  t.equal(w.emulator.inbox(w.pageId, psid).length, 1, 'the person got it once')
  t.same(w.emulator.doubleSpends(), [])
})

t.test('sent but lost on the way, then the process died: the re-send delivers it', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const [token] = await giveTokens(w, psid, 1)
  const n = await pendingNotification(w, psid)
  await claimAndDie(w, n, { attempts: 1 })
  t.equal(await recoverLeases(depsFor(t, w)), 1)
  t.match(await row(w, n.id), { status: 'sent', token_state: 'used' })
  t.same(await tokenStates(w.db, [token.id]), ['used'])
  t.same([...w.emulator.tokenUses().values()], [1])
})

t.test('nothing was ever sent and Meta refuses for another reason: the token is released', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const [token] = await giveTokens(w, psid, 1)
  const n = await pendingNotification(w, psid)
  await claimAndDie(w, n)
  await w.app.inject({ method: 'PUT', url: `/v1/pages/${w.pageId}`, headers: auth, payload: { name: 'Shop', access_token: 'EAArevoked' } })
  t.equal(await recoverLeases(depsFor(t, w)), 1)
  t.same(await tokenStates(w.db, [token.id]), ['available'])
  t.match(await row(w, n.id), { status: 'failed', token_state: 'released', error: { code: 'graph_page_token_invalid', graph: { code: 190 } } })
})

t.test('after an attempt, Meta failing or throttling cannot release the token: it waits for the next sweep, up to a cap', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const [token] = await giveTokens(w, psid, 1)
  const n = await pendingNotification(w, psid)
  await claimAndDie(w, n, { attempts: 1 })
  const deps = depsFor(t, w, FAST_TIMEOUT_MS)
  for (const faults of [{ errorRate: 1, error: { code: 613 } }, { http5xxRate: 1 }, { hangRate: 1 }]) {
    w.emulator.setFaults(faults)
    t.equal(await recoverLeases(deps), 0, `${Object.keys(faults)[0]}: not resolved yet`)
    t.same(await tokenStates(w.db, [token.id]), ['held'])
    const lease = await w.db.selectFrom('optin_tokens').select('lease_expires_at').where('id', '=', token.id).executeTakeFirstOrThrow()
    t.ok(lease.lease_expires_at!.getTime() > Date.now() + (LEASE - 5) * 1000, 'with a fresh lease')
    t.equal(await recoverLeases(deps), 0, 'a fresh lease is not swept again at once')
    await expireLease(w, token.id)
  }
  t.match(await row(w, n.id), { status: 'pending', attempts: 4 })
  w.emulator.clearFaults()
  t.equal(await recoverLeases(deps), 1)
  t.match(await row(w, n.id), { status: 'sent', attempts: 5, token_state: 'used' })
  t.same([...w.emulator.tokenUses().values()], [1])

  const psid2 = newPsid()
  const [token2] = await giveTokens(w, psid2, 1)
  const worn = await pendingNotification(w, psid2)
  await claimAndDie(w, worn, { attempts: RECOVERY_ATTEMPTS_CAP })
  w.emulator.setFaults({ errorRate: 1, error: { code: 613 } })
  t.equal(await recoverLeases(deps), 1)
  t.same(await tokenStates(w.db, [token2.id]), ['unconfirmed'])
  t.match(await row(w, worn.id), { status: 'unconfirmed', attempts: RECOVERY_ATTEMPTS_CAP + 3, error: { code: 'graph_unconfirmed', graph: { code: 613 } } })
})

t.test('nothing was ever sent and Meta refuses the token: recovery goes on with the next token', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const [bogus] = await giveTokens(w, psid, 1, { token: () => `bogus-${psid}` })
  const [good] = await giveTokens(w, psid, 1)
  const n = await pendingNotification(w, psid)
  await claimAndDie(w, n)
  t.equal(await recoverLeases(depsFor(t, w)), 1)
  t.same(await tokenStates(w.db, [bogus.id, good.id]), ['invalid', 'used'])
  t.match(await row(w, n.id), { status: 'sent', tokens_refused: 1, token_id: good.id })
})

t.test('the next token, claimed after a refusal, is recovered when the process died before trying it', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const [refused, next] = await giveTokens(w, psid, 2)
  // The first token was tried and refused; the claim of the next one is the last thing that happened.
  await w.db.updateTable('optin_tokens').set({ state: 'invalid' }).where('id', '=', refused.id).execute()
  const n = await pendingNotification(w, psid, { attempts: 1, route: 'token' })
  await w.db.updateTable('notifications').set({ token_id: refused.id, tokens_refused: 1 }).where('id', '=', n.id).execute()
  const claimed = await claimFree(w.db, { page_id: w.pageId, payload: w.topic.payload, psid, notification_id: n.id, leaseSeconds: LEASE })
  t.equal(claimed?.id, next.id)
  await w.db.updateTable('notifications').set({ updated_at: sql`now() - interval '1 hour'` }).where('id', '=', n.id).execute()
  await expireLease(w, next.id)

  t.equal(await recoverLeases(depsFor(t, w)), 1)
  t.same(await tokenStates(w.db, [refused.id, next.id]), ['invalid', 'used'])
  t.match(await row(w, n.id), { status: 'sent', token_id: next.id, tokens_refused: 1 })
  t.same(w.emulator.requests.map((r) => r.recipient), [{ one_time_notif_token: next.token }], 'the held token sent, nothing claimed anew')
  t.equal(await recoverLeases(depsFor(t, w)), 0, 'nothing left stranded')
})

t.test('a live lease is left alone; two instances recovering together resolve each reservation once', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const tokens = await giveTokens(w, psid, 2)
  const live = await pendingNotification(w, psid)
  const liveClaim = await claimFree(w.db, { page_id: w.pageId, payload: w.topic.payload, psid, notification_id: live.id, leaseSeconds: LEASE })
  const dead = await pendingNotification(w, psid)
  await claimAndDie(w, dead)
  w.emulator.setFaults({ latencyMs: 50 })

  const [a, b] = await Promise.all([recoverLeases(depsFor(t, w)), recoverLeases(depsFor(t, w))])
  t.equal(a + b, 1)
  t.equal(w.emulator.requests.length, 1, 'one send between them')
  t.match(await row(w, dead.id), { status: 'sent' })
  t.match(await row(w, live.id), { status: 'pending' })
  t.same(await tokenStates(w.db, [liveClaim!.id]), ['held'])
  t.same((await tokenStates(w.db, tokens.map((x) => x.id))).sort(), ['held', 'used'])
  // Leave nothing for later tests' start-up sweeps.
  await w.db.updateTable('optin_tokens').set({ state: 'available', lease_expires_at: null, notification_id: null }).where('id', '=', liveClaim!.id).execute()
  await w.db.updateTable('notifications').set({ status: 'failed' }).where('id', '=', live.id).execute()
})

t.test('interrupted notifications without a reservation: a window send is unconfirmed, any other runs again', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const [token] = await giveTokens(w, psid, 1)
  const windowSend = await pendingNotification(w, psid, { route: 'window', attempts: 1 })
  const notStarted = await pendingNotification(w, psid)
  const broadcast = await pendingNotification(w, psid, { broadcast_id: '00000000-0000-4000-8000-00000000b0ad' })
  const fresh = await pendingNotification(w, psid)
  await w.db.updateTable('notifications').set({ updated_at: sql`now() - interval '1 hour'` })
    .where('id', 'in', [windowSend.id, notStarted.id, broadcast.id]).execute()

  t.equal(await recoverLeases(depsFor(t, w)), 2)
  t.match(await row(w, windowSend.id), { status: 'unconfirmed', route: 'window', error: { code: 'graph_unconfirmed' } })
  t.match(await row(w, notStarted.id), { status: 'sent', route: 'token', token_state: 'used' })
  t.match(await row(w, broadcast.id), { status: 'pending' }, 'broadcast rows belong to the broadcast worker')
  t.match(await row(w, fresh.id), { status: 'pending' }, 'a notification in flight is left alone')
  t.same(await tokenStates(w.db, [token.id]), ['used'])
  t.equal(w.emulator.requests.length, 1, 'the window send is not repeated')
  await w.db.updateTable('notifications').set({ status: 'failed' }).where('id', 'in', [broadcast.id, fresh.id]).execute()
})

t.test('recovery runs at start-up, in the background: a hold left by a dead instance is resolved after the app is ready', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const [token] = await giveTokens(w, psid, 1)
  const n = await pendingNotification(w, psid)
  await claimAndDie(w, n)
  const restarted = await build(t, graphEnv(w.base))
  await restarted.ready()
  await restarted.maintenance()
  t.same(await tokenStates(w.db, [token.id]), ['used'])
  const got = await restarted.inject({ method: 'GET', url: `/v1/notifications/${n.id}`, headers: auth })
  t.match(got.json(), { status: 'sent', route: 'token', token_state: 'used' })
  t.same(w.emulator.doubleSpends(), [])
})

t.test('after a crash with 200 sends held and Meta answering in 200 ms, a restarted instance is ready at once and recovers in the background', async (t) => {
  const { spawn } = await import('node:child_process')
  const { openDatabase } = await import('../../src/db/database.js')
  const { migrate } = await import('../../src/db/migrate.js')
  const { testDatabase, databaseKind } = await import('../helper.js')
  const { startEmulator } = await import('../fixtures/otn.js')
  const { emulator, base } = await startEmulator(t)
  const pageId = '4200042'
  const accessToken = 'EAA-crash-page'
  emulator.addPage({ id: pageId, accessToken })

  // What a killed instance leaves: 200 notifications, each holding a token whose lease ran out,
  // each with its first attempt counted (the claim counts it), so maybe sent.
  let dbUrl: string | undefined
  let dataDir: string | undefined
  let handle
  if (databaseKind === 'postgres') {
    dbUrl = (await testDatabase()).url
    handle = await openDatabase({ databaseUrl: dbUrl, poolSize: 2 })
  } else {
    dataDir = t.testdir({})
    handle = await openDatabase({ pgliteDataDir: dataDir })
    await migrate(handle.db)
  }
  const db = handle.db
  await db.insertInto('pages').values({ id: pageId, name: 'Crash', access_token: accessToken }).onConflict((oc) => oc.column('id').doNothing()).execute()
  const topic = await db.insertInto('topics').values({ page_id: pageId, name: `crash ${Date.now()}`, title: 'Crash', payload: `crash-${Date.now()}` })
    .returning(['id', 'payload']).executeTakeFirstOrThrow()
  const held = 200
  const people = Array.from({ length: held }, (_, i) => `crash${i}`)
  const ids: string[] = []
  const { notificationHash } = await import('../../src/domain/notifications.js')
  const message = { text: 'back in stock' }
  for (const psid of people) {
    const token = emulator.issueToken(pageId, psid, topic.payload)
    const n = await db.insertInto('notifications').values({
      page_id: pageId, topic_id: topic.id, psid, message: JSON.stringify(message), request_hash: notificationHash({ topic_id: topic.id, psid, message }),
      idempotency_key: `crash-key-${psid}-${topic.id}`, route: 'token', attempts: 1, updated_at: sql`now() - interval '1 hour'`,
    }).returning('id').executeTakeFirstOrThrow()
    const tok = await db.insertInto('optin_tokens').values({
      page_id: pageId, psid, payload: topic.payload, token, opted_in_at: new Date(), expires_at: new Date(Date.now() + 300 * 86_400_000),
      notification_id: n.id, lease_expires_at: sql`now() - interval '1 second'`,
    }).returning('id').executeTakeFirstOrThrow()
    await db.updateTable('notifications').set({ token_id: tok.id }).where('id', '=', n.id).execute()
    ids.push(n.id)
  }
  if (dataDir) await handle.close() // the embedded database is one process's: the instance opens it next

  emulator.setFaults({ latencyMs: 200 })
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    cwd: new URL('../..', import.meta.url).pathname,
    env: {
      PATH: process.env.PATH ?? '', API_KEYS: 'crash-test-key-123', PORT: '0', LOG_LEVEL: 'info',
      GRAPH_API_BASE_URL: base, META_APP_SECRET: APP_SECRET, TOKEN_LEASE_SECONDS: '60', RECOVERY_CONCURRENCY: '16',
      ENCRYPTION_KEYS: TEST_ENCRYPTION_KEYS,
      ...(dbUrl ? { DATABASE_URL: dbUrl } : { PGLITE_DATA_DIR: dataDir! }),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  const lines: Array<Record<string, any>> = []
  let stderr = ''
  child.stderr.on('data', (c) => { stderr += c })
  let partial = ''
  const address = new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (chunk) => {
      const parts = (partial + chunk).split('\n')
      partial = parts.pop() ?? ''
      for (const p of parts) {
        const line = JSON.parse(p)
        lines.push(line)
        if (line.docs) resolve(String(line.docs).replace(/\/docs$/, ''))
      }
    })
    child.once('exit', (code) => reject(new Error(`the instance exited (${code}) before it listened: ${stderr}`)))
  })
  const url = await address
  const ready = await fetch(`${url}/readyz`)
  t.equal(ready.status, 200, 'ready while recovery has barely begun')
  // A caller retrying one of the held sends with its key: still in progress (409, ask again after
  // Retry-After), or, if recovery got to it already, its result.
  const last = people[held - 1]
  const retried = await fetch(`${url}/v1/notifications`, {
    method: 'POST', headers: { authorization: 'Bearer crash-test-key-123', 'content-type': 'application/json', 'idempotency-key': `crash-key-${last}-${topic.id}` },
    body: JSON.stringify({ topic_id: topic.id, psid: last, message }),
  })
  const answer = await retried.json() as { code?: string }
  if (retried.status === 409) {
    t.equal(answer.code, 'idempotency_in_progress')
    t.equal(retried.headers.get('retry-after'), '1')
  } else {
    t.equal(retried.status, 201, 'already recovered: the first result, replayed')
  }

  let pending = held
  for (let i = 0; i < 600 && pending > 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 500))
    const got = await fetch(`${url}/v1/notifications?status=pending&limit=200&page_id=${pageId}`, { headers: { authorization: 'Bearer crash-test-key-123' } })
    pending = ((await got.json()) as { items: unknown[] }).items.length
  }
  t.equal(pending, 0, 'every held send resolved by the background recovery')
  t.equal(child.exitCode, null, 'the instance never exited')
  t.ok(lines.some((l) => l.task === 'recover_leases' && l.msg === 'lease recovery: progress'), 'progress is logged')
  t.same(emulator.doubleSpends(), [], 'no token spent twice')
  t.ok(emulator.audit().tokens_accepted >= held - 5, `Meta accepted the re-sent tokens (${emulator.audit().tokens_accepted})`)
  child.kill('SIGTERM')
  await new Promise((resolve) => child.once('exit', resolve))
})
