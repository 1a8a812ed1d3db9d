/**
 * Notifications as callers see them: what a send request is, how its Idempotency-Key hash is made,
 * and the reads (one, and lists). Sending is send.ts.
 */
import type { Database } from '../db/database.js'
import type { MessagingType, Notification, NotificationStatus, TokenKind } from '../db/types.js'
import { DomainError, notFound } from './errors.js'
import { requestHash } from './idempotency.js'
import { afterCursor, PAGE_SIZE, pageOf } from './pagination.js'
import { getNotificationRow } from './send-steps.js'

export type NotificationType = 'REGULAR' | 'SILENT_PUSH' | 'NO_PUSH'

/** How a window send is labelled for Meta: a proactive UPDATE unless the caller says otherwise. */
export interface Labelling {
  messaging_type?: MessagingType
  /** Required with MESSAGE_TAG, refused otherwise. */
  tag?: string
}

/** Checks a caller's messaging_type and tag together (the schema checks each alone). */
export function checkLabelling (input: Labelling): void {
  if (input.messaging_type === 'MESSAGE_TAG' && input.tag === undefined) {
    throw new DomainError('tag_required', 'messaging_type MESSAGE_TAG needs a tag (for example HUMAN_AGENT).')
  }
  if (input.tag !== undefined && input.messaging_type !== 'MESSAGE_TAG') {
    throw new DomainError('tag_without_message_tag', 'A tag is sent only with messaging_type MESSAGE_TAG.')
  }
}

/** The labelling as hashed: only when it is not the default, so that keys hashed before it existed still match. */
export function labellingOf (input: Labelling): Record<string, unknown> {
  return (input.messaging_type ?? 'UPDATE') !== 'UPDATE' || input.tag !== undefined
    ? { messaging_type: input.messaging_type ?? 'UPDATE', tag: input.tag ?? null }
    : {}
}

export interface NotificationInput extends Labelling {
  topic_id: string
  psid: string
  message: Record<string, unknown>
  notification_type?: NotificationType
  use_window?: boolean
  /** The kind of token the send may use when the window is closed; omitted: any (a recurring token that may send now, else a one-time one). */
  token_kind?: TokenKind
  /** Same key and body: the stored result, nothing sent again. Same key, other body: refused. */
  idempotency_key?: string
  broadcast_id?: string
  /** The name of the API key that asked for the send (the notification's created_by); not part of the request's hash. */
  created_by?: string | null
  /** The Pages the caller may send for (an API key's); a topic of another Page is not found. Null or undefined: every Page. */
  pages?: readonly string[] | null
}

/** The hash an Idempotency-Key stands for: the request with its defaults applied. */
export function notificationHash (input: NotificationInput): string {
  return requestHash({
    topic_id: input.topic_id,
    psid: input.psid,
    message: input.message,
    notification_type: input.notification_type ?? 'REGULAR',
    use_window: input.use_window ?? true,
    ...(input.token_kind !== undefined ? { token_kind: input.token_kind } : {}),
    ...labellingOf(input),
  })
}

export async function getNotification (db: Database, id: string): Promise<Notification> {
  const n = await getNotificationRow(db, id)
  if (!n) throw notFound('notification', id)
  return n
}

export interface NotificationFilter {
  topic_id?: string
  page_id?: string
  psid?: string
  status?: NotificationStatus
  created_after?: string
  created_before?: string
  limit?: number
  cursor?: string
  /** Only notifications of these Pages (a key's); null or undefined: all. */
  pages?: readonly string[] | null
}

/** Oldest first, keyset-paginated: a walk through the pages never skips a row, even while sends go on. */
export async function listNotifications (db: Database, f: NotificationFilter) {
  let q = db.selectFrom('notifications').selectAll().where(afterCursor('notifications', f.cursor))
  if (f.pages) q = q.where('page_id', 'in', f.pages.length > 0 ? [...f.pages] : [''])
  if (f.topic_id !== undefined) q = q.where('topic_id', '=', f.topic_id)
  if (f.page_id !== undefined) q = q.where('page_id', '=', f.page_id)
  if (f.psid !== undefined) q = q.where('psid', '=', f.psid)
  if (f.status !== undefined) q = q.where('status', '=', f.status)
  if (f.created_after !== undefined) q = q.where('created_at', '>=', new Date(f.created_after))
  if (f.created_before !== undefined) q = q.where('created_at', '<', new Date(f.created_before))
  const limit = f.limit ?? PAGE_SIZE
  const rows = await q.orderBy('created_at').orderBy('id').limit(limit + 1).execute()
  return pageOf(rows, limit)
}
