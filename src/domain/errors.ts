import type { GraphError } from '../graph/errors.js'

/**
 * Every code the domain answers a caller with, in the domain's words (no HTTP here: the HTTP
 * layer's catalogue, src/plugins/errors.ts, gives each its status). Grouped by what a caller does.
 */
export const DOMAIN_CODES = [
  // the request names something that does not exist
  'topic_not_found', 'page_not_found', 'notification_not_found', 'broadcast_not_found', 'subscriber_not_found',
  'event_subscription_not_found', 'event_not_found',
  // the request is malformed in a way the schema cannot say
  'invalid_webhook_body', 'invalid_payload', 'invalid_cursor', 'empty_update', 'tag_required', 'tag_without_message_tag',
  'invalid_timezone', 'audience_range_empty', 'audience_with_psids', 'audience_topic_not_found',
  // an event subscription's url (docs/EVENTS.md)
  'event_url_invalid', 'event_url_not_https', 'event_url_private_address',
  // the state of things refuses it
  'page_without_access_token', 'window_closed', 'topic_name_taken', 'topic_payload_taken', 'topic_has_tokens', 'page_has_topics',
  'broadcast_completed', 'event_subscription_disabled', 'no_token', 'idempotency_in_progress', 'idempotency_conflict', 'webhook_not_configured',
  // a Page access token no configured encryption key can read (docs/SECURITY.md): nothing is sent with it
  'page_token_unreadable',
  // a stored opt-in token no configured encryption key can read (docs/SECURITY.md): nothing is sent with it, it is kept
  'token_unreadable',
  // a person's token locked by another statement (a key rotation batch) through a send's every try: nothing spent, try again
  'token_busy',
  // we hold back, or Meta did
  'optin_request_throttled', 'graph_rate_limited', 'recurring_cooldown', 'graph_frequency_limited',
  // Meta's rule for recurring opt-in requests: one per title, person and week
  'recurring_optin_weekly_limit',
  // Meta refused (the message, the person, the Page or the token)
  'graph_request_invalid', 'graph_message_refused', 'graph_token_refused', 'graph_recipient_invalid', 'graph_topic_stopped',
  'graph_person_unavailable', 'graph_page_restricted', 'graph_page_token_invalid', 'graph_permission_missing',
  'graph_optin_restricted', 'graph_error',
  // Meta could not be reached or did not answer
  'graph_temporary', 'graph_unreachable', 'graph_unconfirmed',
] as const
export type DomainCode = (typeof DOMAIN_CODES)[number]

export interface DomainErrorExtra {
  retryAfterSeconds?: number
  graph?: GraphError
  [key: string]: unknown
}

export class DomainError extends Error {
  constructor (
    public readonly code: DomainCode,
    message: string,
    public readonly extra: DomainErrorExtra = {},
  ) {
    super(message)
    this.name = 'DomainError'
  }
}

type Findable = 'topic' | 'page' | 'notification' | 'broadcast' | 'subscriber' | 'event_subscription' | 'event'

export const notFound = (what: Findable, id: string): DomainError =>
  new DomainError(`${what}_not_found`, `No ${what.replace('_', ' ')} with id ${id}.`)

/** Postgres unique violation, the same code on pg and PGlite. */
export function uniqueViolation (error: unknown): string | undefined {
  const e = error as { code?: string, constraint?: string }
  if (e?.code !== '23505') return undefined
  return e.constraint ?? ''
}
