import type { Database } from '../db/database.js'
import type { RecurringFrequency } from '../db/types.js'
import { notFound } from './errors.js'
import { getPage } from './pages.js'
import { NO_EXPIRY } from './lifecycle.js'
import { firstOptinAt, personRecurringTokens, personTokens } from './token-store.js'
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
  recurring: RecurringTokenView[]
}

export interface RecurringTokenView {
  topic_id: string | null
  name: string | null
  payload: string
  token: string
  status: 'active' | 'stopped'
  frequency: RecurringFrequency | null
  timezone: string | null
  expires_at: string | null
  last_sent_at: string | null
  next_send_at: string | null
}

/**
 * The inbox view of one person: window state and usable one-time tokens (masked), grouped under the
 * topic whose payload key they carry; tokens whose payload matches no topic yet are listed apart;
 * and the person's recurring tokens (masked), active or stopped, with their pacing.
 */
export async function getSubscriber (db: Database, pageId: string, psid: string, now: Date = new Date()): Promise<SubscriberView> {
  await getPage(db, pageId)
  const [subscriber, tokens, recurring] = await Promise.all([
    db.selectFrom('subscribers').select(['first_seen_at', 'last_interaction_at'])
      .where('page_id', '=', pageId).where('psid', '=', psid).executeTakeFirst(),
    personTokens(db, pageId, psid),
    personRecurringTokens(db, pageId, psid),
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
    recurring: recurring.map((r) => ({
      topic_id: r.topic_id,
      name: r.topic_name,
      payload: r.payload,
      token: maskToken(r.token),
      status: r.stopped ? 'stopped' : 'active',
      frequency: r.frequency,
      timezone: r.timezone,
      expires_at: r.expires_at.getTime() >= NO_EXPIRY.getTime() ? null : r.expires_at.toISOString(),
      last_sent_at: r.last_sent_at ? r.last_sent_at.toISOString() : null,
      next_send_at: r.next_send_at ? r.next_send_at.toISOString() : null,
    })),
  }
}
