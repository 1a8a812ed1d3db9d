/** What Meta answered when it refused, as we keep it (never a token or an access token). */
export interface GraphError {
  code: number | null
  subcode: number | null
  message: string
  fbtrace_id: string | null
}

/**
 * What a Graph API refusal is about (MESSENGER.md §4 and §8). This module only names the cause;
 * what the cause means for a token and for the caller is decided by verdictFor below.
 */
export type GraphErrorClass =
  | 'temporary'
  | 'rate_limited'
  | 'frequency_limited'
  | 'outside_window'
  | 'person_unavailable'
  | 'topic_stopped'
  | 'page_restricted'
  | 'token_invalid'
  | 'message_refused'
  | 'page_token_invalid'
  | 'permission'
  | 'request_invalid'
  | 'unknown'

/** One row of the classification: the first row that matches an error decides its class. */
export interface ClassRule {
  /** Meta's `code` (one, or a list). */
  code: number | readonly number[]
  /** `error_subcode`: a value or list; `null` only when there is none; omitted: any. */
  subcode?: number | readonly number[] | null
  /** Meta's message must match (for causes Meta shares one code between). */
  message?: RegExp
  class: GraphErrorClass
  /** Why, for the documentation (docs/NOTIFICATIONS.md) and the tests. */
  note: string
}

// Meta names the recipient token as used, expired or invalid.
const TOKEN_NAMED = /\b(one_time_notif_token|notification_messages_token)\b|\btoken\b[^.]*\b(used|expired|invalid)\b/i
// The recipient (for a token send: the token) resolves to nobody.
const NO_SUCH_USER = /no matching user|invalid user/i
// A parameter of the request other than the token: the message (or our request) is wrong, not the token.
const PARAM_NAMED = /\bparam(?:eter)?s?\s+(?:\[|")?(?:message|messaging_type|notification_type|tag|sender_action|payload|attachment|recipient)\b|\binvalid (?:tag|message|messaging_type|notification_type)\b/i
// The deployment, not the send: a wrong appsecret_proof, or a token that is not a Page's.
const MISCONFIGURED = /appsecret_proof|missing permissions|does not support this operation/i
// The Page or app lacks something (Meta's wording for permissions, app review and app mode).
const PAGE_LEVEL = /permission|not allowed to|has not been approved|app is (?:not live|in development)|development mode|requires .*(?:capability|review)/i
const PERSON_LEVEL = /isn't receiving messages|not receiving messages|isn't available|is not available|blocked/i
const WINDOW_TEXT = /outside of (?:the )?allowed window/i

export const CLASS_RULES: readonly ClassRule[] = [
  { code: [1, 2, 1200], class: 'temporary', note: 'Meta failed temporarily' },
  { code: 4, subcode: 2018354, class: 'frequency_limited', note: 'the notification frequency limit of a recurring token: not now, for this person only' },
  { code: [4, 17, 32, 341, 613], class: 'rate_limited', note: 'throttled: app, user, Page or Send API rate limits, whatever the subcode' },
  { code: 10, subcode: [2018278, 2018065, 2534022], class: 'outside_window', note: 'outside the allowed window' },
  { code: 10, subcode: 2018108, class: 'person_unavailable', note: 'the person cannot receive messages now' },
  { code: 10, subcode: 1893015, class: 'topic_stopped', note: 'the person stopped this topic' },
  { code: 10, subcode: 1893063, class: 'page_restricted', note: 'the Page is temporarily restricted' },
  { code: 10, subcode: null, message: WINDOW_TEXT, class: 'outside_window', note: 'outside the allowed window, said in words' },
  { code: 10, subcode: null, message: PAGE_LEVEL, class: 'permission', note: 'the app or Page lacks a permission' },
  { code: 10, subcode: null, class: 'person_unavailable', note: 'bare (#10): the person blocked the Page' },
  { code: 10, class: 'permission', note: 'other 10s: a permission the Page or app lacks' },
  { code: 551, class: 'person_unavailable', note: 'the person is not available' },
  { code: 200, subcode: 1545041, class: 'person_unavailable', note: 'the person is not available' },
  { code: 200, subcode: null, message: PERSON_LEVEL, class: 'person_unavailable', note: "(#200) this person isn't receiving messages from you" },
  { code: range(200, 299), class: 'permission', note: 'a permission the Page or app lacks' },
  { code: 368, class: 'page_restricted', note: 'the Page is blocked for a policy' },
  { code: 190, class: 'page_token_invalid', note: 'the Page access token is invalid or expired' },
  { code: 2500, message: /access token/i, class: 'page_token_invalid', note: 'no usable access token was sent' },
  { code: 100, subcode: 2018001, class: 'token_invalid', note: 'no matching user: the recipient does not resolve' },
  { code: 100, message: MISCONFIGURED, class: 'permission', note: 'appsecret_proof or the token\'s object is wrong: the deployment is misconfigured' },
  { code: 100, message: NO_SUCH_USER, class: 'token_invalid', note: 'no matching user, said in words: the recipient does not resolve' },
  { code: 100, message: TOKEN_NAMED, class: 'token_invalid', note: 'Meta names the token as invalid, used or expired' },
  { code: 100, subcode: null, message: PARAM_NAMED, class: 'request_invalid', note: 'Meta names a parameter of the message' },
  { code: 100, subcode: null, class: 'message_refused', note: 'bare (#100) Invalid parameter: the message or the token, Meta does not say' },
  { code: 100, class: 'request_invalid', note: 'other 100s with a subcode: a parameter' },
]

function range (from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i)
}

const matches = (want: number | readonly number[], value: number): boolean =>
  typeof want === 'number' ? want === value : want.includes(value)

/** The rule that decides `error` (undefined: no row; then the HTTP status decides). */
export function ruleFor (error: GraphError): ClassRule | undefined {
  const { code, subcode } = error
  if (code === null) return undefined
  return CLASS_RULES.find((r) => {
    if (!matches(r.code, code)) return false
    if (r.subcode === null && subcode !== null) return false
    if (r.subcode !== undefined && r.subcode !== null && (subcode === null || !matches(r.subcode, subcode))) return false
    return r.message === undefined || r.message.test(error.message)
  })
}

export function classifyGraphError (httpStatus: number, error: GraphError): GraphErrorClass {
  return ruleFor(error)?.class ?? (httpStatus >= 500 ? 'temporary' : 'unknown')
}
