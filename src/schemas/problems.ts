import type { DomainCode } from '../domain/errors.js'

/** Codes only the HTTP layer answers with (authentication, parsing, routing, the server itself). */
type HttpCode =
  | 'unauthorized' | 'verification_failed' | 'invalid_signature' | 'validation_failed' | 'route_not_found' | 'bad_request' | 'bad_url'
  | 'path_parameter_too_long' | 'body_too_large' | 'unsupported_media_type' | 'invalid_content_length' | 'invalid_json'
  | 'invalid_characters' | 'invalid_value' | 'value_too_long' | 'database_unavailable' | 'migrations_pending' | 'internal_error'
  | 'body_too_deep' | 'request_timeout' | 'headers_too_large' | 'malformed_request' | 'forbidden'

export type ProblemCode = DomainCode | HttpCode

export interface ProblemKind {
  status: number
  /** Trying again later may succeed, without changing the request (a Retry-After says when). */
  retryable: boolean
}

const problem = (status: number, retryable = false): ProblemKind => ({ status, retryable })

/**
 * The error catalogue: every code a caller can get, with its HTTP status, in one place. The
 * domain raises codes; this gives them statuses (also for the status a recorded notification is
 * replayed with). TypeScript holds it complete.
 */
export const PROBLEMS: Record<ProblemCode, ProblemKind> = {
  topic_not_found: problem(404), page_not_found: problem(404), notification_not_found: problem(404),
  broadcast_not_found: problem(404), subscriber_not_found: problem(404), route_not_found: problem(404),
  event_subscription_not_found: problem(404), event_not_found: problem(404),
  event_url_invalid: problem(400), event_url_not_https: problem(400), event_url_private_address: problem(400),
  event_subscription_disabled: problem(409),
  invalid_webhook_body: problem(400), invalid_payload: problem(400), invalid_cursor: problem(400), empty_update: problem(400),
  tag_required: problem(400), tag_without_message_tag: problem(400), validation_failed: problem(400), bad_request: problem(400),
  bad_url: problem(400), invalid_content_length: problem(400), invalid_json: problem(400), invalid_characters: problem(400),
  invalid_value: problem(400), value_too_long: problem(400), body_too_deep: problem(400), malformed_request: problem(400),
  invalid_timezone: problem(400), audience_range_empty: problem(400), audience_with_psids: problem(400),
  request_timeout: problem(408, true), headers_too_large: problem(431),
  unauthorized: problem(401), invalid_signature: problem(401), verification_failed: problem(403), forbidden: problem(403),
  page_without_access_token: problem(409), window_closed: problem(409), topic_name_taken: problem(409),
  topic_payload_taken: problem(409), topic_has_tokens: problem(409), page_has_topics: problem(409), broadcast_completed: problem(409),
  no_token: problem(409), idempotency_in_progress: problem(409, true),
  path_parameter_too_long: problem(414), body_too_large: problem(413), unsupported_media_type: problem(415),
  idempotency_conflict: problem(422), audience_topic_not_found: problem(422), graph_request_invalid: problem(422), graph_message_refused: problem(422),
  optin_request_throttled: problem(429, true), graph_rate_limited: problem(429, true),
  recurring_cooldown: problem(429, true), graph_frequency_limited: problem(429, true), recurring_optin_weekly_limit: problem(429, true),
  graph_token_refused: problem(502), graph_recipient_invalid: problem(502), graph_topic_stopped: problem(502),
  graph_person_unavailable: problem(502), graph_page_restricted: problem(502), graph_page_token_invalid: problem(502),
  graph_permission_missing: problem(502), graph_optin_restricted: problem(502), graph_error: problem(502),
  webhook_not_configured: problem(503), graph_temporary: problem(503, true), graph_unreachable: problem(503, true), token_busy: problem(503, true),
  database_unavailable: problem(503, true), migrations_pending: problem(503, true),
  graph_unconfirmed: problem(504),
  internal_error: problem(500), page_token_unreadable: problem(500), token_unreadable: problem(500),
}

/** The status a code is answered with (an unknown code, from a row written by an older build: 502). */
export function statusOf (code: string): number {
  return (PROBLEMS as Record<string, ProblemKind | undefined>)[code]?.status ?? 502
}
