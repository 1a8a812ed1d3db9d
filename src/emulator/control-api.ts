import type { FastifyError, FastifyInstance } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { fromWire, toWire } from './settings.js'
import { EmulatorError } from './state.js'
import {
  PARAM_ERRORS,
  STATUS_SPELLINGS,
  TOKEN_REFUSALS,
  UNAVAILABLE_REASONS,
  WEBHOOK_STAMPS,
  type DeliveredMessage,
  type Emulator,
  type FaultConfig,
  type RecordedRequest,
  type RecurringTokenView,
  type WebhookResult,
} from './types.js'

export interface ControlDeps {
  emulator: Emulator
  pages(): { id: string; name: string }[]
  faults(): { global: FaultConfig; pages: Record<string, FaultConfig> }
}

const Rate = Type.Number({ minimum: 0, maximum: 1 })

const FaultBody = Type.Object(
  {
    page_id: Type.Optional(Type.String({ minLength: 1 })),
    latencyMs: Type.Optional(Type.Number({ minimum: 0 })),
    errorRate: Type.Optional(Rate),
    error: Type.Optional(
      Type.Object(
        {
          status: Type.Optional(Type.Integer({ minimum: 400, maximum: 599 })),
          code: Type.Integer(),
          subcode: Type.Optional(Type.Integer()),
          message: Type.Optional(Type.String()),
        },
        { additionalProperties: false },
      ),
    ),
    http5xxRate: Type.Optional(Rate),
    hangRate: Type.Optional(Rate),
    resetRate: Type.Optional(Rate),
    processThenFail: Type.Optional(Type.Union([Type.Literal('hang'), Type.Literal('reset'), Type.Null()])),
    maxRps: Type.Optional(Type.Number({ minimum: 0 })),
  },
  { additionalProperties: false },
)

const PersonParams = Type.Object({ pageId: Type.String(), psid: Type.String() })

const oneOf = <T extends string>(values: readonly T[]) => Type.Union(values.map((v) => Type.Literal(v)))

const AvailabilityBody = Type.Object({
  available: Type.Boolean(),
  reason: Type.Optional(oneOf(UNAVAILABLE_REASONS)),
})

const SettingsBody = Type.Object(
  {
    webhook_stamps: Type.Optional(oneOf(WEBHOOK_STAMPS)),
    omit_recipient: Type.Optional(Type.Boolean()),
    param_errors: Type.Optional(oneOf(PARAM_ERRORS)),
    token_refusal: Type.Optional(oneOf(TOKEN_REFUSALS)),
    // One schema with both types: Ajv's type coercion would turn null into 0 in an anyOf.
    optin_request_cooldown_ms: Type.Optional(Type.Unsafe<number | null>({ type: ['integer', 'null'], minimum: 0 })),
    recurring_cooldown_hours: Type.Optional(Type.Number({ minimum: 0 })),
  },
  { additionalProperties: false },
)

function mask(token: string): string {
  return token.length <= 8 ? '****' : `${token.slice(0, 4)}…${token.slice(-4)}`
}

function webhookOutcome(result: WebhookResult) {
  return { webhook_status: result.status, ...(result.error ? { webhook_error: result.error } : {}) }
}

function recurringWire(v: RecurringTokenView) {
  return {
    token: mask(v.token),
    payload: v.payload,
    title: v.title,
    frequency: v.frequency ?? null,
    timezone: v.timezone,
    status: v.status,
    user_token_status: v.userTokenStatus,
    opted_in_at: v.optedInAt,
    expires_at: v.expiresAt,
    last_sent_at: v.lastSentAt ?? null,
    uses: v.uses,
  }
}

function maskDelivered(d: DeliveredMessage) {
  return { ...d, ...(d.token !== undefined ? { token: mask(d.token) } : {}) }
}

function maskRequest(r: RecordedRequest) {
  const recipient =
    r.recipient && typeof r.recipient === 'object'
      ? Object.fromEntries(
          Object.entries(r.recipient as Record<string, unknown>).map(([k, v]) =>
            [k, k.endsWith('_token') && typeof v === 'string' ? mask(v) : v],
          ),
        )
      : r.recipient
  return { ...r, recipient, ...(r.tokenUsed !== undefined ? { tokenUsed: mask(r.tokenUsed) } : {}) }
}

/** Token values never leave the emulator over HTTP: the service receives them through the webhook. */
export async function controlApi(app: FastifyInstance, deps: ControlDeps): Promise<void> {
  const { emulator } = deps
  const api = app.withTypeProvider<TypeBoxTypeProvider>()

  api.setErrorHandler((err: FastifyError, _request, reply) => {
    if (err instanceof EmulatorError) return reply.code(err.statusCode).send({ error: err.message })
    if (err.validation || (err.statusCode !== undefined && err.statusCode < 500)) {
      return reply.code(err.statusCode ?? 400).send({ error: err.message })
    }
    if (err instanceof RangeError) return reply.code(400).send({ error: err.message })
    return reply.code(500).send({ error: err.message })
  })

  // Lets the person-action POSTs be sent with no body at all (curl -X POST).
  api.addHook('preValidation', async (request) => {
    if (request.body === undefined && request.method !== 'GET' && request.method !== 'DELETE') request.body = {}
  })

  api.setNotFoundHandler((request, reply) => reply.code(404).send({ error: `no emulator route ${request.method} ${request.url}` }))

  const requirePage = (pageId: string) => {
    if (!deps.pages().some((p) => p.id === pageId)) throw new EmulatorError(404, `unknown page ${pageId}`)
  }

  api.get('/pages', async () => ({ items: deps.pages() }))

  api.post(
    '/pages',
    {
      schema: {
        body: Type.Object({
          id: Type.String({ minLength: 1 }),
          access_token: Type.String({ minLength: 1 }),
          name: Type.Optional(Type.String()),
        }),
      },
    },
    async (request, reply) => {
      const { id, access_token, name } = request.body
      emulator.addPage({ id, accessToken: access_token, name })
      return reply.code(201).send(deps.pages().find((p) => p.id === id))
    },
  )

  api.post(
    '/persons/:pageId/:psid/messages',
    {
      schema: {
        params: PersonParams,
        body: Type.Object({ text: Type.Optional(Type.String({ minLength: 1 })) }),
      },
    },
    async (request) => {
      const { pageId, psid } = request.params
      requirePage(pageId)
      const result = await emulator.personWrites(pageId, psid, request.body.text)
      return { webhook_status: result.status, ...(result.error ? { webhook_error: result.error } : {}) }
    },
  )

  api.post(
    '/persons/:pageId/:psid/notify-me',
    {
      schema: {
        params: PersonParams,
        body: Type.Object({ payload: Type.Optional(Type.String({ minLength: 1 })) }),
      },
    },
    async (request) => {
      const { pageId, psid } = request.params
      requirePage(pageId)
      const result = await emulator.clickNotifyMe(pageId, psid, { payload: request.body.payload })
      return {
        token_issued: true,
        token: mask(result.token),
        webhook_status: result.status,
        ...(result.error ? { webhook_error: result.error } : {}),
      }
    },
  )

  const RecurringChangeBody = Type.Object(
    { payload: Type.Optional(Type.String({ minLength: 1 })), spelling: Type.Optional(oneOf(STATUS_SPELLINGS)) },
    { additionalProperties: false },
  )

  // The person's side of Meta's recurring notifications (notification_messages); each posts the
  // signed opt-in webhook Meta would. Tokens are masked here: the service gets them from the webhook.
  api.post(
    '/persons/:pageId/:psid/recurring/accept',
    {
      schema: {
        params: PersonParams,
        body: Type.Object(
          { payload: Type.Optional(Type.String({ minLength: 1 })), timezone: Type.Optional(Type.String({ minLength: 1 })) },
          { additionalProperties: false },
        ),
      },
    },
    async (request) => {
      const { pageId, psid } = request.params
      requirePage(pageId)
      const result = await emulator.acceptRecurring(pageId, psid, request.body)
      return { token_issued: true, token: mask(result.token), ...webhookOutcome(result) }
    },
  )

  for (const [action, change] of [['stop', 'stopRecurring'], ['resume', 'resumeRecurring']] as const) {
    api.post(
      `/persons/:pageId/:psid/recurring/${action}`,
      { schema: { params: PersonParams, body: RecurringChangeBody } },
      async (request) => {
        const { pageId, psid } = request.params
        requirePage(pageId)
        const result = await emulator[change](pageId, psid, request.body)
        return { token: mask(result.token), ...webhookOutcome(result) }
      },
    )
  }

  api.post(
    '/persons/:pageId/:psid/recurring/refresh',
    {
      schema: {
        params: PersonParams,
        body: Type.Object({ payload: Type.Optional(Type.String({ minLength: 1 })) }, { additionalProperties: false }),
      },
    },
    async (request) => {
      const { pageId, psid } = request.params
      requirePage(pageId)
      const result = await emulator.refreshRecurring(pageId, psid, request.body)
      return { token: mask(result.token), replaced: mask(result.replaced), ...webhookOutcome(result) }
    },
  )

  api.get('/persons/:pageId/:psid/recurring', { schema: { params: PersonParams } }, async (request) => {
    const { pageId, psid } = request.params
    requirePage(pageId)
    return { items: emulator.recurringTokens(pageId, psid).map(recurringWire) }
  })

  api.post(
    '/pages/:pageId/crowd',
    {
      schema: {
        params: Type.Object({ pageId: Type.String() }),
        body: Type.Object(
          {
            people: Type.Integer({ minimum: 1, maximum: 1_000_000 }),
            psid_prefix: Type.String({ minLength: 1, maxLength: 40, pattern: '^[0-9A-Za-z_-]+$' }),
            payload: Type.Optional(Type.String({ minLength: 1 })),
            tokens_per_person: Type.Optional(Type.Integer({ minimum: 1, maximum: 100 })),
            writes: Type.Optional(Type.Boolean()),
            per_delivery: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
          },
          { additionalProperties: false },
        ),
      },
    },
    async (request) => {
      const { pageId } = request.params
      requirePage(pageId)
      const b = request.body
      const r = await emulator.crowd(pageId, {
        people: b.people,
        psidPrefix: b.psid_prefix,
        payload: b.payload,
        tokensPerPerson: b.tokens_per_person,
        writes: b.writes,
        perDelivery: b.per_delivery,
      })
      return { people: r.people, events: r.events, deliveries: r.deliveries, failed_deliveries: r.failedDeliveries }
    },
  )

  api.put(
    '/persons/:pageId/:psid/availability',
    { schema: { params: PersonParams, body: AvailabilityBody } },
    async (request) => {
      const { pageId, psid } = request.params
      const { available, reason = 'unavailable' } = request.body
      requirePage(pageId)
      emulator.setPersonAvailable(pageId, psid, available, reason)
      return available ? { available } : { available, reason }
    },
  )

  api.get('/persons/:pageId/:psid/inbox', { schema: { params: PersonParams } }, async (request) => {
    const { pageId, psid } = request.params
    requirePage(pageId)
    return { items: emulator.inbox(pageId, psid).map(maskDelivered) }
  })

  api.get('/faults', async () => deps.faults())

  api.put('/faults', { schema: { body: FaultBody } }, async (request) => {
    const { page_id, ...config } = request.body
    emulator.setFaults(config, page_id)
    return deps.faults()
  })

  api.delete('/faults', async (_request, reply) => {
    emulator.clearFaults()
    return reply.code(204).send()
  })

  api.get(
    '/requests',
    { schema: { querystring: Type.Object({ limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })) }) } },
    async (request) => {
      const limit = request.query.limit ?? 100
      return { items: emulator.requests.slice(-limit).map(maskRequest), total: emulator.requests.length }
    },
  )

  api.get('/audit', async () => emulator.audit())

  api.get('/settings', async () => toWire(emulator.settings()))

  api.put('/settings', { schema: { body: SettingsBody } }, async (request) => toWire(emulator.settings(fromWire(request.body))))

  // Also restores the settings given at creation.
  api.post('/reset', async (_request, reply) => {
    emulator.reset()
    return reply.code(204).send()
  })

  api.get('/clock', async () => ({ now: emulator.now() }))

  api.post(
    '/clock',
    { schema: { body: Type.Object({ advance_ms: Type.Integer({ minimum: 0 }) }) } },
    async (request) => {
      emulator.advanceClock(request.body.advance_ms)
      return { now: emulator.now() }
    },
  )
}
