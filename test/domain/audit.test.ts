import t from 'tap'
import { sql } from 'kysely'
import { listAudit, recordAudit, removeOldAuditEntries } from '../../src/domain/audit.js'
import { maintenanceTasks } from '../../src/tasks.js'
import { testDatabase, uniquePageId } from '../helper.js'

const DAY = 24 * 60 * 60 * 1000

/** One entry per age (days ago), on its own Page, by key `name`. */
async function entries (ages: number[], name = 'ops') {
  const { db } = await testDatabase()
  const pageId = uniquePageId()
  for (const age of ages) {
    await recordAudit(db, {
      key_name: name, method: 'POST', route: '/v1/topics', page_id: pageId, resource_id: null, status: 201, request_id: `r${age}`,
      at: new Date(Date.now() - age * DAY),
    })
  }
  return { db, pageId }
}

const agesOf = async (pageId: string): Promise<number[]> => {
  const { db } = await testDatabase()
  const { rows } = await sql<{ age: number }>`
    select floor(extract(epoch from now() - created_at) / 86400)::int as age from audit_log where page_id = ${pageId} order by age`.execute(db)
  return rows.map((r) => r.age)
}

t.test('entries older than AUDIT_RETENTION_DAYS are removed in batches, oldest first; 0 keeps them forever', async (t) => {
  const { db, pageId } = await entries([400, 366, 370, 364, 1])
  t.equal(await removeOldAuditEntries(db, 0), 0, '0 keeps forever')
  t.same(await agesOf(pageId), [1, 364, 366, 370, 400])
  t.equal(await removeOldAuditEntries(db, 365, 2), 3, 'three entries, in batches of two')
  t.same(await agesOf(pageId), [1, 364])
  t.equal(await removeOldAuditEntries(db, 365, 2), 0, 'nothing left to do')
  t.ok(maintenanceTasks().some((task) => task.name === 'remove_old_audit_entries'), 'the maintenance job runs it')
})

t.test('the listing: oldest first, by key, Page and time, page by page; an entry without a Page is kept under an empty page_id', async (t) => {
  const a = await entries([3, 2, 1], 'shop-a')
  const b = await entries([2], 'shop-b')
  const { db } = a
  await recordAudit(db, { key_name: 'shop-a', method: 'DELETE', route: '/v1/topics/:id', page_id: null, resource_id: 'x', status: 404, request_id: null, at: new Date() })
  const byKey = await listAudit(db, { key_name: 'shop-a', since: new Date(Date.now() - 4 * DAY).toISOString() })
  t.same(byKey.items.map((e) => [e.request_id, e.page_id]), [['r3', a.pageId], ['r2', a.pageId], ['r1', a.pageId], [null, '']])
  const byPage = await listAudit(db, { page_id: b.pageId })
  t.same(byPage.items.map((e) => e.key_name), ['shop-b'])
  const window = await listAudit(db, { page_id: a.pageId, since: new Date(Date.now() - 2.5 * DAY).toISOString(), until: new Date(Date.now() - 0.5 * DAY).toISOString() })
  t.same(window.items.map((e) => e.request_id), ['r2', 'r1'], 'since is inclusive, until exclusive')
  const first = await listAudit(db, { page_id: a.pageId, limit: 2 })
  t.type(first.next_cursor, 'string')
  const second = await listAudit(db, { page_id: a.pageId, limit: 2, cursor: first.next_cursor! })
  t.same([...first.items, ...second.items].map((e) => e.request_id), ['r3', 'r2', 'r1'])
  t.equal(second.next_cursor, null)
  await t.rejects(listAudit(db, { cursor: 'forged' }), { code: 'invalid_cursor' })
})

t.test('a batch of entries is one write that keeps each entry as given', async (t) => {
  const { db } = await testDatabase()
  const pageId = uniquePageId()
  const at = new Date(Date.now() - 3 * DAY)
  await recordAudit(db,
    { key_name: 'batch-a', method: 'POST', route: '/v1/notifications', page_id: pageId, resource_id: 'n-1', status: 201, request_id: 'b1', at },
    { key_name: 'batch-b', method: 'PUT', route: '/v1/pages/:pageId', page_id: null, resource_id: null, status: 400, request_id: null, at: new Date(at.getTime() + 1500) },
    { key_name: 'batch-a', method: 'DELETE', route: '/v1/topics/:id', page_id: pageId, resource_id: null, status: 204, request_id: 'b3', at: new Date(at.getTime() + 3000) })
  const { rows } = await sql<{ key_name: string, method: string, route: string, page_id: string, resource_id: string | null, status: number, request_id: string | null, created_at: Date }>`
    select key_name, method, route, page_id, resource_id, status, request_id, created_at from audit_log
     where key_name in ('batch-a', 'batch-b') and created_at >= ${at} order by created_at`.execute(db)
  t.same(rows.map(({ created_at: c, ...r }) => ({ ...r, after: c.getTime() - at.getTime() })), [
    { key_name: 'batch-a', method: 'POST', route: '/v1/notifications', page_id: pageId, resource_id: 'n-1', status: 201, request_id: 'b1', after: 0 },
    { key_name: 'batch-b', method: 'PUT', route: '/v1/pages/:pageId', page_id: '', resource_id: null, status: 400, request_id: null, after: 1500 },
    { key_name: 'batch-a', method: 'DELETE', route: '/v1/topics/:id', page_id: pageId, resource_id: null, status: 204, request_id: 'b3', after: 3000 },
  ], 'every column, a missing Page as the empty page_id, each entry its own time')
})
