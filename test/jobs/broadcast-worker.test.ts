import { DEFAULT_GRAPH_VERSION } from '../../src/graph/versions.js'
import t from 'tap'
import { planNextBatch } from '../../src/domain/broadcast-run.js'
import { createBroadcast, getBroadcast, getBroadcastRow } from '../../src/domain/broadcasts.js'
import { createGraphClient, type GraphClient, type SendOutcome } from '../../src/graph/client.js'
import { SWEEP_QUEUE } from '../../src/jobs/broadcast-worker.js'
import { build, LogCapture } from '../helper.js'
import { APP_SECRET, graphEnv, heldTokens, world } from '../fixtures/otn.js'
import { inClear } from '../fixtures/tokens.js'
import {
  accountedForOnce, broadcastEnv, NOWHERE, people, postBroadcast, readBroadcast, recurringFor, settled, tokensFor, until, windowsFor,
} from '../fixtures/broadcasts.js'

const message = { text: 'Back in stock' }

function realGraph (base: string, timeoutMs = 5000): GraphClient {
  return createGraphClient({ baseUrl: base, version: DEFAULT_GRAPH_VERSION, appSecret: APP_SECRET, timeoutMs, connectTimeoutMs: 2000 })
}

/** Counts the sends one instance makes; `to` is set once the emulator's address is known. */
function countingGraph (real?: GraphClient): GraphClient & { calls: number, to?: GraphClient } {
  const g: GraphClient & { calls: number, to?: GraphClient } = {
    calls: 0,
    to: real,
    sendMessage (page, body) {
      g.calls++
      return g.to!.sendMessage(page, body)
    },
    close: async () => {},
  }
  return g
}

/**
 * A process that freezes mid-send after `healthy` sends: every later call never returns, as if
 * the process had died with the request in flight. Every other frozen call reached Meta first
 * (the send took effect, the answer was lost), the others never left.
 */
function freezingGraph (healthy: number) {
  let real: GraphClient | undefined
  let calls = 0
  let dead = false
  const frozen: Array<{ reachedMeta: boolean, resolve: (o: SendOutcome) => void }> = []
  const client: GraphClient = {
    async sendMessage (page, body) {
      if (dead) return { kind: 'no_answer', reason: 'unreachable', sent: false, detail: 'process gone' }
      if (++calls <= healthy) return real!.sendMessage(page, body)
      const reachedMeta = (calls - healthy) % 2 === 1
      if (reachedMeta) await real!.sendMessage(page, body)
      return new Promise<SendOutcome>((resolve) => { frozen.push({ reachedMeta, resolve }) })
    },
    close: async () => {},
  }
  return {
    client,
    frozen,
    to (target: GraphClient) { real = target },
    /** Waits until the frozen calls stop growing: every worker of the process is stuck. */
    async settled () {
      let seen = -1
      await until('instance A to freeze', async () => {
        const now = frozen.length
        if (now > 1 && now === seen) return true
        seen = now
        await new Promise((resolve) => setTimeout(resolve, 500))
        return undefined
      })
    },
    /** Lets the zombie's calls return (as never sent), to prove it then changes nothing. */
    release () {
      dead = true
      for (const f of frozen) f.resolve({ kind: 'no_answer', reason: 'unreachable', sent: false, detail: 'process gone' })
    },
  }
}

t.test('an instance dies mid-send holding reservations; another resumes with no double send', async (t) => {
  const env = broadcastEnv({ BROADCAST_CONCURRENCY: '2', BROADCAST_BATCH_SIZE: '25', MAINTENANCE_INTERVAL_SECONDS: '3600' })
  const zombie = freezingGraph(30)
  const logs = new LogCapture()
  const w = await world(t, { env: { ...env, LOG_LEVEL: 'warn' }, emulator: { webhookUrl: NOWHERE }, deps: { graph: zombie.client, logStream: logs } })
  const real = realGraph(w.base)
  t.teardown(() => real.close())
  zombie.to(real)
  const a = w.app
  const audience = people(80, 'k')
  await tokensFor(w, audience)

  const created = (await postBroadcast(a, { topic_id: w.topic.id, message })).json()
  // A keeps as many sends in flight as the pace needs: after 30 healthy ones, every later send
  // freezes on the wire (every other one reached Meta first), until both its workers' batches are stuck.
  await until('A to record its 30 sends', async () => (await getBroadcast(w.db, created.id)).progress.sent_token === 30 ? true : undefined)
  await zombie.settled()
  const frozen = zombie.frozen.length
  t.ok(frozen >= 2 && frozen <= 50, `${frozen} sends frozen mid-flight`)
  t.equal((await heldTokens(w.db, w.pageId)).length, frozen, 'A left each of them holding its token')
  // Ungracefully: no hand-over; its jobs are failed and left to the queue's retry.
  await a.jobs.stop({ graceful: false, wait: false, close: false })

  const b = await build(t, graphEnv(w.base, env), { graph: countingGraph(real) })
  const done = await settled(b, created.id)
  t.equal(done.progress.total, 80)
  await accountedForOnce(t, w, done)
  // A frozen send that reached Meta: its token is spent, so B's re-send is refused: unconfirmed.
  // One that never left: B re-sends the same token and Meta accepts it.
  const reached = zombie.frozen.filter((f) => f.reachedMeta).length
  t.equal(reached, Math.ceil(frozen / 2))
  t.equal(done.progress.unconfirmed, reached, 'each send whose answer was lost is unconfirmed, not sent again')
  t.equal(done.progress.sent_token, 80 - reached)
  t.equal(w.emulator.audit().tokens_accepted, 80, 'Meta accepted exactly one token per person')

  zombie.release()
  await until('the woken zombie to find its claims taken', async () =>
    logs.lines.filter((l) => /claim lost/.test(String(l.msg))).length >= frozen ? true : undefined)
  // The recent rate moves with the clock; everything else must be as it was.
  const still = (x: typeof done) => ({ ...x, progress: { ...x.progress, rate_per_second: 0, eta_seconds: null } })
  t.same(still(await readBroadcast(b, created.id)), still(done), 'the woken zombie changed nothing')
  t.same(w.emulator.doubleSpends(), [])
})

t.test('a graceful shutdown hands the rest over to another instance', async (t) => {
  const env = broadcastEnv({ BROADCAST_RATE_PER_SECOND: '40', BROADCAST_BATCH_SIZE: '20' })
  const w = await world(t, { env, emulator: { webhookUrl: NOWHERE } })
  await tokensFor(w, people(100, 'g'))
  const created = (await postBroadcast(w.app, { topic_id: w.topic.id, message })).json()
  await until('some sends', async () => (await readBroadcast(w.app, created.id)).progress.sent_token >= 10 ? true : undefined)
  await w.app.close()
  const paused = await getBroadcast(w.db, created.id)
  t.ok(paused.progress.remaining > 0, `work was left when the first instance stopped (${paused.progress.remaining})`)
  t.same(await heldTokens(w.db, w.pageId), [], 'nothing left held by a graceful stop')
  const b = await build(t, graphEnv(w.base, env))
  const done = await settled(b, created.id)
  t.match(done.progress, { total: 100, sent_token: 100 })
  await accountedForOnce(t, w, done)
})

t.test('two instances share one broadcast at one per-Page pace', async (t) => {
  const env = broadcastEnv({ BROADCAST_RATE_PER_SECOND: '20', BROADCAST_BATCH_SIZE: '10', BROADCAST_CONCURRENCY: '2' })
  const ga = countingGraph()
  const w = await world(t, { env, emulator: { webhookUrl: NOWHERE }, deps: { graph: ga } })
  const real = realGraph(w.base)
  t.teardown(() => real.close())
  ga.to = real
  const gb = countingGraph(real)
  const b = await build(t, graphEnv(w.base, env), { graph: gb })
  await tokensFor(w, people(60, 'p'))
  const created = (await postBroadcast(w.app, { topic_id: w.topic.id, message })).json()
  const done = await settled(b, created.id)
  t.match(done.progress, { total: 60, sent_token: 60 })
  await accountedForOnce(t, w, done)
  t.ok(ga.calls > 0 && gb.calls > 0, `both instances sent (${ga.calls} + ${gb.calls})`)
  t.equal(ga.calls + gb.calls, 60, 'one send per person between them')
  const times = w.emulator.requests.map((r) => r.at).sort((x, y) => x - y)
  const span = times[times.length - 1] - times[0]
  t.ok(span >= 59 * 50 * 0.9, `60 sends at 20/s across both instances took ${span} ms`)
})

t.test('Meta rate limits pause the Page and the person is retried', async (t) => {
  const env = broadcastEnv({ BROADCAST_MAX_ATTEMPTS: '20', BROADCAST_CONCURRENCY: '4' })
  const w = await world(t, { env, emulator: { webhookUrl: NOWHERE } })
  w.emulator.setFaults({ maxRps: 8 }, w.pageId)
  await tokensFor(w, people(30, 'r'))
  const created = (await postBroadcast(w.app, { topic_id: w.topic.id, message })).json()
  const done = await settled(w.app, created.id)
  t.match(done.progress, { total: 30, sent_token: 30, failed: {} })
  await accountedForOnce(t, w, done)
  const limited = w.emulator.requests.filter((r) => r.fault === 'rate_limit')
  t.ok(limited.length > 0, `Meta rate-limited ${limited.length} sends`)
  const retried = await w.db.selectFrom('broadcast_recipients').select(['psid', 'retries']).where('broadcast_id', '=', created.id).where('retries', '>', 0).execute()
  t.ok(retried.length > 0, 'the refused people were tried again')
  const refused = await w.db.selectFrom('notifications').select(['error', 'token_state']).where('broadcast_id', '=', created.id).where('status', '=', 'failed').execute()
  t.equal(refused.length, limited.length, 'each refused attempt is recorded')
  t.ok(refused.every((n) => (n.error as { code?: string } | null)?.code === 'graph_rate_limited' && n.token_state === 'released'),
    'as a rate limit that gave its token back')
  // The Page pauses after a refusal: only sends already in flight (one per worker) may follow at once.
  const first = limited[0].at
  const burst = w.emulator.requests.filter((r) => r.outcome === 'accepted' && r.at > first && r.at < first + 800).length
  t.ok(burst <= 4, `${burst} sends accepted within 0.8 s of the first rate limit`)
})

t.test('a person Meta keeps rate-limiting fails after BROADCAST_MAX_ATTEMPTS, token kept', async (t) => {
  const w = await world(t, { env: broadcastEnv({ BROADCAST_MAX_ATTEMPTS: '3' }), emulator: { webhookUrl: NOWHERE } })
  w.emulator.setFaults({ errorRate: 1, error: { code: 613 } }, w.pageId)
  await tokensFor(w, people(2, 'z'))
  const created = (await postBroadcast(w.app, { topic_id: w.topic.id, message })).json()
  const done = await settled(w.app, created.id)
  t.match(done.progress, { total: 2, failed: { graph_rate_limited: 2 } })
  t.equal(w.emulator.requests.length, 6, 'three sends per person, then failed')
  const kept = await w.db.selectFrom('optin_tokens').select('state').where('page_id', '=', w.pageId).execute()
  t.same(kept.map((k) => k.state), ['available', 'available'], 'tokens kept')
  await accountedForOnce(t, w, done)
})

t.test('a broadcast whose job was lost is picked up by the sweep', async (t) => {
  const w = await world(t, { env: broadcastEnv(), emulator: { webhookUrl: NOWHERE } })
  await tokensFor(w, people(5, 'l'))
  const { broadcast } = await createBroadcast(w.db, { topic_id: w.topic.id, message }, { batchSize: 100, enqueue: async () => {} })
  t.equal((await readBroadcast(w.app, broadcast.id)).progress.total, 0, 'nothing happens without its job')
  await w.app.jobs.send(SWEEP_QUEUE, {})
  const done = await settled(w.app, broadcast.id)
  t.match(done.progress, { total: 5, sent_token: 5 })
  await accountedForOnce(t, w, done)
})

t.test('planners racing on one audience list each person once', async (t) => {
  const w = await world(t, { env: broadcastEnv(), emulator: { webhookUrl: NOWHERE } })
  await tokensFor(w, people(25, 'q'))
  const { broadcast } = await createBroadcast(w.db, { topic_id: w.topic.id, message }, { batchSize: 10, enqueue: async () => {} })
  const b = (await getBroadcastRow(w.db, broadcast.id))!
  let inserted = 0
  for (;;) {
    const pair = await Promise.all([planNextBatch(w.db, b, 10), planNextBatch(w.db, b, 10)])
    inserted += pair.reduce((sum, p) => sum + (p?.inserted ?? 0), 0)
    if (pair.every((p) => p === undefined)) break
  }
  t.equal(inserted, 25, 'each person inserted once')
  const rows = await w.db.selectFrom('broadcast_recipients').select(['psid', 'batch']).where('broadcast_id', '=', b.id).orderBy('psid').execute()
  t.equal(rows.length, 25)
  const sizes = new Map<number, number>()
  for (const r of rows) sizes.set(r.batch, (sizes.get(r.batch) ?? 0) + 1)
  t.ok([...sizes.values()].every((n) => n <= 10), 'no batch larger than BROADCAST_BATCH_SIZE')
  t.same([...sizes.keys()].sort((x, y) => x - y), [...sizes.keys()].map((_, i) => i), 'batches numbered from 0 without gaps')
})

t.test('a broadcast mixing one-time, recurring and window people survives an instance dying mid-run: a recurring token is never sent twice inside its cooldown', async (t) => {
  const env = broadcastEnv({ BROADCAST_CONCURRENCY: '2', BROADCAST_BATCH_SIZE: '25', MAINTENANCE_INTERVAL_SECONDS: '3600' })
  const zombie = freezingGraph(20)
  const w = await world(t, { env: { ...env, LOG_LEVEL: 'warn' }, emulator: { webhookUrl: NOWHERE }, deps: { graph: zombie.client } })
  const real = realGraph(w.base)
  t.teardown(() => real.close())
  zombie.to(real)
  const oneTime = people(30, 'o')
  const recurring = people(30, 'r')
  const inWindow = people(15, 'w')
  const cooling = people(10, 'c')
  await tokensFor(w, [...oneTime, ...inWindow])
  await windowsFor(w, inWindow)
  await recurringFor(w, recurring)
  await recurringFor(w, cooling, { coolingUntil: new Date(Date.now() + 40 * 3_600_000) })

  const mixed = { text: 'Flash sale' }
  const created = (await postBroadcast(w.app, { topic_id: w.topic.id, message: mixed })).json()
  t.equal(created.audience_estimate, 85, 'the audience counts recurring holders, cooling ones too')
  await zombie.settled()
  await w.app.jobs.stop({ graceful: false, wait: false, close: false })

  const b = await build(t, graphEnv(w.base, env), { graph: countingGraph(real) })
  const done = await settled(b, created.id)
  t.equal(done.progress.total, 85)
  await accountedForOnce(t, w, done)
  t.equal(done.progress.cooldown, 10, 'people whose recurring token is cooling down are skipped, not sent')
  const outcomes = await w.db.selectFrom('broadcast_recipients').select(['psid', 'outcome']).where('broadcast_id', '=', done.id).execute()
  const of = (group: string[]) => outcomes.filter((r) => group.includes(r.psid)).map((r) => r.outcome)
  t.ok(of(recurring).every((o) => o === 'sent_recurring' || o === 'unconfirmed'), 'recurring people: sent with their token, or unconfirmed when A froze on them')
  t.ok(of(recurring).filter((o) => o === 'sent_recurring').length >= 15, `${of(recurring).filter((o) => o === 'sent_recurring').length} sent with a recurring token`)
  t.ok(of(oneTime).every((o) => o === 'sent_token' || o === 'unconfirmed'))
  t.ok(of(inWindow).every((o) => o === 'sent_window' || o === 'unconfirmed'), 'window people keep their token')
  t.equal(done.progress.sent_recurring, of(recurring).filter((o) => o === 'sent_recurring').length)

  const recurringTokens = inClear(await w.db.selectFrom('optin_tokens').selectAll().where('page_id', '=', w.pageId)
    .where('kind', '=', 'notification_messages').where('psid', 'in', recurring).execute())
  t.equal(recurringTokens.filter((r) => r.state === 'available' && r.notification_id === null && r.next_send_at !== null &&
    r.next_send_at.getTime() > Date.now() + 47 * 3_600_000).length, 30, 'every recurring token stays usable and cools down, sent or unconfirmed')
  const uses = w.emulator.tokenUses()
  t.ok(recurringTokens.every((r) => (uses.get(r.token) ?? 0) <= 1), 'Meta took each recurring token at most once')

  // The next broadcast inside the cooldown: the recurring people are skipped, nobody gets a second message.
  const second = (await postBroadcast(b, { topic_id: w.topic.id, message: { text: 'Second sale' } })).json()
  const again = await settled(b, second.id)
  t.equal(again.progress.sent_recurring, 0)
  t.equal(again.progress.cooldown, 40, 'the 30 just sent (or unconfirmed) and the 10 cooling')
  for (const psid of [...recurring, ...cooling]) {
    if (w.emulator.inbox(w.pageId, psid).length > 1) t.fail(`${psid} got two messages inside a cooldown`)
  }
  t.same(w.emulator.doubleSpends(), [])
  zombie.release()
})
