import { setMaxListeners } from 'node:events'
import type { Socket } from 'node:net'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import { controlApi } from './control-api.js'
import { Faults } from './faults.js'
import { customError, errors, graphErrorBody, type GraphError } from './graph-errors.js'
import { processSend } from './send-api.js'
import { EmulatorError, EmulatorState, OTN_TOKEN_LIFETIME_MS, messageId } from './state.js'
import type { Emulator, EmulatorOptions, FaultConfig, RecordedRequest, WebhookResult } from './types.js'
import { messagingEnvelope, postWebhook } from './webhooks.js'

export type {
  Audit,
  DeliveredMessage,
  Emulator,
  EmulatorOptions,
  FaultConfig,
  InjectedFault,
  RecordedRequest,
  SentWebhook,
  TokenKind,
  WebhookResult,
} from './types.js'
export { EmulatorError } from './state.js'
export { appsecretProof } from './send-api.js'
export { signatureHeaders } from './webhooks.js'

const VERSION = /^v\d+\.\d+$/
const FORM_JSON_FIELDS = ['recipient', 'message']

type Params = { version: string; pageId?: string }

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined)
const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

const errorRef = (e: GraphError) => ({ code: e.code, ...(e.subcode !== undefined ? { subcode: e.subcode } : {}) })

/** The URL without its query string (url.split('?')[0] without the array). */
function pathOf(url: string): string {
  const q = url.indexOf('?')
  return q === -1 ? url : url.slice(0, q)
}

function redactUrl(url: string): string {
  return url.replace(/([?&](?:access_token|appsecret_proof)=)[^&]*/g, '$1[redacted]')
}

export function createEmulator(opts: EmulatorOptions = {}): Emulator {
  const baseNow = opts.now ?? Date.now
  const random = opts.random ?? Math.random
  const state = new EmulatorState(opts.recordLimit)
  const faults = new Faults()
  const closing = new AbortController()
  // Every delayed answer listens on it until its delay ends: hundreds at once under load, not a leak.
  setMaxListeners(0, closing.signal)
  const hung = new Set<Socket>()
  const now = () => baseNow() + state.clockOffset

  const app = Fastify({
    logger: opts.logger ? { serializers: { req: (req) => ({ method: req.method, url: redactUrl(req.url) }) } } : false,
    forceCloseConnections: true,
    // Refuse unknown control fields (a typo in a fault config) instead of silently dropping them.
    ajv: { customOptions: { removeAdditional: false } },
  })

  function sendGraphError(reply: FastifyReply, error: GraphError) {
    return reply.code(error.status).type('application/json; charset=UTF-8').send(graphErrorBody(error))
  }

  function hang(request: FastifyRequest, reply: FastifyReply) {
    reply.hijack()
    const socket = request.raw.socket
    hung.add(socket)
    socket.once('close', () => hung.delete(socket))
  }

  function reset(request: FastifyRequest, reply: FastifyReply) {
    reply.hijack()
    request.raw.socket.destroy()
  }

  async function handleSend(request: FastifyRequest<{ Params: Params }>, reply: FastifyReply) {
    const { version, pageId: pathPageId } = request.params
    const query = request.query as Record<string, unknown>
    const body = isRecord(request.body) ? request.body : {}
    const accessToken = str(query.access_token) ?? str(body.access_token)
    const record: RecordedRequest = {
      at: now(),
      method: request.method,
      path: pathOf(request.url),
      pageId: pathPageId ?? state.pageByToken(accessToken)?.id,
      recipient: body.recipient,
      messagingType: str(body.messaging_type),
      notificationType: str(body.notification_type),
      message: body.message,
      outcome: 'error',
    }
    state.record(record)

    const answerError = (error: GraphError) => {
      record.error = errorRef(error)
      return sendGraphError(reply, error)
    }

    if (!VERSION.test(version)) return answerError(errors.unknownPath(record.path))

    const { config, scope } = faults.effective(record.pageId)
    if (faults.overRate(config, scope, record.at)) {
      record.fault = 'rate_limit'
      return answerError(errors.rateLimited())
    }
    const decision = faults.decide(config, random)
    if (decision.before === 'hang') {
      record.outcome = 'fault'
      record.fault = 'hang'
      return hang(request, reply)
    }
    if (config.latencyMs) {
      try {
        await sleep(config.latencyMs, undefined, { signal: closing.signal })
      } catch {
        return reset(request, reply)
      }
    }
    switch (decision.before) {
      case 'reset':
        record.outcome = 'fault'
        record.fault = 'reset'
        return reset(request, reply)
      case 'http_5xx': {
        record.outcome = 'fault'
        record.fault = 'http_5xx'
        const status = random() < 0.5 ? 502 : 503
        const text = status === 502 ? 'Bad Gateway' : 'Service Unavailable'
        return reply.code(status).type('text/html; charset=utf-8').send(`<html><body><h1>${status} ${text}</h1></body></html>`)
      }
      case 'error_rate':
        record.fault = 'error_rate'
        return answerError(config.error ? customError(config.error) : errors.serviceUnavailable())
    }

    const result = processSend(
      {
        state,
        now: now(),
        appSecret: opts.appSecret,
        requireProof: opts.requireProof ?? false,
        tokenRefusal: opts.tokenRefusal ?? 'invalid_parameter',
        optinRequestCooldownMs: opts.optinRequestCooldownMs,
      },
      { pathPageId, accessToken, proof: str(query.appsecret_proof) ?? str(body.appsecret_proof), body },
    )
    if (result.ok) {
      record.outcome = 'accepted'
      state.totals.accepted += 1
      record.messageId = result.messageId
      record.tokenUsed = result.tokenUsed
    } else {
      record.error = errorRef(result.error)
    }

    if (decision.after) {
      record.fault = decision.after
      return decision.after === 'hang' ? hang(request, reply) : reset(request, reply)
    }
    if (!result.ok) return sendGraphError(reply, result.error)
    return reply.code(200).type('application/json; charset=UTF-8').send(result.body)
  }

  app.register(async (graph) => {
    graph.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, raw, done) => {
      const fields: Record<string, unknown> = Object.fromEntries(new URLSearchParams(raw as string))
      for (const name of FORM_JSON_FIELDS) {
        const v = fields[name]
        if (typeof v !== 'string') continue
        try {
          fields[name] = JSON.parse(v)
        } catch {
          // Left as a string: the Send API validation then refuses it with code 100.
        }
      }
      done(null, fields)
    })
    graph.setErrorHandler((err: FastifyError, _request, reply) => {
      if (err.statusCode !== undefined && err.statusCode < 500) {
        return sendGraphError(reply, errors.param(`Invalid request: ${err.message}`))
      }
      return sendGraphError(reply, customError({ code: 1 }))
    })
    graph.setNotFoundHandler((request, reply) => sendGraphError(reply, errors.unknownPath(pathOf(request.url))))
    graph.post('/:version/me/messages', handleSend)
    graph.post('/:version/:pageId/messages', handleSend)
  })

  async function webhook(pageId: string, psid: string, kind: 'message' | 'optin', event: Record<string, unknown>) {
    const at = now()
    const body = JSON.stringify(messagingEnvelope(pageId, psid, at, event))
    if (opts.webhookUrl === undefined) {
      state.webhooks.push({ at, pageId, psid, event: kind, body, status: null })
      return { status: null }
    }
    const result = await postWebhook(opts.webhookUrl, body, opts.appSecret)
    state.webhooks.push({ at, pageId, psid, event: kind, body, ...result })
    return result
  }

  const emulator: Emulator = {
    app,
    get requests() {
      return state.requests
    },
    get webhooks() {
      return state.webhooks
    },

    async listen(port = 0, host = '127.0.0.1') {
      await app.listen({ port, host })
      const address = app.server.address() as AddressInfo
      const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address
      return `http://${shown}:${address.port}`
    },

    async close() {
      closing.abort()
      for (const socket of hung) socket.destroy()
      hung.clear()
      await app.close()
    },

    addPage(page) {
      state.addPage(page)
    },

    async personWrites(pageId, psid, text = 'Hello') {
      state.requirePage(pageId)
      state.touchPerson(pageId, psid).lastInteractionAt = now()
      return webhook(pageId, psid, 'message', { message: { mid: messageId(), text } })
    },

    async clickNotifyMe(pageId, psid, clickOpts = {}) {
      state.requirePage(pageId)
      const { payload } = clickOpts
      const request = state.optinRequests.findLast(
        (r) => r.pageId === pageId && r.psid === psid && !r.answered && (payload === undefined || r.payload === payload),
      )
      if (!request && payload === undefined) {
        throw new EmulatorError(409, `no unanswered one_time_notif_req was delivered to ${psid} on page ${pageId}`)
      }
      if (request) request.answered = true
      const tokenPayload = request?.payload ?? (payload as string)
      const token = emulator.issueToken(pageId, psid, tokenPayload)
      const result = await webhook(pageId, psid, 'optin', {
        optin: { type: 'one_time_notif_req', payload: tokenPayload, one_time_notif_token: token },
      })
      return { token, ...result }
    },

    issueToken(pageId, psid, payload, issueOpts = {}) {
      state.requirePage(pageId)
      const kind = issueOpts.kind ?? 'one_time_notif'
      const optedInAt = issueOpts.optedInAt ?? now()
      const defaultExpiry = kind === 'one_time_notif' ? optedInAt + OTN_TOKEN_LIFETIME_MS : null
      const expiresAt = issueOpts.expiresAt === undefined ? defaultExpiry : issueOpts.expiresAt
      return state.issueToken({ kind, pageId, psid, payload, optedInAt, expiresAt }).token
    },

    setPersonAvailable(pageId, psid, available) {
      state.requirePage(pageId)
      state.touchPerson(pageId, psid).available = available
    },

    setFaults(f: FaultConfig, pageId?: string) {
      faults.set(f, pageId)
    },

    clearFaults() {
      faults.clear()
    },

    async redeliverWebhook(index = state.webhooks.length - 1): Promise<WebhookResult> {
      const original = state.webhooks[index]
      if (!original) throw new RangeError(`no webhook at index ${index}`)
      if (opts.webhookUrl === undefined) return { status: null }
      const result = await postWebhook(opts.webhookUrl, original.body, opts.appSecret)
      state.webhooks.push({ ...original, at: now(), ...result })
      return result
    },

    inbox(pageId, psid) {
      return [...state.inbox(pageId, psid)]
    },

    tokenUses() {
      return new Map(state.otnTokenUses)
    },

    doubleSpends() {
      return [...state.otnTokenUses].filter(([, n]) => n > 1).map(([token]) => token)
    },

    audit() {
      return {
        requests: state.totals.requests,
        accepted: state.totals.accepted,
        tokens_accepted: state.otnTokenUses.size,
        double_spends: emulator.doubleSpends().length,
      }
    },

    now,

    advanceClock(ms) {
      if (!(ms >= 0)) throw new RangeError('advanceClock: ms must be >= 0')
      state.clockOffset += ms
    },

    reset() {
      state.reset()
      faults.clear()
    },
  }

  app.register(controlApi, {
    prefix: '/_emulator',
    emulator,
    pages: () => [...state.pages.values()].map((p) => ({ id: p.id, name: p.name })),
    faults: () => faults.snapshot(),
  })

  return emulator
}
