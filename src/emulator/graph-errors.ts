import { randomBase64url } from './random.js'

export interface GraphError {
  status: number
  code: number
  subcode?: number
  type: string
  message: string
}

export interface GraphErrorBody {
  error: {
    message: string
    type: string
    code: number
    error_subcode?: number
    is_transient?: boolean
    fbtrace_id: string
  }
}

const TRANSIENT_CODES = new Set([1, 2, 4, 17, 32, 341, 613])

export function fbtraceId(): string {
  return 'A' + randomBase64url(16)
}

export function graphErrorBody(e: GraphError): GraphErrorBody {
  return {
    error: {
      message: e.message,
      type: e.type,
      code: e.code,
      ...(e.subcode !== undefined ? { error_subcode: e.subcode } : {}),
      ...(TRANSIENT_CODES.has(e.code) ? { is_transient: true } : {}),
      fbtrace_id: fbtraceId(),
    },
  }
}

export function customError(spec: { status?: number; code: number; subcode?: number; message?: string }): GraphError {
  const serverSide = spec.code === 1 || spec.code === 2
  return {
    status: spec.status ?? (serverSide ? 500 : 400),
    code: spec.code,
    subcode: spec.subcode,
    type: 'OAuthException',
    message: spec.message ?? (serverSide ? defaultServerMessage(spec.code) : `(#${spec.code}) Emulated error`),
  }
}

function defaultServerMessage(code: number): string {
  return code === 1 ? 'An unknown error occurred' : 'Service temporarily unavailable'
}

const oauth = (code: number, message: string, subcode?: number): GraphError => ({
  status: 400,
  code,
  subcode,
  type: 'OAuthException',
  message,
})

export const errors = {
  invalidAccessToken: () => oauth(190, 'Invalid OAuth access token - Cannot parse access token'),
  pageMismatch: () => oauth(200, '(#200) Requires pages_messaging permission to manage the object'),
  proofMissing: (): GraphError => ({
    status: 400,
    code: 100,
    type: 'GraphMethodException',
    message: 'API calls from the server require an appsecret_proof argument',
  }),
  proofInvalid: (): GraphError => ({
    status: 400,
    code: 100,
    type: 'GraphMethodException',
    message: 'Invalid appsecret_proof provided in the API argument',
  }),
  param: (message: string) => oauth(100, `(#100) ${message}`),
  /** Meta's bare answer to a parameter it dislikes (or a token it refuses): no subcode, nothing named. */
  invalidParameter: () => oauth(100, '(#100) Invalid parameter'),
  noMatchingUser: () => oauth(100, '(#100) No matching user found', 2018001),
  outsideWindow: () => oauth(10, '(#10) This message is sent outside of allowed window.', 2018278),
  invalidOtnToken: () => oauth(100, '(#100) The parameter one_time_notif_token is invalid'),
  invalidRecurringToken: () => oauth(100, '(#100) The parameter notification_messages_token is invalid'),
  /** Meta's error-code table words 4/2018354 this way ("Marketing Messages – There has to be a minimum delay…"). */
  recurringFrequencyLimit: () =>
    oauth(4, '(#4) There has to be a minimum delay between 2 notifications for the given notification', 2018354),
  /** Meta publishes the code (10/1893015) but no text; this is the wording docs/NOTIFICATIONS.md uses. */
  recurringStopped: () => oauth(10, '(#10) The person stopped notifications on this topic.', 1893015),
  personUnavailable: () => oauth(551, "(#551) This person isn't available right now.", 1545041),
  personNotReceiving: () => oauth(200, "(#200) This person isn't receiving messages from you right now."),
  personBlocked: () => oauth(10, "(#10) This person isn't available right now."),
  rateLimited: () => oauth(613, '(#613) Calls to this api have exceeded the rate limit.'),
  optinRequestRepeated: () =>
    oauth(613, '(#613) A one-time notification request on this topic was sent to this person recently.', 1893016),
  unknownPath: (path: string) => oauth(2500, `Unknown path components: ${path}`),
  serviceUnavailable: () => customError({ code: 2 }),
}
