import t from 'tap'
import { randomUUID } from 'node:crypto'
import type { TokenState } from '../../src/db/types.js'
import { WINDOW_MS } from '../../src/domain/window.js'
import { auth, build, testDatabase, uniquePageId } from '../helper.js'
import { envelope, messageEvent, optinEvent, signedPost, uniquePsid, uniqueToken, webhookEnv } from '../fixtures/webhooks.js'
import { seedRecurring } from '../fixtures/recurring.js'

const HOUR = 3_600_000
const DAY = 24 * HOUR

/** `held`: an available token a send holds (claims.ts). */
async function insertToken (pageId: string, psid: string, payload: string, token: string, values: { expiresAt: number, state?: TokenState | 'held' }) {
  const { db } = await testDatabase()
  await db.insertInto('optin_tokens').values({
    page_id: pageId, psid, payload, token,
    opted_in_at: new Date(values.expiresAt - 365 * DAY), expires_at: new Date(values.expiresAt),
    state: values.state === 'held' ? 'available' : values.state ?? 'available',
    ...(values.state === 'held' ? { notification_id: randomUUID(), lease_expires_at: new Date(Date.now() + 60_000) } : {}),
  }).execute()
}

t.test('unknown Page, unknown person, bad ids, no key', async (t) => {
  const app = await build(t)
  const pageId = uniquePageId()
  const psid = uniquePsid()
  const missingPage = await app.inject({ method: 'GET', url: `/v1/pages/${pageId}/subscribers/${psid}`, headers: auth })
  t.equal(missingPage.statusCode, 404)
  t.match(missingPage.json(), { status: 404, code: 'page_not_found' })

  await app.inject({ method: 'PUT', url: `/v1/pages/${pageId}`, headers: auth, payload: { name: 'P' } })
  const missingPerson = await app.inject({ method: 'GET', url: `/v1/pages/${pageId}/subscribers/${psid}`, headers: auth })
  t.equal(missingPerson.statusCode, 404)
  t.match(missingPerson.json(), { status: 404, code: 'subscriber_not_found' })

  const bad = await app.inject({ method: 'GET', url: `/v1/pages/${pageId}/subscribers/no%20spaces`, headers: auth })
  t.equal(bad.statusCode, 400)
  t.equal(bad.json().code, 'validation_failed')
  t.equal((await app.inject({ method: 'GET', url: `/v1/pages/${pageId}/subscribers/${psid}` })).statusCode, 401)
})

t.test('the inbox view: window, usable tokens per topic soonest expiry first, unmatched tokens, all masked', async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  const psid = uniquePsid()
  await app.inject({ method: 'PUT', url: `/v1/pages/${pageId}`, headers: auth, payload: { name: 'Shop' } })
  const deals = (await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Deals', payload: 'deals' } })).json()
  const restock = (await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Restock', payload: 'restock' } })).json()

  const now = Date.now()
  const seen = now - 30 * DAY
  const spoke = now - 2 * HOUR
  const tokens = { dealsLate: uniqueToken(), dealsSoon: uniqueToken(), restock: uniqueToken(), orphan: uniqueToken() }
  const res = await signedPost(app, envelope([
    optinEvent({ pageId, psid, payload: 'deals', token: tokens.dealsLate, timestamp: now - 3 * DAY }),
    optinEvent({ pageId, psid, payload: 'deals', token: tokens.dealsSoon, timestamp: seen }),
    optinEvent({ pageId, psid, payload: 'restock', token: tokens.restock, timestamp: now - 40 * DAY + 1 }),
    optinEvent({ pageId, psid, payload: 'gone-topic', token: uniqueToken().slice(0, 8), timestamp: now - 50 * DAY }),
    optinEvent({ pageId, psid, payload: 'gone-topic', token: tokens.orphan, timestamp: now - DAY }),
    messageEvent({ pageId, psid, timestamp: spoke }),
  ]))
  t.equal(res.json().tokens_recorded, 5)
  // Tokens no longer usable never show: spent, held by a send, and available but past expiry (before the sweep).
  await insertToken(pageId, psid, 'deals', uniqueToken(), { expiresAt: now + 100 * DAY, state: 'used' })
  await insertToken(pageId, psid, 'deals', uniqueToken(), { expiresAt: now + 100 * DAY, state: 'held' })
  await insertToken(pageId, psid, 'deals', uniqueToken(), { expiresAt: now - HOUR })

  const got = await app.inject({ method: 'GET', url: `/v1/pages/${pageId}/subscribers/${psid}`, headers: auth })
  t.equal(got.statusCode, 200)
  const view = got.json()
  const iso = (ms: number) => new Date(ms).toISOString()
  const year = 365 * DAY
  const mask = (token: string) => `${token.slice(0, 4)}…${token.slice(-4)}`
  t.match(view, {
    page_id: pageId,
    psid,
    first_seen_at: iso(now - 50 * DAY),
    last_interaction_at: iso(spoke),
    window: { open: true, closes_at: iso(spoke + WINDOW_MS) },
  })
  t.same(view.topics.map((x: { topic_id: string }) => x.topic_id), [restock.id, deals.id], 'the topic with the soonest expiry first')
  t.same(view.topics[0], {
    topic_id: restock.id, name: 'Restock', payload: 'restock', usable_tokens: 1,
    tokens: [{ id: view.topics[0].tokens[0].id, token: mask(tokens.restock), opted_in_at: iso(now - 40 * DAY + 1), expires_at: iso(now - 40 * DAY + 1 + year) }],
  })
  t.same(view.topics[1].tokens.map((x: { token: string }) => x.token), [mask(tokens.dealsSoon), mask(tokens.dealsLate)], 'soonest expiry first')
  t.equal(view.topics[1].usable_tokens, 2)
  t.match(view.topics[1].tokens[0], { id: /^\d+$/, opted_in_at: iso(seen), expires_at: iso(seen + year) })
  t.same(view.unmatched_tokens, [
    { payload: 'gone-topic', token: '****', opted_in_at: iso(now - 50 * DAY), expires_at: iso(now - 50 * DAY + year) },
    { payload: 'gone-topic', token: mask(tokens.orphan), opted_in_at: iso(now - DAY), expires_at: iso(now - DAY + year) },
  ])
  for (const token of Object.values(tokens)) t.notOk(got.body.includes(token), 'no raw token in the body')
})

t.test('the window closes 24 hours after the last interaction; an opt-in alone opens nothing', async (t) => {
  const app = await build(t, webhookEnv)
  const pageId = uniquePageId()
  await app.inject({ method: 'PUT', url: `/v1/pages/${pageId}`, headers: auth, payload: { name: 'P' } })
  const [quiet, optedIn] = [uniquePsid(), uniquePsid()]
  const long = Date.now() - DAY - HOUR
  await signedPost(app, envelope([
    messageEvent({ pageId, psid: quiet, timestamp: long }),
    optinEvent({ pageId, psid: optedIn, payload: 'x', token: uniqueToken(), timestamp: Date.now() - 1000 }),
  ]))
  const closed = (await app.inject({ method: 'GET', url: `/v1/pages/${pageId}/subscribers/${quiet}`, headers: auth })).json()
  t.same({ last: closed.last_interaction_at, window: closed.window, topics: closed.topics, unmatched: closed.unmatched_tokens },
    { last: new Date(long).toISOString(), window: { open: false, closes_at: null }, topics: [], unmatched: [] })
  const only = (await app.inject({ method: 'GET', url: `/v1/pages/${pageId}/subscribers/${optedIn}`, headers: auth })).json()
  t.equal(only.last_interaction_at, null)
  t.same(only.window, { open: false, closes_at: null })
  t.equal(only.unmatched_tokens.length, 1)
})

t.test('tokens without a subscriber row still make a person (first seen = first opt-in)', async (t) => {
  const app = await build(t)
  const pageId = uniquePageId()
  const psid = uniquePsid()
  await app.inject({ method: 'PUT', url: `/v1/pages/${pageId}`, headers: auth, payload: { name: 'P' } })
  const expiresAt = Date.now() + 10 * DAY
  await insertToken(pageId, psid, 'x', uniqueToken(), { expiresAt, state: 'used' })
  const view = (await app.inject({ method: 'GET', url: `/v1/pages/${pageId}/subscribers/${psid}`, headers: auth })).json()
  t.match(view, { psid, first_seen_at: new Date(expiresAt - 365 * DAY).toISOString(), last_interaction_at: null, topics: [], unmatched_tokens: [] })
})

t.test('the recurring list: active (held or not) and stopped tokens masked, with pacing; replaced, expired and invalid ones gone; one-time lists unchanged', async (t) => {
  const app = await build(t)
  const { db } = await testDatabase()
  const pageId = uniquePageId()
  const psid = uniquePsid()
  await app.inject({ method: 'PUT', url: `/v1/pages/${pageId}`, headers: auth, payload: { name: 'Shop', timezone: 'Europe/Berlin' } })
  const deals = (await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'Deals', payload: 'deals' } })).json()
  const news = (await app.inject({ method: 'POST', url: '/v1/topics', headers: auth, payload: { page_id: pageId, name: 'News', payload: 'news' } })).json()
  const now = Date.now()
  const token = (c: string) => `${c.repeat(4)}${'x'.repeat(32)}${c}${c}zz` // 40 characters: the mask shows 4 and 4
  const lastSent = new Date(now - 2 * DAY)
  const nextSend = new Date(now + DAY)
  const expires = new Date(now + 100 * DAY)
  const seeded = {
    active: await seedRecurring(db, { pageId, psid, payload: 'deals', token: token('A'), frequency: 'WEEKLY', timezone: 'America/New_York', lastSentAt: lastSent, nextSendAt: nextSend }),
    stopped: await seedRecurring(db, { pageId, psid, payload: 'news', token: token('S'), expiresAt: expires }),
    held: await seedRecurring(db, { pageId, psid, payload: 'elsewhere', token: token('H') }),
    replaced: await seedRecurring(db, { pageId, psid, payload: 'deals', token: token('R'), status: 'replaced' }),
    expired: await seedRecurring(db, { pageId, psid, payload: 'news', token: token('E'), status: 'expired' }),
    invalid: await seedRecurring(db, { pageId, psid, payload: 'deals', token: token('I'), status: 'invalid' }),
  }
  await db.updateTable('optin_tokens').set({ stopped_at: new Date(now - HOUR) }).where('page_id', '=', pageId).where('token', '=', seeded.stopped.token).execute()
  await db.updateTable('optin_tokens').set({ notification_id: randomUUID(), lease_expires_at: new Date(now + 60_000) }).where('page_id', '=', pageId).where('token', '=', seeded.held.token).execute()
  const otn = uniqueToken()
  await insertToken(pageId, psid, 'deals', otn, { expiresAt: now + 200 * DAY })

  const got = await app.inject({ method: 'GET', url: `/v1/pages/${pageId}/subscribers/${psid}`, headers: auth })
  t.equal(got.statusCode, 200)
  const view = got.json()
  const mask = (x: string) => `${x.slice(0, 4)}…${x.slice(-4)}`
  t.same(view.recurring, [
    { topic_id: deals.id, name: 'Deals', payload: 'deals', token: mask(seeded.active.token), status: 'active', frequency: 'WEEKLY', timezone: 'America/New_York',
      expires_at: null, last_sent_at: lastSent.toISOString(), next_send_at: nextSend.toISOString() },
    { topic_id: news.id, name: 'News', payload: 'news', token: mask(seeded.stopped.token), status: 'stopped', frequency: null, timezone: null,
      expires_at: expires.toISOString(), last_sent_at: null, next_send_at: null },
    { topic_id: null, name: null, payload: 'elsewhere', token: mask(seeded.held.token), status: 'active', frequency: null, timezone: null,
      expires_at: null, last_sent_at: null, next_send_at: null },
  ], 'by topic name, unmatched last; NO_EXPIRY shows as null; a token a send holds is still active')
  t.equal(mask(seeded.active.token), 'AAAA…AAzz')
  t.same(view.topics.map((x: { topic_id: string, tokens: unknown[] }) => [x.topic_id, x.tokens.length]), [[deals.id, 1]], 'the one-time list holds the one-time token only')
  t.equal(view.topics[0].tokens[0].token, mask(otn))
  t.same(view.unmatched_tokens, [], 'a recurring token with no topic is not an unmatched one-time token')
  for (const { token: value } of Object.values(seeded)) t.notOk(got.body.includes(value), 'no raw token in the body')
  t.notOk(got.body.includes(otn))

  // A person with only a stopped recurring token is still a person the Page knows.
  const quiet = uniquePsid()
  await seedRecurring(db, { pageId, psid: quiet, payload: 'news', status: 'stopped' })
  const view2 = (await app.inject({ method: 'GET', url: `/v1/pages/${pageId}/subscribers/${quiet}`, headers: auth })).json()
  t.match(view2, { topics: [], unmatched_tokens: [], recurring: [{ topic_id: news.id, status: 'stopped' }] })
})
