import t from 'tap'
import { sql } from 'kysely'
import { auth, build, LogCapture, testDatabase, uniquePageId } from '../helper.js'
import { openSecret } from '../../src/crypto/secret-box.js'

t.test('PUT registers a Page, never returns its token, and updates it', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, { LOG_LEVEL: 'info' }, { logStream: logs })
  const id = uniquePageId()
  const created = await app.inject({ method: 'PUT', url: `/v1/pages/${id}`, headers: auth, payload: { name: 'Shop', access_token: 'EAAsecret-page-token' } })
  t.equal(created.statusCode, 201)
  const body = created.json()
  t.match(body, { id, name: 'Shop', has_access_token: true, healthy: true })
  t.notOk('access_token' in body)
  t.notOk(created.body.includes('EAAsecret'))

  const updated = await app.inject({ method: 'PUT', url: `/v1/pages/${id}`, headers: auth, payload: { name: 'Shop 2' } })
  t.equal(updated.statusCode, 200)
  t.equal(updated.json().name, 'Shop 2')
  t.equal(updated.json().has_access_token, true, 'omitting access_token keeps the current one')
  t.equal(updated.json().created_at, body.created_at)

  const { db } = await testDatabase()
  const row = await db.selectFrom('pages').select('access_token').where('id', '=', id).executeTakeFirstOrThrow()
  t.match(row.access_token, /^enc:v1:test-key:/, 'stored encrypted (docs/SECURITY.md)')
  t.notOk(row.access_token!.includes('EAAsecret'))
  t.equal(openSecret('pages.access_token', row.access_token!), 'EAAsecret-page-token', 'and decrypts to the token given')

  const got = await app.inject({ method: 'GET', url: `/v1/pages/${id}`, headers: auth })
  t.same(got.json(), updated.json())
  t.notOk(logs.text.includes('EAAsecret'), 'the token is never logged')
  t.notOk(logs.text.includes('test-api-key'), 'the API key is never logged')
  t.ok(logs.lines.some((l) => l.msg === 'request' && l.route === '/v1/pages/:pageId'), 'requests are logged')
})

t.test('a Page marked unhealthy shows its last error until a new token is given', async (t) => {
  const app = await build(t)
  const id = uniquePageId()
  await app.inject({ method: 'PUT', url: `/v1/pages/${id}`, headers: auth, payload: { name: 'P', access_token: 'tok' } })
  const { db } = await testDatabase()
  const { recordPageError } = await import('../../src/domain/pages.js')
  await recordPageError(db, id, { code: 190, subcode: null, message: 'Invalid OAuth access token', fbtrace_id: 'abc' })
  const sick = (await app.inject({ method: 'GET', url: `/v1/pages/${id}`, headers: auth })).json()
  t.equal(sick.healthy, false)
  t.match(sick.last_error, { code: 190, message: 'Invalid OAuth access token', fbtrace_id: 'abc' })
  const healed = (await app.inject({ method: 'PUT', url: `/v1/pages/${id}`, headers: auth, payload: { name: 'P', access_token: 'new' } })).json()
  t.equal(healed.healthy, true)
  t.notOk('last_error' in healed)
})

t.test('list pages with cursor pagination', async (t) => {
  const app = await build(t)
  const { db } = await testDatabase()
  await sql`delete from topics`.execute(db)
  await sql`delete from pages`.execute(db)
  const ids = Array.from({ length: 5 }, () => uniquePageId())
  for (const id of ids) await app.inject({ method: 'PUT', url: `/v1/pages/${id}`, headers: auth, payload: { name: `n${id}` } })
  const seen: string[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const res: { statusCode: number, json: () => any } = await app.inject({ method: 'GET', url: '/v1/pages', headers: auth, query: { limit: '2', ...(cursor ? { cursor } : {}) } })
    t.equal(res.statusCode, 200)
    const body: { items: Array<{ id: string }>, next_cursor: string | null } = res.json()
    t.ok(body.items.length <= 2)
    seen.push(...body.items.map((p: { id: string }) => p.id))
    cursor = body.next_cursor
    pages++
  } while (cursor)
  t.equal(pages, 3)
  t.same(seen.sort(), ids.sort(), 'every page exactly once')
  const bad = await app.inject({ method: 'GET', url: '/v1/pages?cursor=garbage', headers: auth })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().code, 'invalid_cursor')
})

t.test('delete a Page: 404 when unknown, 409 while it has topics, 204 otherwise', async (t) => {
  const app = await build(t)
  const id = uniquePageId()
  t.equal((await app.inject({ method: 'DELETE', url: `/v1/pages/${id}`, headers: auth })).json().code, 'page_not_found')
  await app.inject({ method: 'PUT', url: `/v1/pages/${id}`, headers: auth, payload: { name: 'P' } })
  const topic = await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: id, name: 'Deals' } })
  const refused = await app.inject({ method: 'DELETE', url: `/v1/pages/${id}`, headers: auth })
  t.equal(refused.statusCode, 409)
  t.equal(refused.json().code, 'page_has_topics')
  await app.inject({ method: 'DELETE', url: `/v1/topics/${topic.json().id}`, headers: auth })
  const ok = await app.inject({ method: 'DELETE', url: `/v1/pages/${id}`, headers: auth })
  t.equal(ok.statusCode, 204)
  t.equal((await app.inject({ method: 'GET', url: `/v1/pages/${id}`, headers: auth })).statusCode, 404)
})

t.test('PAGE_ID and PAGE_ACCESS_TOKEN register a Page at start-up', async (t) => {
  const id = uniquePageId()
  const app = await build(t, { PAGE_ID: id, PAGE_ACCESS_TOKEN: 'env-token', PAGE_NAME: 'From env' })
  const res = await app.inject({ method: 'GET', url: `/v1/pages/${id}`, headers: auth })
  t.match(res.json(), { id, name: 'From env', has_access_token: true })
})

t.test('bad page ids and bodies are 400 validation problems naming the field', async (t) => {
  const app = await build(t)
  const res = await app.inject({ method: 'PUT', url: '/v1/pages/not-a-number', headers: auth, payload: { name: '' } })
  t.equal(res.statusCode, 400)
  t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8')
  const body = res.json()
  t.equal(body.code, 'validation_failed')
  t.ok(body.errors.some((e: { field: string }) => e.field.startsWith('params')), 'names the bad param')
  const extra = await app.inject({ method: 'PUT', url: `/v1/pages/${uniquePageId()}`, headers: auth, payload: { name: 'x', acces_token: 'typo' } })
  t.equal(extra.statusCode, 400)
  t.match(extra.json().errors, [{ field: 'body/acces_token', message: 'unknown property acces_token' }])
})

t.test("a Page's own broadcast rate: set, kept when omitted, cleared with null, bounded", async (t) => {
  const app = await build(t)
  const id = uniquePageId()
  const put = (payload: Record<string, unknown>) => app.inject({ method: 'PUT', url: `/v1/pages/${id}`, headers: auth, payload })
  t.equal((await put({ name: 'Shop' })).json().broadcast_rate_per_second, null, 'the default')
  t.equal((await put({ name: 'Shop', broadcast_rate_per_second: 50 })).json().broadcast_rate_per_second, 50)
  t.equal((await put({ name: 'Shop renamed' })).json().broadcast_rate_per_second, 50, 'kept when omitted')
  t.equal((await put({ name: 'Shop', broadcast_rate_per_second: null })).json().broadcast_rate_per_second, null, 'cleared')
  for (const bad of [0, 1001, 2.5, 'fast']) t.equal((await put({ name: 'Shop', broadcast_rate_per_second: bad })).statusCode, 400, String(bad))
})

t.test("a Page's time zone: UTC by default, an IANA name set and kept when omitted, an unknown one refused with invalid_timezone", async (t) => {
  const app = await build(t)
  const { db } = await testDatabase()
  const id = uniquePageId()
  const put = (payload: Record<string, unknown>) => app.inject({ method: 'PUT', url: `/v1/pages/${id}`, headers: auth, payload })
  const get = async () => (await app.inject({ method: 'GET', url: `/v1/pages/${id}`, headers: auth })).json()
  const created = await put({ name: 'Shop' })
  t.equal(created.statusCode, 201)
  t.equal(created.json().timezone, 'UTC', 'the default')
  t.equal((await put({ name: 'Shop', timezone: 'Europe/Berlin' })).json().timezone, 'Europe/Berlin')
  t.equal((await get()).timezone, 'Europe/Berlin', 'GET shows it')
  t.equal((await put({ name: 'Shop renamed' })).json().timezone, 'Europe/Berlin', 'kept when omitted')
  t.equal((await put({ name: 'Shop', timezone: 'america/new_york' })).json().timezone, 'America/New_York', 'spelled as IANA does')
  t.equal((await put({ name: 'Shop', timezone: 'Asia/Kolkata' })).json().timezone, 'Asia/Kolkata', 'an alias is kept as given')

  for (const bad of ['Mars/Olympus_Mons', 'Europe/Berlinn', '+01:00', 'UTC+1', 'local', ' ']) {
    const res = await put({ name: 'Shop', timezone: bad })
    t.equal(res.statusCode, 400, bad)
    t.equal(res.headers['content-type'], 'application/problem+json; charset=utf-8')
    t.match(res.json(), { status: 400, code: 'invalid_timezone', detail: /not an IANA time zone name/ }, bad)
  }
  t.equal((await put({ name: 'Shop', timezone: '' })).json().code, 'validation_failed', 'empty: the schema says so')
  t.equal((await get()).timezone, 'Asia/Kolkata', 'a refused PUT changed nothing')
  const row = await db.selectFrom('pages').select(['timezone', 'name']).where('id', '=', id).executeTakeFirstOrThrow()
  t.same(row, { timezone: 'Asia/Kolkata', name: 'Shop' })

  const fresh = uniquePageId()
  const refused = await app.inject({ method: 'PUT', url: `/v1/pages/${fresh}`, headers: auth, payload: { name: 'New', timezone: 'Nowhere/Land' } })
  t.equal(refused.statusCode, 400)
  t.equal((await app.inject({ method: 'GET', url: `/v1/pages/${fresh}`, headers: auth })).statusCode, 404, 'a refused PUT registers nothing')
})
