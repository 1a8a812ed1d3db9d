import t from 'tap'
import { randomUUID } from 'node:crypto'
import { expireTokens } from '../../src/domain/token-store.js'
import { maskToken } from '../../src/domain/window.js'
import { auth } from '../helper.js'
import { newPsid, world, type World } from '../fixtures/otn.js'
import { story } from '../fixtures/consent.js'

async function history (w: World, psid: string, query = '') {
  const res = await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}/subscribers/${psid}/history${query}`, headers: auth })
  return res
}

async function allEntries (w: World, psid: string, query = '') {
  const items: Array<Record<string, unknown>> = []
  let cursor: string | null = null
  do {
    const res = await history(w, psid, `?limit=2${query}${cursor ? `&cursor=${cursor}` : ''}`)
    if (res.statusCode !== 200) throw new Error(res.body)
    items.push(...res.json().items)
    cursor = res.json().next_cursor
  } while (cursor)
  return items
}

t.test('the history follows a scripted story step by step, oldest first, and never shows a message or a token', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const other = newPsid()
  const { steps, tokens, sent, none, asked } = await story(w, psid)
  await story(w, other)
  t.ok(await expireTokens(w.db) >= 2, 'the story\'s second tokens expire')
  const expected = [...steps.flatMap((s) => s.types), 'token_expired']

  const entries = await allEntries(w, psid)
  t.same(entries.map((e) => e.type), expected, 'one entry per change, in the order they happened, across pages of two')
  const byType = (type: string) => entries.filter((e) => e.type === type)
  t.match(byType('optin_requested')[0], { optin_request_id: asked.id, topic_id: w.topic.id, payload: w.topic.payload, kind: 'one_time_notif', status: 'sent' })
  t.match(byType('opted_in'), [
    { kind: 'one_time_notif', topic_id: w.topic.id, status: 'available', expires_at: String },
    { kind: 'one_time_notif', status: 'available' },
    { kind: 'notification_messages', topic_id: w.topic.id },
  ])
  t.match(byType('notification_sent')[0], { notification_id: sent.id, route: 'token', status: 'sent', detail: { graph_message_id: sent.graph_message_id, token_state: 'used' } })
  t.match(byType('token_used')[0], { notification_id: sent.id, token_id: byType('opted_in')[0].token_id })
  t.match(byType('notification_failed')[0], { notification_id: none.notification.id, status: 'no_token', detail: { code: 'no_token' } })
  t.match(byType('token_expired')[0], { token_id: byType('opted_in')[1].token_id })
  t.match(byType('stopped')[0], { kind: 'notification_messages', token_id: byType('opted_in')[2].token_id })
  const text = JSON.stringify(entries)
  for (const token of tokens) t.notOk(text.includes(token), 'no token value')
  t.notOk(text.includes('red shoes'), 'no message')

  t.same((await allEntries(w, psid, '&type=opted_in')).map((e) => e.type), ['opted_in', 'opted_in', 'opted_in'], 'filtered by type')
  t.equal((await allEntries(w, psid, `&topic_id=${w.topic.id}`)).length, expected.length, 'every entry of the story is on its topic')
  t.same(await allEntries(w, newPsid()), [], 'a person the service never saw: an empty history')
})

t.test('a re-delivered opt-in writes nothing twice', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const { optIn } = await import('../fixtures/consent.js')
  const { body } = await optIn(w, psid)
  const { signedPost } = await import('../fixtures/webhooks.js')
  const { APP_SECRET } = await import('../fixtures/otn.js')
  const again = await signedPost(w.app, body, APP_SECRET)
  t.equal(again.json().duplicate, true)
  // The same event in other bytes (Meta re-batches its retries).
  const reparsed = await signedPost(w.app, JSON.stringify(JSON.parse(body), null, 1), APP_SECRET)
  t.equal(reparsed.json().duplicate, false)
  t.same((await allEntries(w, psid)).map((e) => e.type), ['opted_in'])
})

t.test('bad input: unknown Page, unknown topic, forged cursor, unknown type', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const page = await w.app.inject({ method: 'GET', url: `/v1/pages/9${w.pageId}/subscribers/${psid}/history`, headers: auth })
  t.match(page.json(), { status: 404, code: 'page_not_found' })
  t.match((await history(w, psid, `?topic_id=${randomUUID()}`)).json(), { status: 404, code: 'topic_not_found' })
  t.match((await history(w, psid, '?cursor=bm90LW91cnM')).json(), { status: 400, code: 'invalid_cursor' })
  t.match((await history(w, psid, '?type=loved')).json(), { status: 400, code: 'validation_failed' })
  t.equal((await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}/subscribers/${psid}/history` })).statusCode, 401)
})

t.test('the export holds everything about the person, tokens masked, and matches the story step by step', async (t) => {
  const w = await world(t)
  const psid = newPsid()
  const { steps, tokens, sent, none, asked } = await story(w, psid)
  await story(w, newPsid())
  const res = await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}/subscribers/${psid}/export`, headers: auth })
  t.equal(res.statusCode, 200)
  const doc = res.json()
  t.match(doc, { page_id: w.pageId, psid, exported_at: String, subscriber: { first_seen_at: String, last_interaction_at: String } })
  t.same(doc.history, await allEntries(w, psid), 'the history as GET .../history lists it')
  t.same(doc.history.map((e: { type: string }) => e.type), steps.flatMap((s) => s.types))
  t.match(doc.tokens, [
    { kind: 'one_time_notif', state: 'used', topic_id: w.topic.id, payload: w.topic.payload },
    { kind: 'one_time_notif', state: 'available' },
    { kind: 'notification_messages', state: 'available', stopped_at: null, frequency: 'WEEKLY' },
  ], 'every token in any state, oldest opt-in first')
  t.same(doc.tokens.map((x: { token: string }) => x.token), tokens.map(maskToken), 'masked')
  t.match(doc.notifications, [
    { id: sent.id, status: 'sent', route: 'token', message: { text: 'Back in stock: the red shoes' }, graph_message_id: sent.graph_message_id },
    { id: none.notification.id, status: 'no_token', message: { text: 'Again?' }, error: { code: 'no_token' } },
  ], 'every notification with its message')
  t.match(doc.optin_requests, [{ id: asked.id, topic_id: w.topic.id, status: 'sent', kind: 'one_time_notif' }])
  for (const token of tokens) t.notOk(res.body.includes(token), 'no token value')

  const unknown = (await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}/subscribers/${newPsid()}/export`, headers: auth })).json()
  t.match(unknown, { subscriber: null, tokens: [], history: [], notifications: [], optin_requests: [] }, 'a person never seen: nothing')
  t.match((await w.app.inject({ method: 'GET', url: `/v1/pages/9${w.pageId}/subscribers/${psid}/export`, headers: auth })).json(), { code: 'page_not_found' })

  await w.app.inject({ method: 'DELETE', url: `/v1/pages/${w.pageId}/subscribers/${psid}`, headers: auth })
  const erased = (await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}/subscribers/${psid}/export`, headers: auth })).json()
  t.match(erased, { subscriber: null, tokens: [], notifications: [], optin_requests: [], history: [{ type: 'erased' }] }, 'after an erasure: only the erased entry')
  t.equal(erased.history.length, 1)
})
