import { sql } from 'kysely'
import type { Database } from '../db/database.js'
import type { Page } from '../db/types.js'
import type { GraphError } from '../graph/errors.js'
import { sealSecret } from '../crypto/secret-box.js'
import { DomainError, notFound } from './errors.js'
import { afterCursor, PAGE_SIZE, pageOf } from './pagination.js'
import { timeZone } from './timezones.js'

export interface PageView {
  id: string
  name: string
  has_access_token: boolean
  broadcast_rate_per_second: number | null
  timezone: string
  healthy: boolean
  last_error?: GraphError & { at: string }
  created_at: string
  updated_at: string
}

export function pageView (page: Page): PageView {
  return {
    id: page.id,
    name: page.name,
    has_access_token: page.access_token !== null,
    broadcast_rate_per_second: page.broadcast_rate_per_second,
    timezone: page.timezone,
    healthy: page.healthy,
    ...(page.last_error ? { last_error: page.last_error } : {}),
    created_at: page.created_at.toISOString(),
    updated_at: page.updated_at.toISOString(),
  }
}

/**
 * Registers or updates a Page (its access token stored encrypted, docs/SECURITY.md); a new access token clears the Page's last Graph error. `timezone`
 * (IANA, validated: invalid_timezone) is UTC on a new Page and kept when omitted on an update.
 */
/** `createdBy`: the name of the API key registering it (kept from the first registration). */
export async function upsertPage (db: Database, id: string, input: { name: string, access_token?: string, broadcast_rate_per_second?: number | null, timezone?: string }, createdBy?: string): Promise<{ page: Page, created: boolean }> {
  const zone = input.timezone !== undefined ? await timeZone(db, input.timezone) : undefined
  const row = await db.insertInto('pages')
    .values({ id, name: input.name, access_token: input.access_token === undefined ? null : sealSecret('pages.access_token', input.access_token), broadcast_rate_per_second: input.broadcast_rate_per_second ?? null, ...(zone !== undefined ? { timezone: zone } : {}), created_by: createdBy ?? null })
    .onConflict((oc) => oc.column('id').doUpdateSet((eb) => ({
      name: eb.ref('excluded.name'),
      updated_at: sql`now()`,
      ...(input.broadcast_rate_per_second !== undefined ? { broadcast_rate_per_second: eb.ref('excluded.broadcast_rate_per_second') } : {}),
      ...(zone !== undefined ? { timezone: eb.ref('excluded.timezone') } : {}),
      ...(input.access_token !== undefined
        ? { access_token: eb.ref('excluded.access_token'), healthy: true, last_error: null }
        : {}),
    })))
    .returningAll()
    .returning(sql<boolean>`xmax = 0`.as('inserted'))
    .executeTakeFirstOrThrow()
  const { inserted, ...page } = row
  return { page, created: inserted }
}

export async function getPage (db: Database, id: string): Promise<Page> {
  const page = await db.selectFrom('pages').selectAll().where('id', '=', id).executeTakeFirst()
  if (!page) throw notFound('page', id)
  return page
}

/** `pages`: only these (a key's Pages); null or undefined: all. */
export async function listPages (db: Database, limit: number = PAGE_SIZE, cursor?: string, pages?: readonly string[] | null) {
  let query = db.selectFrom('pages').selectAll().where(afterCursor('pages', cursor))
  if (pages) query = query.where('id', 'in', pages.length > 0 ? [...pages] : [''])
  const rows = await query
    .orderBy('created_at').orderBy('id').limit(limit + 1)
    .execute()
  return pageOf(rows, limit)
}

/** A Page with topics is not deleted: its topics would lose their Page and the tokens their sender. */
export async function deletePage (db: Database, id: string): Promise<void> {
  await db.transaction().execute(async (trx) => {
    const page = await trx.selectFrom('pages').select('id').where('id', '=', id).forUpdate().executeTakeFirst()
    if (!page) throw notFound('page', id)
    const { topics } = await trx.selectFrom('topics').select((eb) => eb.fn.countAll<string>().as('topics'))
      .where('page_id', '=', id).executeTakeFirstOrThrow()
    if (Number(topics) > 0) {
      throw new DomainError('page_has_topics',
        `Page ${id} still has ${topics} topic(s); delete them first.`)
    }
    await trx.deleteFrom('pages').where('id', '=', id).execute()
  })
}

export async function recordPageError (db: Database, id: string, error: GraphError): Promise<void> {
  await db.updateTable('pages')
    .set({ healthy: false, last_error: JSON.stringify({ ...error, at: new Date().toISOString() }), updated_at: sql`now()` })
    .where('id', '=', id).execute()
}

/** Registered Pages by health, for the metrics. */
export async function pageHealth (db: Database): Promise<{ healthy: number, unhealthy: number }> {
  const { rows: [row] } = await sql<{ healthy: number, unhealthy: number }>`
    select count(*) filter (where healthy)::float8 as healthy, count(*) filter (where not healthy)::float8 as unhealthy from pages`.execute(db)
  return row
}
