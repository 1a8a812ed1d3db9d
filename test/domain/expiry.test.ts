import t from 'tap'
import { randomUUID } from 'node:crypto'
import type { TokenState } from '../../src/db/types.js'
import { expireTokens } from '../../src/domain/expiry.js'
import { maintenanceTasks } from '../../src/tasks.js'
import { build, testDatabase, uniquePageId } from '../helper.js'
import { uniqueToken } from '../fixtures/webhooks.js'

const DAY = 86_400_000

/** `held`: an available token a send holds (claims.ts). */
async function insert (pageId: string, rows: Array<{ expiresInMs: number, state?: TokenState | 'held' }>): Promise<string[]> {
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
  const pageId = uniquePageId()
  await insert(pageId, [
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
  t.ok(maintenanceTasks.some((task) => task.name === 'expire_tokens'))
  const pageId = uniquePageId()
  await insert(pageId, [{ expiresInMs: -DAY }, { expiresInMs: DAY }])
  const app = await build(t)
  await app.ready()
  t.same(await states(pageId), ['expired', 'available'])
})
