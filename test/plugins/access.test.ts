import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import { API_KEY, auth, LogCapture, uniquePageId } from '../helper.js'
import { giveTokens, newPsid, notify, openWindow, world, type World } from '../fixtures/otn.js'

// The one access rule of /v1 (src/plugins/access.ts, docs/SECURITY.md), through the real app and
// database: Page scopes, read-only keys, the admin-only audit, the audit itself and created_by.

const SECRETS = { ops: 'ops-secret-0001', reader: 'reader-secret-01', shopA: 'shop-a-secret-01', shopAReader: 'shop-a-reader-01' }
const bearer = (secret: string) => ({ authorization: `Bearer ${secret}` })

interface Scene {
  w: World
  pageA: string
  topicA: { id: string }
  /** Page B is the world's Page: real resources of it, to be filled into every path. */
  b: { pageId: string, topicId: string, psid: string, notificationId: string, broadcastId: string, optinRequestId: string }
}

/** Page B (the world's) with a topic, a person holding tokens, a notification, a broadcast and an opt-in request; Page A with a topic. */
async function scene (t: Test, opts: { logs?: LogCapture } = {}): Promise<Scene> {
  const pageA = uniquePageId()
  const keys = [API_KEY, `ops:${SECRETS.ops}`, `reader:${SECRETS.reader}:read-only`, `shop-a:${SECRETS.shopA}:pages=${pageA}`,
    `shop-a-reader:${SECRETS.shopAReader}:pages=${pageA}:read-only`]
  const w = await world(t, { env: { API_KEYS: keys.join(','), ...(opts.logs ? { LOG_LEVEL: 'info' } : {}) }, deps: opts.logs ? { logStream: opts.logs } : {} })
  w.emulator.addPage({ id: pageA, accessToken: `EAApage-token-${pageA}` })
  const a = await w.app.inject({ method: 'PUT', url: `/v1/pages/${pageA}`, headers: auth, payload: { name: 'Shop A', access_token: `EAApage-token-${pageA}` } })
  t.equal(a.statusCode, 201, a.body)
  const topicA = await w.app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageA, name: 'A news' } })
  t.equal(topicA.statusCode, 201, topicA.body)

  const psid = newPsid()
  await giveTokens(w, psid, 2)
  const sent = await notify(w.app, { topic_id: w.topic.id, psid, message: { text: 'for B' }, use_window: false })
  t.equal(sent.statusCode, 201, sent.body)
  const broadcast = await w.app.inject({
    method: 'POST', url: '/v1/broadcasts', headers: auth,
    payload: { topic_id: w.topic.id, message: { text: 'later' }, send_at: new Date(Date.now() + 86400_000).toISOString() },
  })
  t.equal(broadcast.statusCode, 202, broadcast.body)
  await openWindow(w, psid)
  const optin = await w.app.inject({ method: 'POST', url: `/v1/topics/${w.topic.id}/optin-requests`, headers: auth, payload: { psid } })
  t.equal(optin.statusCode, 201, optin.body)
  return {
    w, pageA, topicA: topicA.json(),
    b: { pageId: w.pageId, topicId: w.topic.id, psid, notificationId: sent.json().id, broadcastId: broadcast.json().id, optinRequestId: optin.json().id },
  }
}

type Json = Record<string, any>
interface Operation { method: string, path: string, op: Json }

function v1Operations (doc: Json): Operation[] {
  const out: Operation[] = []
  for (const [path, item] of Object.entries(doc.paths as Json)) {
    if (!path.startsWith('/v1/')) continue
    for (const [method, op] of Object.entries(item as Json)) out.push({ method: method.toUpperCase(), path, op: op as Json })
  }
  return out
}

/** The id a path's `{id}` stands for, by its first segment: a real Page-B resource of that kind. */
function pathFor ({ path, op }: Operation, s: Scene): string {
  const kind = path.split('/')[2]
  const ids: Record<string, string> = { topics: s.b.topicId, notifications: s.b.notificationId, broadcasts: s.b.broadcastId }
  // Admin-only routes answer 403 before they look at the id: any well-formed one will do.
  if (op['x-access']?.rights === 'admin') ids[kind] = randomUUID()
  return path.replace(/\{(\w+)\}/g, (_m, name: string) => {
    if (name === 'pageId') return s.b.pageId
    if (name === 'psid') return s.b.psid
    if (name === 'id' && ids[kind]) return ids[kind]
    throw new Error(`${op.operationId}: no Page-B resource for {${name}} in ${path}; add one to this test's scene`)
  })
}

/** A valid body for each operation that takes one, naming Page B's resources. */
function bodyFor ({ op }: Operation, s: Scene): Json | undefined {
  if (!op.requestBody) return undefined
  const message = { text: 'from a foreign key' }
  const bodies: Record<string, Json> = {
    putPage: { name: 'Taken over' },
    createTopic: { page_id: s.b.pageId, name: 'Foreign topic' },
    updateTopic: { name: 'Renamed by a foreign key' },
    createOptinRequest: { psid: s.b.psid },
    sendNotification: { topic_id: s.b.topicId, psid: s.b.psid, message, use_window: false },
    createBroadcast: { topic_id: s.b.topicId, message },
    estimateBroadcast: { topic_id: s.b.topicId, message },
    createEventSubscription: { url: 'https://example.com/otn-events', events: ['*'], page_ids: [s.b.pageId] },
    updateEventSubscription: { page_ids: [s.b.pageId] },
    redeliverEvent: {},
  }
  const body = bodies[op.operationId]
  if (!body) throw new Error(`${op.operationId}: no request body known; add one naming Page B's resources to this test`)
  return body
}

/** Every trace of Page B an answer could carry. */
const traces = (s: Scene): string[] => [s.b.pageId, s.b.topicId, s.b.psid, s.b.notificationId, s.b.broadcastId, s.b.optinRequestId]

/** What Page B holds, to compare before and after a walk. */
async function pageBState (s: Scene) {
  const { db } = s.w
  const count = async (table: 'topics' | 'notifications' | 'broadcasts' | 'optin_requests' | 'optin_tokens') =>
    (await db.selectFrom(table).select((eb) => eb.fn.countAll<string>().as('n')).where('page_id', '=', s.b.pageId).executeTakeFirstOrThrow()).n
  return {
    page: await db.selectFrom('pages').select(['name', 'access_token', 'updated_at']).where('id', '=', s.b.pageId).executeTakeFirst(),
    topic: await db.selectFrom('topics').select(['name', 'title', 'updated_at']).where('id', '=', s.b.topicId).executeTakeFirst(),
    broadcast: await db.selectFrom('broadcasts').select(['state']).where('id', '=', s.b.broadcastId).executeTakeFirst(),
    topics: await count('topics'),
    notifications: await count('notifications'),
    broadcasts: await count('broadcasts'),
    optinRequests: await count('optin_requests'),
    tokens: await db.selectFrom('optin_tokens').select(['id', 'state']).where('page_id', '=', s.b.pageId).orderBy('id').execute(),
  }
}

t.test('every /v1 operation declares what it needs of a key (x-access)', async (t) => {
  const s = await scene(t)
  const ops = v1Operations(s.w.app.swagger() as Json)
  t.ok(ops.length >= 20, `${ops.length} operations`)
  for (const { method, path, op } of ops) {
    t.ok(op['x-access'] && ['read', 'write', 'admin'].includes(op['x-access'].rights), `${method} ${path} declares x-access`)
    if (op['x-access']?.rights !== 'read') {
      t.match(op.responses?.['403']?.description, /forbidden/, `${method} ${path} documents 403 forbidden`)
    }
  }
})

t.test('a key for Page A sees nothing of Page B on any operation of the OpenAPI document', async (t) => {
  const s = await scene(t)
  const before = await pageBState(s)
  const ops = v1Operations(s.w.app.swagger() as Json)
  for (const o of ops) {
    const { method, path, op } = o
    const url = pathFor(o, s)
    const payload = bodyFor(o, s)
    const res = await s.w.app.inject({ method, url, headers: bearer(SECRETS.shopA), ...(payload ? { payload } : {}) })
    const name = `${method} ${path} (${op.operationId})`
    const listing = method === 'GET' && !path.includes('{')
    if (op['x-access']?.rights === 'admin') {
      t.equal(res.statusCode, 403, `${name}: admin only`)
      t.equal(res.json().code, 'forbidden', name)
      continue
    }
    if (listing) {
      t.equal(res.statusCode, 200, `${name}: a listing answers`)
      for (const trace of traces(s)) t.notOk(res.body.includes(trace), `${name}: no trace of Page B (${trace})`)
      const filtered = await s.w.app.inject({ method, url: `${url}?page_id=${s.b.pageId}`, headers: bearer(SECRETS.shopA) })
      for (const trace of traces(s)) t.notOk(filtered.body.includes(trace), `${name}?page_id=B: no trace of Page B`)
      continue
    }
    t.equal(res.statusCode, 404, `${name}: 404 as if Page B's resource did not exist (${res.body})`)
    t.match(res.json().code, /_not_found$/, name)
    for (const trace of [s.b.psid, s.b.notificationId, s.b.optinRequestId]) {
      if (!url.includes(trace) && !JSON.stringify(payload ?? {}).includes(trace)) t.notOk(res.body.includes(trace), `${name}: no trace of Page B`)
    }
    // The same answer as for something that does not exist.
    if (url.includes(s.b.topicId) || url.includes(s.b.notificationId) || url.includes(s.b.broadcastId)) {
      const missing = await s.w.app.inject({
        method, url: url.replace(/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/, '00000000-0000-4000-8000-000000000000'),
        headers: auth, ...(payload ? { payload } : {}),
      })
      t.equal(missing.statusCode, 404, `${name}: a resource that does not exist is a 404 too`)
      t.equal(missing.json().code, res.json().code, `${name}: with the same code`)
    }
  }
  t.same(await pageBState(s), before, 'Page B is as it was: nothing changed, sent or created')
  t.equal(s.w.emulator.requests.filter((r) => r.pageId === s.b.pageId && JSON.stringify(r.message ?? {}).includes('foreign')).length, 0, 'nothing was sent for Page B')

  // Its own Page works: the key is not simply refused.
  const own = await s.w.app.inject({ method: 'GET', url: `/v1/topics/${s.topicA.id}`, headers: bearer(SECRETS.shopA) })
  t.equal(own.statusCode, 200)
  const list = await s.w.app.inject({ method: 'GET', url: '/v1/topics', headers: bearer(SECRETS.shopA) })
  t.same(list.json().items.map((x: Json) => x.id), [s.topicA.id], 'its listing holds Page A\'s topic only')
  const pages = await s.w.app.inject({ method: 'GET', url: '/v1/pages', headers: bearer(SECRETS.shopA) })
  t.same(pages.json().items.map((x: Json) => x.id), [s.pageA])
  const created = await s.w.app.inject({ method: 'POST', url: '/v1/topics', headers: bearer(SECRETS.shopA), payload: { page_id: s.pageA, name: 'A deals' } })
  t.equal(created.statusCode, 201, created.body)
})

t.test('a read-only key cannot change anything (403 forbidden) but reads everything', async (t) => {
  const s = await scene(t)
  const before = await pageBState(s)
  const sentBefore = s.w.emulator.requests.length
  const send = await s.w.app.inject({
    method: 'POST', url: '/v1/notifications', headers: bearer(SECRETS.reader),
    payload: { topic_id: s.b.topicId, psid: s.b.psid, message: { text: 'read-only' }, use_window: false },
  })
  t.equal(send.statusCode, 403)
  t.match(send.json(), { code: 'forbidden', status: 403, detail: /reader is read-only/ })
  t.equal(s.w.emulator.requests.length, sentBefore, 'nothing went to Meta')

  for (const o of v1Operations(s.w.app.swagger() as Json)) {
    const rights = o.op['x-access'].rights
    const payload = bodyFor(o, s)
    const res = await s.w.app.inject({ method: o.method, url: pathFor(o, s), headers: bearer(SECRETS.reader), ...(payload ? { payload } : {}) })
    if (rights === 'read') t.equal(res.statusCode, 200, `${o.method} ${o.path}: a read answers (${res.body.slice(0, 200)})`)
    else t.same([res.statusCode, res.json().code], [403, 'forbidden'], `${o.method} ${o.path}: refused`)
  }
  t.same(await pageBState(s), before, 'nothing changed')

  const got = await s.w.app.inject({ method: 'GET', url: `/v1/notifications/${s.b.notificationId}`, headers: bearer(SECRETS.reader) })
  t.equal(got.json().id, s.b.notificationId, 'it reads what any Page holds')
  const scoped = await s.w.app.inject({ method: 'PATCH', url: `/v1/topics/${s.topicA.id}`, headers: bearer(SECRETS.shopAReader), payload: { name: 'x' } })
  t.same([scoped.statusCode, scoped.json().code], [403, 'forbidden'], 'read-only on its own Page too')
  const foreign = await s.w.app.inject({ method: 'GET', url: `/v1/topics/${s.b.topicId}`, headers: bearer(SECRETS.shopAReader) })
  t.equal(foreign.statusCode, 404, 'and blind to other Pages')
})

t.test('the audit: admin keys only; one entry per changing call with the key\'s name, none for reads; created_by on what a key creates', async (t) => {
  const s = await scene(t)
  const { app, db } = s.w
  await app.auditWritten()
  for (const secret of [SECRETS.reader, SECRETS.shopA]) {
    const res = await app.inject({ method: 'GET', url: '/v1/audit', headers: bearer(secret) })
    t.same([res.statusCode, res.json().code], [403, 'forbidden'], 'not for a scoped or read-only key')
  }
  // Calls refused as invalid carry their values unchecked: the entry keeps ids of the API's forms only.
  const junk = await app.inject({ method: 'POST', url: '/v1/topics', headers: bearer(SECRETS.ops), payload: { page_id: 'not-a-page-id', name: 1 } })
  t.equal(junk.statusCode, 400)
  const badId = await app.inject({ method: 'PATCH', url: '/v1/topics/not-a-uuid%00', headers: bearer(SECRETS.ops), payload: { name: 'x' } })
  t.equal(badId.statusCode, 400)
  await app.auditWritten()
  const afterJunk = await app.inject({ method: 'GET', url: '/v1/audit?key_name=ops&limit=200', headers: auth })
  t.equal(afterJunk.statusCode, 200, afterJunk.body.slice(0, 300))
  t.match(afterJunk.json().items.slice(-2), [
    { route: '/v1/topics', status: 400, page_id: null, resource_id: null },
    { route: '/v1/topics/:id', status: 400, page_id: null, resource_id: null },
  ], 'recorded, without the junk')
  // Entries are timed to the millisecond: start past the last one.
  const since = new Date(Date.now() + 1).toISOString()
  while (Date.now() <= Date.parse(since)) await new Promise((resolve) => setImmediate(resolve))
  const topic = await app.inject({ method: 'POST', url: '/v1/topics', headers: bearer(SECRETS.shopA), payload: { page_id: s.pageA, name: 'Audited' } })
  t.equal(topic.statusCode, 201)
  const renamed = await app.inject({ method: 'PATCH', url: `/v1/topics/${topic.json().id}`, headers: bearer(SECRETS.ops), payload: { name: 'Audited 2' } })
  t.equal(renamed.statusCode, 200)
  const refused = await app.inject({ method: 'DELETE', url: `/v1/topics/${s.b.topicId}`, headers: bearer(SECRETS.shopA) })
  t.equal(refused.statusCode, 404)
  const forbidden = await app.inject({ method: 'DELETE', url: `/v1/topics/${s.topicA.id}`, headers: bearer(SECRETS.reader) })
  t.equal(forbidden.statusCode, 403)
  await app.inject({ method: 'GET', url: `/v1/topics/${s.topicA.id}`, headers: bearer(SECRETS.ops) })
  await app.inject({ method: 'POST', url: '/v1/broadcasts/estimate', headers: bearer(SECRETS.ops), payload: { topic_id: s.topicA.id, message: { text: 'x' } } })
  const page = await app.inject({ method: 'PUT', url: `/v1/pages/${uniquePageId()}`, headers: bearer(SECRETS.ops), payload: { name: 'New' } })
  t.equal(page.statusCode, 201)
  await app.auditWritten()

  const res = await app.inject({ method: 'GET', url: `/v1/audit?since=${since}`, headers: bearer(SECRETS.ops) })
  t.equal(res.statusCode, 200, res.body)
  const entries = res.json().items as Json[]
  t.match(entries, [
    { key_name: 'shop-a', method: 'POST', route: '/v1/topics', page_id: s.pageA, resource_id: topic.json().id, status: 201 },
    { key_name: 'ops', method: 'PATCH', route: '/v1/topics/:id', page_id: s.pageA, resource_id: topic.json().id, status: 200 },
    { key_name: 'shop-a', method: 'DELETE', route: '/v1/topics/:id', page_id: s.b.pageId, resource_id: s.b.topicId, status: 404 },
    { key_name: 'reader', method: 'DELETE', route: '/v1/topics/:id', page_id: s.pageA, resource_id: s.topicA.id, status: 403 },
    { key_name: 'ops', method: 'PUT', route: '/v1/pages/:pageId', page_id: page.json().id, resource_id: page.json().id, status: 201 },
  ])
  t.equal(entries.length, 5, 'reads (GET, the estimate) are not audited')
  for (const e of entries) {
    t.type(e.request_id, 'string')
    t.ok(Date.parse(e.at) >= Date.parse(since))
  }
  const raw = JSON.stringify(await db.selectFrom('audit_log').selectAll().execute())
  for (const secret of [...Object.values(SECRETS), API_KEY, s.w.accessToken]) t.notOk(raw.includes(secret), 'no secret in the audit')
  t.notOk(raw.includes('Audited 2'), 'no body in the audit')

  const byKey = await app.inject({ method: 'GET', url: `/v1/audit?since=${since}&key_name=shop-a&page_id=${s.pageA}`, headers: auth })
  t.same(byKey.json().items.map((e: Json) => e.route), ['/v1/topics'], 'filtered by key and Page')
  const first = await app.inject({ method: 'GET', url: `/v1/audit?since=${since}&limit=2`, headers: auth })
  const second = await app.inject({ method: 'GET', url: `/v1/audit?since=${since}&limit=2&cursor=${first.json().next_cursor}`, headers: auth })
  t.same([...first.json().items, ...second.json().items].map((e: Json) => e.id), entries.slice(0, 4).map((e) => e.id), 'cursor pagination')
  const until = await app.inject({ method: 'GET', url: `/v1/audit?until=${since}`, headers: auth })
  t.notOk(until.json().items.some((e: Json) => Date.parse(e.at) >= Date.parse(since)), 'until: only before')

  // created_by: the key's name on what it creates (the scene's records by the bare key are key-1's).
  t.equal((await db.selectFrom('topics').select('created_by').where('id', '=', topic.json().id).executeTakeFirstOrThrow()).created_by, 'shop-a')
  t.equal((await db.selectFrom('topics').select('created_by').where('id', '=', s.b.topicId).executeTakeFirstOrThrow()).created_by, 'key-1')
  t.equal((await db.selectFrom('pages').select('created_by').where('id', '=', page.json().id).executeTakeFirstOrThrow()).created_by, 'ops')
  t.equal((await db.selectFrom('notifications').select('created_by').where('id', '=', s.b.notificationId).executeTakeFirstOrThrow()).created_by, 'key-1')
  t.equal((await db.selectFrom('broadcasts').select('created_by').where('id', '=', s.b.broadcastId).executeTakeFirstOrThrow()).created_by, 'key-1')
  t.equal((await db.selectFrom('optin_requests').select('created_by').where('id', '=', s.b.optinRequestId).executeTakeFirstOrThrow()).created_by, 'key-1')
  const psid = newPsid()
  await giveTokens({ ...s.w, pageId: s.pageA, topic: { ...s.topicA, payload: (await db.selectFrom('topics').select('payload').where('id', '=', s.topicA.id).executeTakeFirstOrThrow()).payload } as any }, psid, 1)
  const sent = await app.inject({ method: 'POST', url: '/v1/notifications', headers: bearer(SECRETS.shopA), payload: { topic_id: s.topicA.id, psid, message: { text: 'A' }, use_window: false } })
  t.equal(sent.statusCode, 201, sent.body)
  t.equal((await db.selectFrom('notifications').select('created_by').where('id', '=', sent.json().id).executeTakeFirstOrThrow()).created_by, 'shop-a', 'a scoped key\'s send')
})

t.test('a key\'s name is on its request log lines; no secret ever is', async (t) => {
  const logs = new LogCapture()
  const s = await scene(t, { logs })
  for (const secret of Object.values(SECRETS)) {
    await s.w.app.inject({ method: 'GET', url: `/v1/topics/${s.topicA.id}`, headers: bearer(secret) })
    await s.w.app.inject({ method: 'DELETE', url: `/v1/topics/${s.b.topicId}`, headers: bearer(secret) })
  }
  await s.w.app.inject({ method: 'GET', url: '/v1/topics', headers: bearer('not-a-key-at-all') })
  await s.w.app.auditWritten()
  const requests = logs.lines.filter((l) => l.msg === 'request' && String(l.route).startsWith('/v1/topics/'))
  const names = new Set(requests.map((l) => l.key_name))
  for (const name of ['ops', 'reader', 'shop-a', 'shop-a-reader']) t.ok(names.has(name), `${name} is on its lines`)
  t.ok(requests.some((l) => l.key_name === 'shop-a' && l.status === 404), 'the refused call names its key')
  for (const secret of [...Object.values(SECRETS), API_KEY, 'not-a-key-at-all']) t.notOk(logs.text.includes(secret), 'no secret in the logs')
})
