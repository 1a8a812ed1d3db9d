import { createHmac } from 'node:crypto'
import { Pool } from 'undici'
import type { GraphError } from './errors.js'

export interface GraphClientOptions {
  /** Origin only, e.g. https://graph.facebook.com. */
  baseUrl: string
  /** Pinned version, e.g. v26.0. */
  version: string
  /** When set, every call carries appsecret_proof. */
  appSecret?: string
  /** Longest wait for a whole answer (headers and body) before the attempt counts as unanswered. */
  timeoutMs: number
  connectTimeoutMs: number
  /**
   * Sockets to the Graph API, hence Send API calls in flight at once (default 512). A call made
   * while all are busy waits in this process for one, up to `timeoutMs`, and then has `timeoutMs`
   * for its exchange; if none comes free in time it ends as `no_answer` with reason `busy` and
   * `sent: false`: nothing left this process.
   */
  connections?: number
  /**
   * Told once per version when Meta answers from another version than `version` (its
   * `facebook-api-version` header): a retired version is served by the oldest one still available.
   */
  onServedVersion?: (served: string) => void
}

export interface PageCredentials {
  id: string
  accessToken: string
}

/**
 * One attempt's outcome. `no_answer` is the ambiguous one: Meta may or may not have acted on the
 * request, except when `sent` is false (the connection was never made, so nothing left us).
 */
export type SendOutcome =
  | { kind: 'ok', httpStatus: number, messageId: string | null, recipientId: string | null }
  | { kind: 'graph_error', httpStatus: number, error: GraphError }
  | { kind: 'no_answer', reason: 'timeout' | 'connection_lost' | 'unreachable' | 'busy', sent: boolean, detail: string }

export interface GraphClient {
  sendMessage (page: PageCredentials, body: Record<string, unknown>): Promise<SendOutcome>
  close (): Promise<void>
  /** Calls holding a connection, and calls waiting for one (every connection busy). */
  load? (): { active: number, waiting: number }
}

export function appsecretProof (accessToken: string, appSecret: string): string {
  return createHmac('sha256', appSecret).update(accessToken).digest('hex')
}

// Errors raised before a connection existed (or on a closed client): the request never left this process.
const NOT_SENT = new Set(['UND_ERR_CLOSED', 'ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT'])
const TIMEOUTS = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_ABORTED', 'ABORT_ERR'])

function noAnswer (error: unknown): SendOutcome & { kind: 'no_answer' } {
  const e = error as { code?: string, name?: string, message?: string, cause?: { code?: string } }
  const code = e?.code ?? e?.cause?.code ?? ''
  // Only the code and name: undici messages are safe, but nothing from the URL is ever repeated.
  const detail = [e?.name, code].filter(Boolean).join(' ') || 'request failed'
  if (NOT_SENT.has(code)) return { kind: 'no_answer', reason: 'unreachable', sent: false, detail }
  if (TIMEOUTS.has(code) || e?.name === 'TimeoutError' || e?.name === 'AbortError') {
    return { kind: 'no_answer', reason: 'timeout', sent: true, detail }
  }
  return { kind: 'no_answer', reason: 'connection_lost', sent: true, detail }
}

function int (value: unknown): number | null {
  if (typeof value === 'number') return Number.isInteger(value) ? value : null
  return typeof value === 'string' && /^\d{1,15}$/.test(value) ? Number(value) : null
}

/** Meta's `{error: {message, code, error_subcode, fbtrace_id}}`, or what we can say when the body is not that. */
export function parseGraphError (httpStatus: number, text: string): GraphError {
  try {
    const body = JSON.parse(text) as { error?: Record<string, unknown> }
    const e = body?.error
    if (e && typeof e === 'object') {
      const message = typeof e.message === 'string' ? e.message : `HTTP ${httpStatus}`
      // Older answers put the cause beside a generic message: "Invalid parameter" + "No matching user found."
      const data = typeof e.error_data === 'string' && e.error_data !== '' ? ` (${e.error_data})` : ''
      return {
        code: int(e.code),
        subcode: int(e.error_subcode),
        message: `${message}${data}`.slice(0, 1000),
        fbtrace_id: typeof e.fbtrace_id === 'string' ? e.fbtrace_id : null,
      }
    }
  } catch {}
  return { code: null, subcode: null, message: `HTTP ${httpStatus} without a Graph error body`, fbtrace_id: null }
}

/**
 * The Send API over keep-alive undici Pools, one per origin. Tokens travel only in the query
 * string and the body, and neither is ever logged or put into an error.
 *
 * `connections` (GRAPH_API_CONNECTIONS) bounds the calls in flight, and a call waits for one in a
 * queue of our own, bounded by its timeout, so that a call that got no connection is known not to
 * have left. It pays: with Meta answering in 100 ms, 512 connections sent 2,966 notifications/s
 * where undici's fixed 128 sent 1,113 (2026-11-22, 512 callers).
 */
export function createGraphClient (options: GraphClientOptions): GraphClient {
  const connections = options.connections ?? 512
  const pools = new Map<string, Pool>()
  const poolFor = (origin: string): Pool => {
    let pool = pools.get(origin)
    if (!pool) {
      pool = new Pool(origin, {
        connections,
        connect: { timeout: options.connectTimeoutMs },
        // undici's own timers are coarse (about a second); the abort signal below is the precise bound.
        headersTimeout: options.timeoutMs,
        bodyTimeout: options.timeoutMs,
        keepAliveTimeout: 30_000,
        keepAliveMaxTimeout: 600_000,
      })
      pools.set(origin, pool)
    }
    return pool
  }
  const origin = new URL(options.baseUrl).origin
  const path = `/${options.version}/me/messages`
  const reportedVersions = new Set<string>()
  // appsecret_proof depends only on the Page's access token: computed once per token, not per send.
  const proofs = new Map<string, string>()
  const proofFor = (accessToken: string, appSecret: string): string => {
    let proof = proofs.get(accessToken)
    if (proof === undefined) {
      if (proofs.size >= 10_000) proofs.clear()
      proof = appsecretProof(accessToken, appSecret)
      proofs.set(accessToken, proof)
    }
    return proof
  }

  // Calls in flight, and those waiting for one of the sockets, first come first served. undici would
  // queue them too, but its wait would count towards the exchange's timeout, and a call aborted in
  // its queue cannot be told from one aborted on the wire, where it may have reached Meta. Here the
  // wait is ours: bounded on its own, and known to have sent nothing.
  let active = 0
  const waiting: Array<{ grant: () => void }> = []
  const release = () => {
    const next = waiting.shift()
    if (next) next.grant()
    else active--
  }
  /** True with a socket's turn taken (at once, or within `timeoutMs`); false when none came free in time. */
  const turn = (): true | Promise<boolean> => {
    if (active < connections) {
      active++
      return true
    }
    return new Promise((resolve) => {
      const entry = {
        grant: () => {
          clearTimeout(timer)
          resolve(true)
        },
      }
      const timer = setTimeout(() => {
        waiting.splice(waiting.indexOf(entry), 1)
        resolve(false)
      }, options.timeoutMs)
      waiting.push(entry)
    })
  }

  return {
    async sendMessage (page, body) {
      const query = new URLSearchParams({ access_token: page.accessToken })
      if (options.appSecret) query.set('appsecret_proof', proofFor(page.accessToken, options.appSecret))
      const mine = turn()
      if (mine !== true && !(await mine)) {
        return { kind: 'no_answer', reason: 'busy', sent: false, detail: `all ${connections} connections to the Graph API stayed busy` }
      }
      // The precise bound on the whole exchange. A timer cleared when the answer is in, not
      // AbortSignal.timeout: that one fires for every request once its time is up, answered or not
      // (a DOMException and an abort event per send, seconds later, 3-4% of the process's CPU).
      const abort = new AbortController()
      const timer = setTimeout(() => abort.abort(new DOMException('The Graph API did not answer in time', 'TimeoutError')), options.timeoutMs)
      try {
        const response = await poolFor(origin).request({
          method: 'POST',
          path: `${path}?${query}`,
          headers: { 'content-type': 'application/json', accept: 'application/json' },
          body: JSON.stringify(body),
          signal: abort.signal,
        })
        const text = await response.body.text()
        const status = response.statusCode
        const served = response.headers['facebook-api-version']
        if (typeof served === 'string' && served !== options.version && !reportedVersions.has(served)) {
          reportedVersions.add(served)
          options.onServedVersion?.(served)
        }
        if (status >= 200 && status < 300) {
          let parsed: { message_id?: unknown, recipient_id?: unknown, error?: unknown } = {}
          try { parsed = JSON.parse(text) ?? {} } catch {}
          // Meta has answered some refusals with 200 and an error body: nothing was sent.
          if (typeof parsed.error === 'object' && parsed.error !== null) {
            return { kind: 'graph_error', httpStatus: status, error: parseGraphError(status, text) }
          }
          return {
            kind: 'ok',
            httpStatus: status,
            messageId: typeof parsed.message_id === 'string' ? parsed.message_id : null,
            recipientId: typeof parsed.recipient_id === 'string' ? parsed.recipient_id : null,
          }
        }
        return { kind: 'graph_error', httpStatus: status, error: parseGraphError(status, text) }
      } catch (error) {
        return noAnswer(error)
      } finally {
        clearTimeout(timer)
        release()
      }
    },

    load: () => ({ active, waiting: waiting.length }),

    async close () {
      // Graceful: a request in flight ends (each has its timeout) rather than being cut into an
      // ambiguous outcome; a request made after this is refused before anything is sent.
      await Promise.all([...pools.values()].map((p) => p.close()))
    },
  }
}
