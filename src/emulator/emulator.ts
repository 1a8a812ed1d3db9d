import { setMaxListeners } from 'node:events'
import type { Socket } from 'node:net'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyError, type FastifyReply, type FastifyRequest } from 'fastify'
import { controlApi } from './control-api.js'
import { Faults } from './faults.js'
import { customError, errors, graphErrorBody, type GraphError } from './graph-errors.js'
import { DEFAULT_RECURRING_TITLE, isTimeZone } from './recurring.js'
import { acceptRecurring, changeRecurring, recurringTokens, refreshRecurring, type PersonDeps } from './recurring-person.js'
import { processSend } from './send-api.js'
import { mergeSettings, settingsFromOptions } from './settings.js'
import { EmulatorError, EmulatorState, OTN_TOKEN_LIFETIME_MS, messageId } from './state.js'
import {
  FREQUENCIES,
  STATUS_SPELLINGS,
  UNAVAILABLE_REASONS,
  type Emulator,
  type EmulatorOptions,
  type EmulatorSettings,
  type FaultConfig,
  type Frequency,
  type RecordedRequest,
  type StatusSpelling,
  type WebhookResult,
} from './types.js'
import { servedVersion } from './versions.js'
import { MIXED_STAMPS, messagingEnvelope, postWebhook, type Stamp } from './webhooks.js'

export type {
  Audit,
  DeliveredMessage,
  Emulator,
  EmulatorOptions,
  EmulatorSettings,
  FaultConfig,
  Frequency,
  InjectedFault,
  ParamErrors,
  RecordedRequest,
  RecurringTokenView,
  StatusSpelling,
  SentWebhook,
  TokenKind,
  TokenRefusal,
  UnavailableReason,
  WebhookResult,
  WebhookStamps,
} from './types.js'
export { EmulatorError } from './state.js'
export { appsecretProof } from './send-api.js'
export { signatureHeaders } from './webhooks.js'

const FORM_JSON_FIELDS = ['recipient', 'message']
const HOUR_MS = 60 * 60 * 1000

type Params = { version: string; pageId?: string }

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined)
const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

const VERSION_HEADER = 'facebook-api-version'

const errorRef = (e: GraphError) => ({ code: e.code, ...(e.subcode !== undefined ? { subcode: e.subcode } : {}) })

/** The URL without its query string (url.split('?')[0] without the array). */
function pathOf(url: string): string {
  const q = url.indexOf('?')
  return q === -1 ? url : url.slice(0, q)
}

function redactUrl(url: string): string {
  return url.replace(/([?&](?:access_token|appsecret_proof)=)[^&]*/g, '$1[redacted]')
}

function spelled(opts: { payload?: string; spelling?: StatusSpelling }) {
  if (opts.spelling !== undefined && !STATUS_SPELLINGS.includes(opts.spelling)) {
    throw new RangeError(`spelling must be one of ${STATUS_SPELLINGS.join(', ')}, got ${JSON.stringify(opts.spelling)}`)
  }
  return opts
}

/** The recurring state of a token issued directly (issueToken), checked like a template's options. */
function recurringOptions(o: { frequency?: Frequency; timezone?: string; title?: string }) {
  if (o.frequency !== undefined && !FREQUENCIES.includes(o.frequency)) {
    throw new RangeError(`frequency must be one of ${FREQUENCIES.join(', ')}, got ${JSON.stringify(o.frequency)}`)
  }
  if (o.timezone !== undefined && !isTimeZone(o.timezone)) {
    throw new RangeError(`timezone must be an IANA time zone, got ${JSON.stringify(o.timezone)}`)
  }
  return {
    title: o.title ?? DEFAULT_RECURRING_TITLE,
    ...(o.frequency !== undefined ? { frequency: o.frequency } : {}),
    timezone: o.timezone ?? 'UTC',
    stopped: false,
    userTokenStatus: 'NOT_REFRESHED' as const,
  }
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
  const initialSettings = settingsFromOptions(opts)
  let settings = initialSettings
  // Position in the 'mixed' webhook stamp cycle; restarts when the stamps are set and on reset().
  let stampCycle = 0

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
    const at = now()
    const served = servedVersion(version, at)
    const record: RecordedRequest = {
      at,
      method: request.method,
      path: pathOf(request.url),
      version,
      ...(served !== undefined ? { servedVersion: served } : {}),
      pageId: pathPageId ?? state.pageByToken(accessToken)?.id,
      recipient: body.recipient,
      messagingType: str(body.messaging_type),
      ...(str(body.tag) !== undefined ? { tag: str(body.tag) } : {}),
      notificationType: str(body.notification_type),
      message: body.message,
      outcome: 'error',
    }
    state.record(record)

    const answerError = (error: GraphError) => {
      record.error = errorRef(error)
      return sendGraphError(reply, error)
    }

    if (served === undefined) return answerError(errors.unknownPath(record.path))
    // Every Graph answer names the version that served it; a retired one is served by the oldest still available.
    reply.header(VERSION_HEADER, served)

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
        // A gateway's page, not a Graph answer: no version header.
        reply.removeHeader(VERSION_HEADER)
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
        tokenRefusal: settings.tokenRefusal,
        optinRequestCooldownMs: settings.optinRequestCooldownMs ?? undefined,
        paramErrors: settings.paramErrors,
        recurringCooldownMs: settings.recurringCooldownHours * HOUR_MS,
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
    graph.setErrorHandler((err: FastifyError, request, reply) => {
      const version = (request.params as Partial<Params> | undefined)?.version
      const served = version === undefined ? undefined : servedVersion(version, now())
      if (served !== undefined) reply.header(VERSION_HEADER, served)
      if (err.statusCode !== undefined && err.statusCode < 500) {
        const generic = settings.paramErrors === 'generic'
        return sendGraphError(reply, generic ? errors.invalidParameter() : errors.param(`Invalid request: ${err.message}`))
      }
      return sendGraphError(reply, customError({ code: 1 }))
    })
    graph.setNotFoundHandler((request, reply) => sendGraphError(reply, errors.unknownPath(pathOf(request.url))))
    graph.post('/:version/me/messages', handleSend)
    graph.post('/:version/:pageId/messages', handleSend)
  })

  function nextStamp(): Stamp {
    if (settings.webhookStamps !== 'mixed') return settings.webhookStamps
    const stamp = MIXED_STAMPS[stampCycle % MIXED_STAMPS.length]
    stampCycle += 1
    return stamp
  }

  async function webhook(pageId: string, psid: string, kind: 'message' | 'optin', event: Record<string, unknown>) {
    const at = now()
    const shape = { stamp: nextStamp(), omitRecipient: settings.omitRecipient }
    const body = JSON.stringify(messagingEnvelope(pageId, psid, at, event, shape))
    if (opts.webhookUrl === undefined) {
      state.webhooks.push({ at, pageId, psid, event: kind, body, status: null })
      return { status: null }
    }
    const result = await postWebhook(opts.webhookUrl, body, opts.appSecret)
    state.webhooks.push({ at, pageId, psid, event: kind, body, ...result })
    return result
  }

  const personDeps: PersonDeps = {
    state,
    now,
    webhook: (pageId, psid, event) => webhook(pageId, psid, 'optin', event),
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

    async crowd(pageId, crowdOpts) {
      state.requirePage(pageId)
      const perDelivery = crowdOpts.perDelivery ?? 500
      const tokensEach = crowdOpts.tokensPerPerson ?? 1
      const events: Array<{ psid: string; event: Record<string, unknown> }> = []
      for (let i = 0; i < crowdOpts.people; i++) {
        const psid = `${crowdOpts.psidPrefix}${i}`
        if (crowdOpts.writes) {
          state.touchPerson(pageId, psid).lastInteractionAt = now()
          events.push({ psid, event: { message: { mid: messageId(), text: 'Hello' } } })
        }
        if (crowdOpts.payload !== undefined) {
          for (let k = 0; k < tokensEach; k++) {
            const token = emulator.issueToken(pageId, psid, crowdOpts.payload)
            events.push({ psid, event: { optin: { type: 'one_time_notif_req', payload: crowdOpts.payload, one_time_notif_token: token } } })
          }
        }
      }
      let deliveries = 0
      let failed = 0
      for (let i = 0; i < events.length; i += perDelivery) {
        const at = now()
        // Meta batches entries: one entry per event, as it documents them.
        const entries = events.slice(i, i + perDelivery).map(({ psid, event }) => messagingEnvelope(pageId, psid, at, event).entry[0])
        const body = JSON.stringify({ object: 'page', entry: entries })
        const result = opts.webhookUrl === undefined ? { status: null } : await postWebhook(opts.webhookUrl, body, opts.appSecret)
        deliveries++
        if (result.status !== 200) failed++
      }
      return { people: crowdOpts.people, events: events.length, deliveries, failedDeliveries: failed }
    },

    async clickNotifyMe(pageId, psid, clickOpts = {}) {
      state.requirePage(pageId)
      const { payload } = clickOpts
      const request = state.optinRequests.findLast(
        (r) =>
          r.kind === 'one_time_notif' && r.pageId === pageId && r.psid === psid && !r.answered &&
          (payload === undefined || r.payload === payload),
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

    async acceptRecurring(pageId, psid, acceptOpts = {}) {
      if (acceptOpts.timezone !== undefined && !isTimeZone(acceptOpts.timezone)) {
        throw new RangeError(`timezone must be an IANA time zone, got ${JSON.stringify(acceptOpts.timezone)}`)
      }
      return acceptRecurring(personDeps, pageId, psid, acceptOpts)
    },

    async stopRecurring(pageId, psid, changeOpts = {}) {
      return changeRecurring(personDeps, pageId, psid, 'STOP', spelled(changeOpts))
    },

    async resumeRecurring(pageId, psid, changeOpts = {}) {
      return changeRecurring(personDeps, pageId, psid, 'RESUME', spelled(changeOpts))
    },

    async refreshRecurring(pageId, psid, refreshOpts = {}) {
      return refreshRecurring(personDeps, pageId, psid, refreshOpts)
    },

    recurringTokens(pageId, psid) {
      state.requirePage(pageId)
      return recurringTokens(state, pageId, psid, now())
    },

    issueToken(pageId, psid, payload, issueOpts = {}) {
      state.requirePage(pageId)
      const kind = issueOpts.kind ?? 'one_time_notif'
      const optedInAt = issueOpts.optedInAt ?? now()
      const defaultExpiry = kind === 'one_time_notif' ? optedInAt + OTN_TOKEN_LIFETIME_MS : null
      const expiresAt = issueOpts.expiresAt === undefined ? defaultExpiry : issueOpts.expiresAt
      const recurring = kind === 'notification_messages' ? recurringOptions(issueOpts) : undefined
      return state.issueToken({ kind, pageId, psid, payload, optedInAt, expiresAt, ...(recurring ? { recurring } : {}) }).token
    },

    setPersonAvailable(pageId, psid, available, reason = 'unavailable') {
      if (!UNAVAILABLE_REASONS.includes(reason)) {
        throw new RangeError(`reason must be one of ${UNAVAILABLE_REASONS.join(', ')}, got ${JSON.stringify(reason)}`)
      }
      state.requirePage(pageId)
      const person = state.touchPerson(pageId, psid)
      person.available = available
      if (available) delete person.unavailableReason
      else person.unavailableReason = reason
    },

    settings(patch?: Partial<EmulatorSettings>) {
      if (patch !== undefined) {
        settings = mergeSettings(settings, patch)
        if (patch.webhookStamps !== undefined) stampCycle = 0
      }
      return { ...settings }
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
      settings = initialSettings
      stampCycle = 0
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
