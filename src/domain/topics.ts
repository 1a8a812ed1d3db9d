import { randomBytes } from 'node:crypto'
import { sql } from 'kysely'
import type { Database } from '../db/database.js'
import type { Topic } from '../db/types.js'
import { DomainError, notFound, uniqueViolation } from './errors.js'
import { isPayload, PAYLOAD_MAX_BYTES, PAYLOAD_MAX_CHARS } from './ids.js'
import { getPage } from './pages.js'
import { afterCursor, PAGE_SIZE, pageOf } from './pagination.js'
import { topicCounts, topicTokens, type TopicCounts } from './token-store.js'

export type { TopicCounts }

const TITLE_MAX = 65
const EXPIRING_SOON = sql`interval '7 days'`

export type TopicWithCounts = Topic & TopicCounts

export interface TopicView {
  id: string
  page_id: string
  name: string
  title: string
  payload: string
  counts: {
    usable_tokens: number
    subscribers: number
    expiring_soon: number
    recurring: { active: number, stopped: number }
  }
  created_at: string
  updated_at: string
}

export function topicView (t: TopicWithCounts): TopicView {
  return {
    id: t.id,
    page_id: t.page_id,
    name: t.name,
    title: t.title,
    payload: t.payload,
    counts: {
      usable_tokens: t.usable_tokens,
      subscribers: t.subscribers,
      expiring_soon: t.expiring_soon,
      recurring: { active: t.recurring_active, stopped: t.recurring_stopped },
    },
    created_at: t.created_at.toISOString(),
    updated_at: t.updated_at.toISOString(),
  }
}

function withCounts (db: Database) {
  return db.selectFrom('topics')
    .selectAll('topics')
    .select(sql<number>`c.usable_tokens`.as('usable_tokens'))
    .select(sql<number>`c.subscribers`.as('subscribers'))
    .select(sql<number>`c.expiring_soon`.as('expiring_soon'))
    .select(sql<number>`c.recurring_active`.as('recurring_active'))
    .select(sql<number>`c.recurring_stopped`.as('recurring_stopped'))
    .innerJoin(topicCounts('topics', EXPIRING_SOON).as('c'), (join) => join.onTrue())
}

function conflictFrom (error: unknown, name: string, payload?: string): never {
  const constraint = uniqueViolation(error)
  if (constraint === 'topics_page_name_key') {
    throw new DomainError('topic_name_taken', `This Page already has a topic named "${name}" (names ignore case).`)
  }
  if (constraint === 'topics_page_payload_key') {
    throw new DomainError('topic_payload_taken', `This Page already has a topic with payload "${payload}".`)
  }
  throw error
}

function defaultTitle (name: string): string {
  return name.slice(0, TITLE_MAX)
}

/** `createdBy`: the name of the API key creating it. */
export async function createTopic (db: Database, input: { page_id: string, name: string, title?: string, payload?: string }, createdBy?: string): Promise<TopicWithCounts> {
  if (input.payload !== undefined && !isPayload(input.payload)) {
    throw new DomainError('invalid_payload',
      `A payload is 1 to ${PAYLOAD_MAX_CHARS} characters and at most ${PAYLOAD_MAX_BYTES} bytes in UTF-8.`)
  }
  await getPage(db, input.page_id)
  const payload = input.payload ?? `otn_${randomBytes(9).toString('base64url')}`
  try {
    const { id } = await db.insertInto('topics').values({
      page_id: input.page_id,
      name: input.name,
      title: input.title ?? defaultTitle(input.name),
      payload,
      created_by: createdBy ?? null,
    }).returning('id').executeTakeFirstOrThrow()
    return await getTopic(db, id)
  } catch (error) {
    return conflictFrom(error, input.name, payload)
  }
}

export async function getTopic (db: Database, id: string): Promise<TopicWithCounts> {
  const topic = await withCounts(db).where('topics.id', '=', id).executeTakeFirst()
  if (!topic) throw notFound('topic', id)
  return topic
}

/** `pages`: only topics of these Pages (a key's); null or undefined: all. */
export interface TopicFilter { page_id?: string, name?: string, limit?: number, cursor?: string, pages?: readonly string[] | null }

export async function listTopics (db: Database, filter: TopicFilter) {
  let query = withCounts(db).where(afterCursor('topics', filter.cursor))
  if (filter.page_id !== undefined) query = query.where('topics.page_id', '=', filter.page_id)
  if (filter.pages) query = query.where('topics.page_id', 'in', filter.pages.length > 0 ? [...filter.pages] : [''])
  if (filter.name !== undefined) query = query.where(sql`lower(topics.name)`, '=', filter.name.toLowerCase())
  const limit = filter.limit ?? PAGE_SIZE
  const rows = await query.orderBy('topics.created_at').orderBy('topics.id').limit(limit + 1).execute()
  return pageOf(rows, limit)
}

/** Rename or retitle; the id and payload key never change, so tokens already given stay with the topic. */
export async function updateTopic (db: Database, id: string, input: { name?: string, title?: string }): Promise<TopicWithCounts> {
  if (input.name === undefined && input.title === undefined) {
    throw new DomainError('empty_update', 'Give name or title (or both).')
  }
  try {
    const row = await db.updateTable('topics')
      .set({ ...input, updated_at: sql`now()` })
      .where('id', '=', id).returning('id').executeTakeFirst()
    if (!row) throw notFound('topic', id)
  } catch (error) {
    conflictFrom(error, input.name ?? '')
  }
  return getTopic(db, id)
}

/**
 * Refuses while the topic holds usable tokens, unless forced: then those tokens are discarded
 * (never silently dropped: the count is returned). Tokens already spent keep their history.
 */
export async function deleteTopic (db: Database, id: string, force: boolean): Promise<{ discarded_tokens: number }> {
  return db.transaction().execute(async (trx) => {
    const topic = await trx.selectFrom('topics').selectAll().where('id', '=', id).forUpdate().executeTakeFirst()
    if (!topic) throw notFound('topic', id)
    let discarded = 0
    if (force) {
      discarded = await topicTokens(trx, topic, true)
    } else {
      const n = await topicTokens(trx, topic, false)
      if (n > 0) {
        throw new DomainError('topic_has_tokens',
          `Topic ${id} still holds ${n} usable token(s); delete with ?force=true to discard them.`,
          { usable_tokens: Number(n) })
      }
    }
    await trx.deleteFrom('topics').where('page_id', '=', topic.page_id).where('id', '=', id).execute()
    return { discarded_tokens: discarded }
  })
}
