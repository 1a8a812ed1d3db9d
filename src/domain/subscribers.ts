import type { Database } from '../db/database.js'
import { notFound } from './errors.js'
import { getPage } from './pages.js'
import { firstOptinAt, personTokens } from './token-store.js'
import { maskToken, windowClosesAt, windowIsOpen } from './window.js'

export interface TokenView { id: string, token: string, opted_in_at: string, expires_at: string }

export interface SubscriberView {
  page_id: string
  psid: string
  first_seen_at: string
  last_interaction_at: string | null
  window: { open: boolean, closes_at: string | null }
  topics: Array<{ topic_id: string, name: string, payload: string, usable_tokens: number, tokens: TokenView[] }>
  unmatched_tokens: Array<{ payload: string } & Omit<TokenView, 'id'>>
}

/**
 * The inbox view of one person: window state and usable tokens (masked), grouped under the topic
 * whose payload key they carry; tokens whose payload matches no topic yet are listed apart.
 */
export async function getSubscriber (db: Database, pageId: string, psid: string, now: Date = new Date()): Promise<SubscriberView> {
  await getPage(db, pageId)
  const [subscriber, tokens] = await Promise.all([
    db.selectFrom('subscribers').select(['first_seen_at', 'last_interaction_at'])
      .where('page_id', '=', pageId).where('psid', '=', psid).executeTakeFirst(),
    personTokens(db, pageId, psid),
  ])
  // Ingestion writes a subscriber row with every opt-in; without one (tokens from some other
  // path), the first opt-in is the first sight of the person.
  const firstSeen = subscriber?.first_seen_at ?? await firstOptinAt(db, pageId, psid)
  if (!firstSeen) throw notFound('subscriber', psid)

  const topics = new Map<string, SubscriberView['topics'][number]>()
  const unmatched: SubscriberView['unmatched_tokens'] = []
  for (const t of tokens) {
    const shown = { token: maskToken(t.token), opted_in_at: t.opted_in_at.toISOString(), expires_at: t.expires_at.toISOString() }
    if (t.topic_id === null || t.topic_name === null) {
      unmatched.push({ payload: t.payload, ...shown })
      continue
    }
    const topic = topics.get(t.topic_id) ??
      { topic_id: t.topic_id, name: t.topic_name, payload: t.payload, usable_tokens: 0, tokens: [] }
    topic.tokens.push({ id: String(t.id), ...shown })
    topic.usable_tokens++
    topics.set(t.topic_id, topic)
  }

  const last = subscriber?.last_interaction_at ?? null
  const open = windowIsOpen(last, now)
  return {
    page_id: pageId,
    psid,
    first_seen_at: firstSeen.toISOString(),
    last_interaction_at: last ? last.toISOString() : null,
    window: { open, closes_at: open ? windowClosesAt(last)!.toISOString() : null },
    // In the order of each topic's soonest-expiring token: the one to spend first comes first.
    topics: [...topics.values()],
    unmatched_tokens: unmatched,
  }
}
