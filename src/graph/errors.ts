import type { GraphError } from '../db/types.js'

/**
 * What a Graph API refusal means for us (MESSENGER.md §4). Meta publishes no dedicated code for
 * "this OTN token is used or expired": it answers 100 (or 10/2018278), which is why
 * `token_invalid` is the default for a plain 100 that does not name another parameter.
 */
export type GraphErrorClass =
  | 'temporary'
  | 'rate_limited'
  | 'outside_window'
  | 'person_unavailable'
  | 'topic_stopped'
  | 'page_restricted'
  | 'token_invalid'
  | 'page_token_invalid'
  | 'permission'
  | 'request_invalid'
  | 'unknown'

const TEMPORARY_CODES = new Set([1, 2, 1200])
const RATE_LIMIT_CODES = new Set([4, 17, 32, 341, 613])
const OUTSIDE_WINDOW_SUBCODES = new Set([2018278, 2534022])
// A plain 100 that names one of these is about the request, not the token.
const REQUEST_PARAMS = /\bparam(?:eter)?s?\s+(?:message|messaging_type|notification_type|tag|sender_action)\b/i
const APPSECRET = /appsecret_proof/i

export function classifyGraphError (httpStatus: number, error: GraphError): GraphErrorClass {
  const { code, subcode } = error
  if (code === null) return httpStatus >= 500 ? 'temporary' : 'unknown'
  if (TEMPORARY_CODES.has(code)) return 'temporary'
  if (RATE_LIMIT_CODES.has(code)) return 'rate_limited'
  if (code === 10) {
    if (subcode !== null && OUTSIDE_WINDOW_SUBCODES.has(subcode)) return 'outside_window'
    if (subcode === 2018108) return 'person_unavailable'
    if (subcode === 1893015) return 'topic_stopped'
    if (subcode === 1893063) return 'page_restricted'
    return 'permission'
  }
  if (code === 551 || (code === 200 && subcode === 1545041)) return 'person_unavailable'
  if (code === 368) return 'page_restricted'
  if (code === 190) return 'page_token_invalid'
  if (code >= 200 && code <= 299) return 'permission'
  if (code === 100) {
    if (subcode === 2018001) return 'token_invalid'
    if (subcode !== null) return 'request_invalid'
    if (APPSECRET.test(error.message)) return 'permission'
    if (REQUEST_PARAMS.test(error.message)) return 'request_invalid'
    return 'token_invalid'
  }
  return httpStatus >= 500 ? 'temporary' : 'unknown'
}

export type Route = 'window' | 'token'

/** What to do after Meta refused a send that it did answer. */
export interface Verdict {
  /**
   * Token route: `invalidate` marks the token unusable and tries the person's next one,
   * `stop` marks it unusable and discards the person's other tokens on the topic (they stopped it),
   * `release` gives it back. Window route: `fallback` retries through the token route.
   */
  action: 'invalidate' | 'stop' | 'release' | 'fallback' | 'fail'
  /** The HTTP status answered to the caller when the send ends here. */
  httpStatus: 422 | 429 | 502 | 503
  problemCode: string
  retryAfterSeconds?: number
  /** The Page itself is the problem: recorded on the Page, which then reads back unhealthy. */
  pageUnhealthy: boolean
  detail: string
}

const RATE_LIMIT_RETRY_AFTER_SECONDS = 60
export const TEMPORARY_RETRY_AFTER_SECONDS = 5

export function verdictFor (cls: GraphErrorClass, route: Route): Verdict {
  const keep = route === 'token' ? 'release' : 'fail'
  switch (cls) {
    case 'token_invalid':
      return route === 'token'
        ? { action: 'invalidate', httpStatus: 502, problemCode: 'graph_token_refused', pageUnhealthy: false, detail: 'Meta refused the token.' }
        : { action: 'fail', httpStatus: 502, problemCode: 'graph_recipient_invalid', pageUnhealthy: false, detail: 'Meta does not know this person on this Page.' }
    case 'outside_window':
      return route === 'token'
        ? { action: 'invalidate', httpStatus: 502, problemCode: 'graph_token_refused', pageUnhealthy: false, detail: 'Meta refused the token (outside the allowed window).' }
        : { action: 'fallback', httpStatus: 502, problemCode: 'graph_outside_window', pageUnhealthy: false, detail: 'The standard messaging window is closed.' }
    case 'topic_stopped':
      return { action: route === 'token' ? 'stop' : 'fail', httpStatus: 502, problemCode: 'graph_topic_stopped', pageUnhealthy: false, detail: 'The person stopped notifications on this topic.' }
    case 'temporary':
      return { action: keep, httpStatus: 503, problemCode: 'graph_temporary', retryAfterSeconds: TEMPORARY_RETRY_AFTER_SECONDS, pageUnhealthy: false, detail: 'The Graph API failed temporarily; try again shortly.' }
    case 'rate_limited':
      return { action: keep, httpStatus: 429, problemCode: 'graph_rate_limited', retryAfterSeconds: RATE_LIMIT_RETRY_AFTER_SECONDS, pageUnhealthy: false, detail: 'Meta rate-limited this Page; try again later.' }
    case 'person_unavailable':
      return { action: keep, httpStatus: 502, problemCode: 'graph_person_unavailable', pageUnhealthy: false, detail: 'The person cannot receive messages from this Page right now.' }
    case 'page_restricted':
      return { action: keep, httpStatus: 502, problemCode: 'graph_page_restricted', pageUnhealthy: true, detail: 'Meta restricted this Page.' }
    case 'page_token_invalid':
      return { action: keep, httpStatus: 502, problemCode: 'graph_page_token_invalid', pageUnhealthy: true, detail: 'Meta rejected the Page access token; give the Page a new one.' }
    case 'permission':
      return { action: keep, httpStatus: 502, problemCode: 'graph_permission_missing', pageUnhealthy: true, detail: 'The Page or app lacks a permission Meta requires.' }
    case 'request_invalid':
      return { action: keep, httpStatus: 422, problemCode: 'graph_request_invalid', pageUnhealthy: false, detail: 'Meta refused the message.' }
    case 'unknown':
      return { action: keep, httpStatus: 502, problemCode: 'graph_error', pageUnhealthy: false, detail: 'The Graph API refused the send.' }
  }
}
