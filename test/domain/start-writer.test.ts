import { DEFAULT_GRAPH_VERSION } from '../../src/graph/versions.js'
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { createGraphClient } from '../../src/graph/client.js'
import { SendWriter, sendNotification, type SendDeps } from '../../src/domain/notifications.js'
import { countStatements } from '../helper.js'
import { APP_SECRET, giveTokens, newPsid, openWindow, starting, tokenStates, world, type World } from '../fixtures/otn.js'

// The group commit's first step of a send: sends that start in the same turn share one statement,
// each with its own claim, except two for the same person's topic or with the same Idempotency-Key.


const message = { text: 'back in stock' }
async function claimedBy (w: World, tokenId: string): Promise<string | null> {
  const row = await w.db.selectFrom('optin_tokens').select('notification_id').where('id', '=', tokenId).executeTakeFirstOrThrow()
  return row.notification_id
}

t.test('sends started in the same turn are one statement, each with its own outcome', async (t) => {
  const w = await world(t)
  const { counted, statements } = countStatements(w.db)
  const writer = new SendWriter(counted, 60)
  const [p1, p2, windowed, none] = [newPsid(), newPsid(), newPsid(), newPsid()]
  const [t1] = await giveTokens(w, p1, 1)
  const [t2a, t2b] = await giveTokens(w, p2, 2)
  await openWindow(w, windowed)
  await giveTokens(w, windowed, 1)

  statements.length = 0
  const items = [
    starting({ topic_id: w.topic.id, psid: p1, message }),
    starting({ topic_id: w.topic.id, psid: p2, message, idempotency_key: `k-${p2}` }),
    starting({ topic_id: w.topic.id, psid: windowed, message }),
    starting({ topic_id: w.topic.id, psid: none, message }),
    starting({ topic_id: randomUUID(), psid: p1, message }),
  ]
  const started = await Promise.all(items.map((i) => writer.start(i)))
  t.equal(statements.length, 1, 'five sends, one statement')

  t.match(started[0], { n: { id: items[0].id, status: 'pending', route: 'token', attempts: 1, token_id: t1.id }, token: { id: t1.id, token: t1.token } })
  t.equal(await claimedBy(w, t1.id), items[0].id)
  t.match(started[1], { n: { id: items[1].id, idempotency_key: `k-${p2}`, token_id: t2a.id }, token: { id: t2a.id } }, 'the soonest-expiring token')
  t.same(await tokenStates(w.db, [t2a.id, t2b.id]), ['held', 'available'])
  t.match(started[2], { n: { status: 'pending', route: 'window', attempts: 1, token_id: null } })
  t.notOk(started[2].token, 'inside the window no token is claimed')
  t.match(started[3], { n: { status: 'no_token', route: 'token', attempts: 0, http_status: 409, error: { code: 'no_token' } } })
  t.same(started[4], {}, 'an unknown topic: nothing')
  t.same(started.slice(0, 4).map((s) => s.context?.page_id), [w.pageId, w.pageId, w.pageId, w.pageId])
})

t.test('two sends for one person\'s topic, or with one key, never share a statement', async (t) => {
  const w = await world(t)
  const { counted, statements } = countStatements(w.db)
  const writer = new SendWriter(counted, 60, 100, 1)
  const person = newPsid()
  const tokens = await giveTokens(w, person, 1)
  const other = newPsid()
  await giveTokens(w, other, 1)

  statements.length = 0
  const same = [starting({ topic_id: w.topic.id, psid: person, message }), starting({ topic_id: w.topic.id, psid: person, message })]
  const keyed = [
    starting({ topic_id: w.topic.id, psid: other, message, idempotency_key: `dup-${other}` }),
    starting({ topic_id: w.topic.id, psid: newPsid(), message, idempotency_key: `dup-${other}` }),
  ]
  const [a, b, k1, k2] = await Promise.all([...same, ...keyed].map((i) => writer.start(i)))
  t.equal(statements.length, 2, 'the second of each pair waits for the next statement')
  t.match(a, { n: { status: 'pending', token_id: tokens[0].id } })
  t.match(b, { n: { status: 'no_token' } }, 'one token: the second send finds none, it is not handed out twice')
  t.match(k1, { n: { id: keyed[0].id, status: 'pending' } })
  t.same(k2, { context: { ...k1.context, existing_id: keyed[0].id } }, 'the same key later: the earlier request is found, nothing inserted')
})

t.test('a send the database refuses fails alone; the others start', async (t) => {
  const w = await world(t)
  const writer = new SendWriter(w.db, 60)
  const people = [newPsid(), newPsid()]
  const tokens = [...await giveTokens(w, people[0], 1), ...await giveTokens(w, people[1], 1)]
  const bad = newPsid()
  const [badToken] = await giveTokens(w, bad, 1)
  const outcomes = await Promise.allSettled([
    writer.start(starting({ topic_id: w.topic.id, psid: people[0], message })),
    // jsonb holds no NUL character: Postgres refuses this message.
    writer.start(starting({ topic_id: w.topic.id, psid: bad, message: { text: 'nul \u0000 here' } })),
    writer.start(starting({ topic_id: w.topic.id, psid: people[1], message })),
  ])
  t.same(outcomes.map((o) => o.status), ['fulfilled', 'rejected', 'fulfilled'])
  t.match((outcomes[1] as PromiseRejectedResult).reason, { code: '22P05' })
  t.same(await tokenStates(w.db, [tokens[0].id, badToken.id, tokens[1].id]), ['held', 'available', 'held'],
    'the refused send claimed nothing')
})

t.test('concurrent sends through the group commit: each person gets exactly one message, each token spent once', async (t) => {
  const w = await world(t)
  const { counted, statements } = countStatements(w.db)
  const graph = createGraphClient({ baseUrl: w.base, version: DEFAULT_GRAPH_VERSION, appSecret: APP_SECRET, timeoutMs: 2000, connectTimeoutMs: 1000 })
  t.teardown(() => graph.close())
  const deps: SendDeps = {
    db: counted, graph, config: { TOKEN_LEASE_SECONDS: 60, GRAPH_API_MAX_RETRIES: 2, GRAPH_API_TIMEOUT_MS: 2000 },
    steps: new SendWriter(counted, 60),
  }
  const people = Array.from({ length: 12 }, () => newPsid())
  const tokens = []
  for (const p of people) tokens.push(...await giveTokens(w, p, 1))
  statements.length = 0
  // Each person twice: one token each, so exactly one of the two is sent.
  const results = await Promise.all([...people, ...people].map((psid) => sendNotification(deps, { topic_id: w.topic.id, psid, message })))
  t.equal(results.filter((r) => r.httpStatus === 201).length, 12, 'twelve sent')
  t.equal(results.filter((r) => r.notification.status === 'no_token').length, 12, 'twelve found no token left')
  t.same(await tokenStates(w.db, tokens.map((x) => x.id)), tokens.map(() => 'used'))
  t.equal(w.emulator.requests.length, 12, 'Meta got twelve messages')
  t.equal(new Set(w.emulator.requests.map((r) => r.recipient?.one_time_notif_token)).size, 12, 'twelve different tokens')
  t.ok(statements.length < 36, `fewer statements than one per send and outcome (${statements.length} for 24 sends)`)
})
