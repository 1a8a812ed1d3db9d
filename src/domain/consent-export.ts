/**
 * Everything the service holds about one person on one Page, as one document to hand over
 * (docs/PRIVACY.md): the subscriber row, every token (masked, any state), the consent history,
 * every notification with its message (unless retention emptied it), every opt-in request. Raw
 * webhook bodies are not part of it: they carry token values; they are kept at most
 * WEBHOOK_BODY_RETENTION_DAYS and erased with the person.
 */
import type { Database } from '../db/database.js'
import { personHistory, type HistoryRow } from './consent-history.js'
import { getPage } from './pages.js'
import { personTokensForExport, type ExportedToken } from './token-store.js'

export interface PersonExport {
  page_id: string
  psid: string
  exported_at: Date
  subscriber: { first_seen_at: Date, last_interaction_at: Date | null } | null
  tokens: ExportedToken[]
  history: HistoryRow[]
  notifications: Array<{
    id: string, topic_id: string | null, status: string, route: string | null, message: Record<string, unknown>, notification_type: string,
    messaging_type: string | null, tag: string | null, graph_message_id: string | null, error: Record<string, unknown> | null,
    token_state: string | null, broadcast_id: string | null, created_at: Date, completed_at: Date | null
  }>
  optin_requests: Array<{
    id: string, topic_id: string, kind: string, title: string, payload: string, status: string, graph_message_id: string | null, created_at: Date
  }>
}

/** History entries read per round trip while exporting. */
const HISTORY_PAGE = 1000

export async function exportPerson (db: Database, subject: Buffer, pageId: string, psid: string): Promise<PersonExport> {
  await getPage(db, pageId)
  const history: HistoryRow[] = []
  let cursor: string | undefined
  do {
    const page = await personHistory(db, pageId, psid, { limit: HISTORY_PAGE, cursor }, subject)
    history.push(...page.items)
    cursor = page.next_cursor ?? undefined
  } while (cursor !== undefined)
  const [subscriber, tokens, notifications, optinRequests] = await Promise.all([
    db.selectFrom('subscribers').select(['first_seen_at', 'last_interaction_at'])
      .where('page_id', '=', pageId).where('psid', '=', psid).executeTakeFirst(),
    personTokensForExport(db, pageId, psid),
    db.selectFrom('notifications')
      .select(['id', 'topic_id', 'status', 'route', 'message', 'notification_type', 'messaging_type', 'tag', 'graph_message_id', 'error',
        'token_state', 'broadcast_id', 'created_at', 'completed_at'])
      .where('page_id', '=', pageId).where('psid', '=', psid).orderBy('created_at').orderBy('id').execute(),
    db.selectFrom('optin_requests').select(['id', 'topic_id', 'kind', 'title', 'payload', 'status', 'graph_message_id', 'created_at'])
      .where('page_id', '=', pageId).where('psid', '=', psid).orderBy('created_at').orderBy('id').execute(),
  ])
  return {
    page_id: pageId, psid, exported_at: new Date(), subscriber: subscriber ?? null, tokens, history, notifications, optin_requests: optinRequests,
  }
}
