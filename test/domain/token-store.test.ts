import t from 'tap'
import { randomUUID } from 'node:crypto'
import { sql } from 'kysely'
import type { TokenOutcome } from '../../src/domain/lifecycle.js'
import { claimFree } from '../fixtures/tokens.js'
import { claimToken, discardPersonTokens, expireTokens, extendLease, holdInput, settleHolds, type Hold } from '../../src/domain/token-store.js'
import type { Database } from '../../src/db/database.js'
import { databaseKind, testDatabase, uniquePageId } from '../helper.js'
import { heldOpen } from '../fixtures/locks.js'
import type { TokenState } from '../../src/db/types.js'
import { maintenanceTasks } from '../../src/tasks.js'
import { build } from '../helper.js'
import { uniqueToken } from '../fixtures/webhooks.js'

const DAY = 24 * 60 * 60 * 1000

async function seed (tokens: Array<{ psid?: string, payload?: string, state?: 'available' | 'used', expiresInDays?: number, kind?: 'one_time_notif' | 'notification_messages' }>) {
  const { db } = await testDatabase()
  const page_id = uniquePageId()
  const ids: string[] = []
  for (const [i, x] of tokens.entries()) {
    const row = await db.insertInto('optin_tokens').values({
      page_id, psid: x.psid ?? 'p1', payload: x.payload ?? 'topic', token: `tok-${page_id}-${i}`,
      kind: x.kind ?? 'one_time_notif', state: x.state ?? 'available',
      opted_in_at: new Date(), expires_at: new Date(Date.now() + (x.expiresInDays ?? 100) * DAY + i * 60_000),
    }).returning('id').executeTakeFirstOrThrow()
    ids.push(row.id)
  }
  return { db, page_id, ids }
}

/** Ends one hold alone; true when this holder moved it. */
async function settleToken (db: Database, h: Hold, to: TokenOutcome): Promise<boolean> {
  const { rows } = await sql<{ held_by: string }>`with input as (${holdInput(h, to)}), moved as (${settleHolds('input', 0)}) select held_by from moved`.execute(db)
  return rows.length > 0
}

const target = (page_id: string, extra: Partial<{ psid: string, payload: string }> = {}) =>
  ({ page_id, payload: 'topic', psid: 'p1', notification_id: randomUUID(), leaseSeconds: 60, ...extra })

t.test('claims a recurring token that may send, else the soonest-expiring one-time token of that person and topic, and only such', async (t) => {
  const { db, page_id, ids } = await seed([
    { expiresInDays: 30 },
    { expiresInDays: 5 },
    { expiresInDays: -1 }, // expired
    { expiresInDays: 1, state: 'used' },
    { expiresInDays: 1, psid: 'someone-else' },
    { expiresInDays: 1, payload: 'other-topic' },
    { expiresInDays: 1, kind: 'notification_messages' },
  ])
  t.equal((await claimFree(db, target(page_id)))?.id, ids[6], 'a recurring token that may send now comes first')
  const first = target(page_id)
  const claimed = await claimFree(db, first)
  t.equal(claimed?.id, ids[1], 'then the soonest expiry')
  t.equal(claimed?.token, `tok-${page_id}-1`)
  t.ok(claimed!.lease_expires_at.getTime() > Date.now() + 50_000, 'the lease runs from now')
  const row = await db.selectFrom('optin_tokens').selectAll().where('id', '=', ids[1]).executeTakeFirstOrThrow()
  t.match(row, { state: 'available', notification_id: first.notification_id }, 'held in place: still available, named by its holder')
  t.same(row.lease_expires_at, claimed!.lease_expires_at)

  t.equal((await claimFree(db, target(page_id)))?.id, ids[0])
  t.equal(await claimFree(db, target(page_id)), undefined, 'nothing else is usable')
})

t.test('concurrent claims never share a token', async (t) => {
  const { db, page_id, ids } = await seed(Array.from({ length: 5 }, (_, i) => ({ expiresInDays: 10 + i })))
  const claims = await Promise.all(Array.from({ length: 20 }, () => claimToken(db, target(page_id))))
  // A claimer that met a row another one had locked answers busy (it would claim again), never a shared token.
  const got = claims.flatMap((c) => (typeof c === 'object' ? [c.id] : []))
  t.equal(got.length, 5)
  t.same(new Set(got), new Set(ids))
})

t.test('a claim that meets only a row another statement has locked answers busy, not none; once free it claims it (Postgres)', { skip: databaseKind !== 'postgres' && 'PGlite has one connection' }, async (t) => {
  const { db, page_id, ids } = await seed([{ expiresInDays: 10 }, { psid: 'p2', expiresInDays: 10, state: 'used' }])
  const holder = await heldOpen(t, (trx) => sql`select 1 from optin_tokens where page_id = ${page_id} and id = ${ids[0]} for update`.execute(trx))
  t.equal(await claimToken(db, target(page_id)), 'busy', 'the person holds a token, locked for now')
  t.equal(await claimToken(db, target(page_id, { psid: 'p2' })), undefined, 'a person whose only token is spent holds none')
  holder.release()
  await holder.done
  t.equal((await claimFree(db, target(page_id)))?.id, ids[0], 'free again: claimed')
  t.equal(await claimToken(db, target(page_id)), undefined, 'held now: none for another send, not busy')
})

t.test('a claim is a HOT update: no new index entries, whatever the size of the table', async (t) => {
  const { db, page_id, ids } = await seed([{}, {}])
  await db.connection().execute(async (c) => {
    await sql`begin`.execute(c)
    try {
      // The session's counts not yet sent to the statistics collector: compared before and after.
      const counts = async () => (await sql<{ updated: number, hot: number }>`
        select pg_stat_get_xact_tuples_updated('optin_tokens'::regclass)::int as updated,
               pg_stat_get_xact_tuples_hot_updated('optin_tokens'::regclass)::int as hot`.execute(c)).rows[0]
      const before = await counts()
      const claimed = await claimFree(c, target(page_id))
      t.equal(claimed?.id, ids[0])
      const after = await counts()
      t.same({ updated: after.updated - before.updated, hot: after.hot - before.hot }, { updated: 1, hot: 1 },
        'the one row updated was updated HOT')
    } finally {
      await sql`rollback`.execute(c)
    }
  })
})

t.test('a held token is left alone by other claims and by discarding; a hold always has a lease', async (t) => {
  const { db, page_id, ids } = await seed([{}, {}])
  const held = (await claimFree(db, target(page_id)))!
  t.equal(Number(await discardPersonTokens(db, { page_id, payload: 'topic', psid: 'p1' })), 1)
  const rows = await db.selectFrom('optin_tokens').select(['id', 'state']).where('page_id', '=', page_id).orderBy('id').execute()
  t.same(rows, [{ id: held.id, state: 'available' }, { id: ids[1], state: 'discarded' }], 'only the usable token was discarded')
  t.equal(await claimFree(db, target(page_id)), undefined, 'the held token is nobody else\'s')
  const refused = (p: Promise<unknown>) => p.then(() => 'written', (e: { code?: string, constraint?: string }) => ({ code: e.code, constraint: e.constraint }))
  const check = { code: '23514', constraint: 'optin_tokens_lease_check' }
  t.same(await refused(db.updateTable('optin_tokens').set({ lease_expires_at: null }).where('id', '=', held.id).execute()), check,
    'a hold cannot lose its lease')
  t.same(await refused(db.updateTable('optin_tokens').set({ state: 'used' }).where('id', '=', held.id).execute()), check,
    'nor a settled token keep one')
})

t.test('transitions out of a hold name the holder; a stale holder changes nothing', async (t) => {
  const { db, page_id, ids } = await seed([{}, {}, {}, {}])
  const states = async () => (await db.selectFrom('optin_tokens').select(['id', 'state', 'notification_id', 'lease_expires_at'])
    .where('page_id', '=', page_id).orderBy('id').execute())

  const a = target(page_id)
  const claimed = (await claimFree(db, a))!
  const mine = { page_id, token_id: claimed.id, notification_id: a.notification_id }
  const stranger = { page_id, token_id: claimed.id, notification_id: randomUUID() }
  t.equal(await settleToken(db, stranger, 'used'), false, 'another notification cannot spend it')
  t.equal(await settleToken(db, stranger, 'released'), false)
  t.equal(await extendLease(db, mine, 600), true)
  t.equal(await settleToken(db, mine, 'used'), true)
  t.equal(await settleToken(db, mine, 'used'), false, 'only once')
  t.equal(await settleToken(db, mine, 'released'), false, 'a used token is never released')

  const b = target(page_id)
  const second = (await claimFree(db, b))!
  t.equal(await settleToken(db, { page_id, token_id: second.id, notification_id: b.notification_id }, 'released'), true)
  const released = (await states()).find((r) => r.id === second.id)!
  t.match(released, { state: 'available', notification_id: null, lease_expires_at: null })

  const c = target(page_id)
  const third = (await claimFree(db, c))!
  t.equal(third.id, second.id, 'a released token is claimable again')
  t.equal(await settleToken(db, { page_id, token_id: third.id, notification_id: c.notification_id }, 'invalid'), true)
  const d = target(page_id)
  const fourth = (await claimFree(db, d))!
  t.equal(await settleToken(db, { page_id, token_id: fourth.id, notification_id: d.notification_id }, 'unconfirmed'), true)
  t.equal(await extendLease(db, { page_id, token_id: fourth.id, notification_id: d.notification_id }, 60), false, 'no lease on a settled token')

  const final = await states()
  t.same(final.map((r) => r.state), ['used', 'invalid', 'unconfirmed', 'available'])
  t.same(final.map((r) => r.id), ids)
  t.equal(Number(await discardPersonTokens(db, { page_id, payload: 'topic', psid: 'p1' })), 1)
  const { rows } = await sql<{ state: string }>`select state from optin_tokens where id = ${ids[3]}`.execute(db)
  t.equal(rows[0].state, 'discarded')
})

// ---- expiry ----


/** `held`: an available token a send holds (claims.ts). */
async function insertTokens (pageId: string, rows: Array<{ expiresInMs: number, state?: TokenState | 'held' }>): Promise<string[]> {
  const { db } = await testDatabase()
  const inserted = await db.insertInto('optin_tokens').values(rows.map((r, i) => ({
    page_id: pageId, psid: `p${i}`, payload: 'x', token: uniqueToken(),
    opted_in_at: new Date(Date.now() + r.expiresInMs - 365 * DAY),
    expires_at: new Date(Date.now() + r.expiresInMs),
    state: r.state === 'held' ? 'available' as const : r.state ?? 'available',
    ...(r.state === 'held' ? { notification_id: randomUUID(), lease_expires_at: new Date(Date.now() + 60_000) } : {}),
  }))).returning('id').execute()
  return inserted.map((r) => r.id)
}

async function states (pageId: string): Promise<string[]> {
  const { db } = await testDatabase()
  const rows = await db.selectFrom('optin_tokens').select(['state', 'notification_id']).where('page_id', '=', pageId).orderBy('id').execute()
  return rows.map((r) => r.state === 'available' && r.notification_id !== null ? 'held' : r.state)
}

t.test('expireTokens marks only available tokens past their expiry, in batches, once', async (t) => {
  const { db } = await testDatabase()
  await expireTokens(db) // what the claim tests above left past its expiry
  const pageId = uniquePageId()
  await insertTokens(pageId, [
    { expiresInMs: -DAY }, { expiresInMs: -1000 }, { expiresInMs: -2 * DAY }, { expiresInMs: -3 * DAY }, { expiresInMs: -4 * DAY },
    { expiresInMs: DAY },
    { expiresInMs: -DAY, state: 'held' },
    { expiresInMs: -DAY, state: 'used' },
    { expiresInMs: -DAY, state: 'discarded' },
  ])
  t.equal(await expireTokens(db, 2), 5, 'five expired, two at a time')
  t.same(await states(pageId), ['expired', 'expired', 'expired', 'expired', 'expired', 'available', 'held', 'used', 'discarded'])
  t.equal(await expireTokens(db), 0, 'nothing left to do')
})

t.test('the sweep is a maintenance task that runs when the app starts', async (t) => {
  t.ok(maintenanceTasks().some((task) => task.name === 'expire_tokens'))
  const pageId = uniquePageId()
  await insertTokens(pageId, [{ expiresInMs: -DAY }, { expiresInMs: DAY }])
  const app = await build(t)
  await app.ready()
  await app.maintenance() // it runs in the background, once the app is ready
  t.same(await states(pageId), ['expired', 'available'])
})

t.test('every statement on optin_tokens lives in src/domain/token-store/ (issue 25): no other module of src names the table in SQL', async (t) => {
  const { readdirSync, readFileSync } = await import('node:fs')
  const { join } = await import('node:path')
  const root = new URL('../../src/', import.meta.url).pathname
  const files = (readdirSync(root, { recursive: true }) as string[]).filter((f) => f.endsWith('.ts')).map((f) => f.split('\\').join('/'))
  // SQL names a table after these words, and Kysely's builder names it as a string argument.
  const statement = /\b(?:from|join|into|update|table)\s+optin_tokens\b|\(\s*'optin_tokens'/i
  const found = files
    .filter((f) => !f.startsWith('domain/token-store/') && f !== 'db/types.ts')
    .filter((f) => statement.test(readFileSync(join(root, f), 'utf8')))
  t.same(found, [], 'token SQL outside the token store')
  t.ok(files.filter((f) => f.startsWith('domain/token-store/')).every((f) => statement.test(readFileSync(join(root, f), 'utf8')) || f.endsWith('states.ts')),
    'the pattern finds the store\'s own statements (so it can find a stray one)')
})
