import t from 'tap'
import { audienceQuery, estimateOf, normalizeAudience, WINDOW_SECONDS, type AudienceFilter } from '../../src/domain/audience.js'
import { DomainError } from '../../src/domain/errors.js'
import { audiencePage } from '../../src/domain/token-store.js'
import type { Database } from '../../src/db/database.js'
import { testDatabase, uniquePageId } from '../helper.js'
import { seeded } from '../fixtures/broadcasts.js'

// A seeded population of 240 people on one Page, with known facts (tokens of both kinds and every
// state, windows, other topics, past messages), and a model of each filter written here in plain
// JavaScript over those facts, independently of the SQL. Every filter alone, and combinations, must
// list exactly the people the model says (the estimate and the keyset pages alike).

const DAY = 86_400_000
const NOW = Date.now()
const daysAgo = (d: number) => new Date(NOW - d * DAY)
const FAR = new Date('9999-12-31T00:00:00.000Z')

interface Tok { kind: 'one_time_notif' | 'notification_messages', optedIn: Date, expires: Date, state: 'available' | 'used' | 'expired', stopped: boolean, nextSend: Date | null }
interface Person { psid: string, main: Tok[], holdsB: boolean, holdsC: boolean, lastInteraction: Date | null, reached: Date[], failed: Date[] }

function population (n: number): Person[] {
  const rnd = seeded(32)
  const pick = <T> (xs: T[]): T => xs[Math.floor(rnd() * xs.length)]
  return Array.from({ length: n }, (_, i) => {
    const main: Tok[] = []
    for (let k = pick([0, 1, 1, 2]); k > 0; k--) {
      const kind = pick(['one_time_notif', 'one_time_notif', 'notification_messages'] as const)
      const optedIn = daysAgo(pick([3, 12, 45, 200]))
      main.push({
        kind,
        optedIn,
        expires: kind === 'notification_messages' ? pick([FAR, new Date(NOW + 5 * DAY)]) : new Date(optedIn.getTime() + 365 * DAY),
        state: pick(['available', 'available', 'available', 'used', 'expired']),
        stopped: kind === 'notification_messages' && rnd() < 0.2,
        nextSend: kind === 'notification_messages' ? pick([null, null, new Date(NOW + 3 * DAY), daysAgo(1)]) : null,
      })
    }
    return {
      psid: `aud${String(i).padStart(4, '0')}`,
      main,
      holdsB: rnd() < 0.4,
      holdsC: rnd() < 0.3,
      lastInteraction: pick([null, daysAgo(0.1), daysAgo(2), daysAgo(10), daysAgo(40)]),
      reached: rnd() < 0.4 ? [daysAgo(pick([1, 5, 20]))] : [],
      failed: rnd() < 0.3 ? [daysAgo(1)] : [],
    }
  })
}

// ---- the model ----

const usable = (x: Tok) => x.state === 'available' && !x.stopped && x.expires.getTime() > NOW
const since = (iso: string | undefined) => iso === undefined ? undefined : Date.parse(iso)
const last = (p: Person) => p.lastInteraction?.getTime() ?? -Infinity

function tokenMatches (x: Tok, f: AudienceFilter): boolean {
  if (!usable(x)) return false
  if (f.token_kind !== undefined && f.token_kind !== 'any' && x.kind !== f.token_kind) return false
  if (f.opted_in_after !== undefined && x.optedIn.getTime() < since(f.opted_in_after)!) return false
  if (f.opted_in_before !== undefined && x.optedIn.getTime() >= since(f.opted_in_before)!) return false
  if (f.expiring_before !== undefined && x.expires.getTime() >= since(f.expiring_before)!) return false
  return true
}

function personMatches (p: Person, f: AudienceFilter, topics: { b: string, c: string }): boolean {
  if (!p.main.some((x) => tokenMatches(x, f))) return false
  if (f.last_interaction_after !== undefined && !(last(p) >= since(f.last_interaction_after)!)) return false
  if (f.last_interaction_before !== undefined && !(last(p) < since(f.last_interaction_before)!)) return false
  const open = last(p) > NOW - DAY
  if (f.window === 'open' && !open) return false
  if (f.window === 'closed' && open) return false
  const holds = (id: string) => (id === topics.b && p.holdsB) || (id === topics.c && p.holdsC)
  if (f.holds_topics && !f.holds_topics.every(holds)) return false
  if (f.excludes_topics && f.excludes_topics.some(holds)) return false
  if (f.not_notified_since !== undefined && p.reached.some((d) => d.getTime() >= since(f.not_notified_since)!)) return false
  if (f.psids && !f.psids.includes(p.psid)) return false
  if (f.exclude_psids && f.exclude_psids.includes(p.psid)) return false
  return true
}

function routeOf (p: Person, f: AudienceFilter, useWindow: boolean): 'window' | 'recurring' | 'token' {
  if (useWindow && last(p) > NOW - DAY) return 'window'
  const allowed = (x: Tok) => usable(x) && (f.token_kind === undefined || f.token_kind === 'any' || x.kind === f.token_kind)
  const tokens = p.main.filter(allowed)
  if (tokens.some((x) => x.kind === 'notification_messages' && (x.nextSend === null || x.nextSend.getTime() <= NOW))) return 'recurring'
  return tokens.some((x) => x.kind === 'one_time_notif') ? 'token' : 'recurring'
}

// ---- the seed ----

async function seedPopulation (db: Database, people: Person[]) {
  const pageId = uniquePageId()
  await db.insertInto('pages').values({ id: pageId, name: 'Audience', access_token: 'EAA-x' }).execute()
  const topic = (name: string) => db.insertInto('topics').values({ page_id: pageId, name, title: name, payload: `p-${name}` })
    .returning(['id', 'page_id', 'payload']).executeTakeFirstOrThrow()
  const main = await topic('main')
  const b = await topic('b')
  const c = await topic('c')
  let n = 0
  const token = (psid: string, payload: string, x: Tok) => ({
    page_id: pageId, psid, payload, token: `t${n++}-${pageId}`, kind: x.kind, opted_in_at: x.optedIn, expires_at: x.expires,
    state: x.state, stopped_at: x.stopped ? daysAgo(1) : null, next_send_at: x.nextSend,
  })
  const plain: Tok = { kind: 'one_time_notif', optedIn: daysAgo(10), expires: new Date(NOW + 300 * DAY), state: 'available', stopped: false, nextSend: null }
  const tokens = people.flatMap((p) => [
    ...p.main.map((x) => token(p.psid, main.payload, x)),
    ...(p.holdsB ? [token(p.psid, b.payload, plain)] : []),
    ...(p.holdsC ? [token(p.psid, c.payload, plain)] : [token(p.psid, c.payload, { ...plain, state: 'used' })]),
  ])
  for (let i = 0; i < tokens.length; i += 200) await db.insertInto('optin_tokens').values(tokens.slice(i, i + 200)).execute()
  const subscribers = people.filter((p) => p.lastInteraction).map((p) => ({ page_id: pageId, psid: p.psid, first_seen_at: daysAgo(100), last_interaction_at: p.lastInteraction }))
  await db.insertInto('subscribers').values(subscribers).execute()
  const notes = people.flatMap((p) => [
    ...p.reached.map((at) => ({ status: 'sent' as const, at, psid: p.psid })),
    ...p.failed.map((at) => ({ status: 'failed' as const, at, psid: p.psid })),
  ]).map((x) => ({
    page_id: pageId, topic_id: b.id, psid: x.psid, message: JSON.stringify({ text: 'earlier' }), status: x.status,
    route: 'token' as const, created_at: x.at, updated_at: x.at, completed_at: x.at,
  }))
  await db.insertInto('notifications').values(notes).execute()
  return { pageId, main, b, c }
}

t.test('each filter alone and combined lists exactly the people the model says, in the estimate and in keyset pages', async (t) => {
  const { db } = await testDatabase()
  const people = population(240)
  const { main, b, c } = await seedPopulation(db, people)
  const iso = (d: Date) => d.toISOString()
  const some = people.filter((_, i) => i % 7 === 0).map((p) => p.psid)
  const cases: Array<[string, AudienceFilter]> = [
    ['no filter', {}],
    ['opted_in_after', { opted_in_after: iso(daysAgo(30)) }],
    ['opted_in_before', { opted_in_before: iso(daysAgo(30)) }],
    ['token_kind one_time_notif', { token_kind: 'one_time_notif' }],
    ['token_kind notification_messages', { token_kind: 'notification_messages' }],
    ['token_kind any', { token_kind: 'any' }],
    ['expiring_before', { expiring_before: iso(new Date(NOW + 30 * DAY)) }],
    ['last_interaction_after', { last_interaction_after: iso(daysAgo(5)) }],
    ['last_interaction_before', { last_interaction_before: iso(daysAgo(5)) }],
    ['window open', { window: 'open' }],
    ['window closed', { window: 'closed' }],
    ['holds_topics', { holds_topics: [b.id] }],
    ['holds_topics, two', { holds_topics: [b.id, c.id] }],
    ['excludes_topics', { excludes_topics: [c.id] }],
    ['not_notified_since', { not_notified_since: iso(daysAgo(7)) }],
    ['psids', { psids: some }],
    ['exclude_psids', { exclude_psids: some }],
    ['restock: asked in the last 30 days, window closed', { opted_in_after: iso(daysAgo(30)), window: 'closed' }],
    ['last call: one-time tokens expiring within 200 days, not messaged this week',
      { token_kind: 'one_time_notif', expiring_before: iso(new Date(NOW + 200 * DAY)), not_notified_since: iso(daysAgo(7)) }],
    ['everything at once', {
      opted_in_after: iso(daysAgo(100)), opted_in_before: iso(daysAgo(1)), last_interaction_before: iso(daysAgo(1)), holds_topics: [b.id],
      excludes_topics: [c.id], not_notified_since: iso(daysAgo(10)), exclude_psids: some, token_kind: 'one_time_notif',
    }],
  ]
  const topics = { b: b.id, c: c.id }
  let nonEmpty = 0
  for (const [name, raw] of cases) {
    const f = normalizeAudience(raw)
    const q = await audienceQuery(db, main, f, true)
    const expected = people.filter((p) => personMatches(p, raw, topics)).map((p) => p.psid).sort()
    if (expected.length > 0 && expected.length < people.length) nonEmpty++
    const listed: string[] = []
    for (let after: string | undefined; ;) {
      const { rows } = await audiencePage(q, WINDOW_SECONDS, after, 17).execute(db)
      if (rows.length === 0) break
      listed.push(...rows.map((r) => r.psid))
      after = rows.at(-1)!.psid
    }
    t.same(listed, expected, `${name}: the planned pages are the model's people, once each, in order`)
    for (const useWindow of [true, false]) {
      const e = await estimateOf(db, q, useWindow)
      const routes = { window: 0, recurring: 0, token: 0 }
      for (const p of people.filter((x) => expected.includes(x.psid))) routes[routeOf(p, raw, useWindow)]++
      t.same(e, { audience: expected.length, by_route: routes }, `${name} (use_window ${useWindow}): the estimate and its routes`)
    }
  }
  t.ok(nonEmpty >= cases.length - 2, 'the population makes (almost) every filter select a proper part of it')
})

t.test('a filter is normalized; an empty range or a topic both held and excluded is refused; an unknown topic too', async (t) => {
  const { db } = await testDatabase()
  t.same(normalizeAudience({ window: 'any', token_kind: 'any', psids: [] as string[] }), undefined, 'any and nothing filter nothing')
  t.same(normalizeAudience({ opted_in_after: '2026-11-02T01:00:00+01:00', psids: ['b', 'a', 'b'] }),
    { opted_in_after: '2026-11-02T00:00:00.000Z', psids: ['a', 'b'] })
  const code = (f: () => unknown) => { try { f(); return 'none' } catch (e) { return (e as DomainError).code } }
  t.equal(code(() => normalizeAudience({ opted_in_after: '2026-11-02T00:00:00Z', opted_in_before: '2026-11-02T00:00:00Z' })), 'audience_range_empty')
  t.equal(code(() => normalizeAudience({ last_interaction_after: '2026-11-03T00:00:00Z', last_interaction_before: '2026-11-02T00:00:00Z' })), 'audience_range_empty')
  const id = '00000000-0000-4000-8000-000000000001'
  t.equal(code(() => normalizeAudience({ holds_topics: [id], excludes_topics: [id] })), 'audience_range_empty')

  const people = population(20)
  const { main, b } = await seedPopulation(db, people)
  await t.rejects(audienceQuery(db, main, { holds_topics: [b.id, id] }, true), { code: 'audience_topic_not_found' })
  const lenient = await audienceQuery(db, main, { holds_topics: [b.id, id], excludes_topics: [id] }, false)
  t.same([lenient.holds, lenient.excludes], [false, []], 'at planning a topic gone since creation is held by nobody')
  t.same((await audiencePage(lenient, WINDOW_SECONDS, undefined, 100).execute(db)).rows, [], 'so holds_topics matches nobody')
})
