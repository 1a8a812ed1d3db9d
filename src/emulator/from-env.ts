import { DEFAULT_GRAPH_VERSION } from '../graph/versions.js'
import { createEmulator, type Emulator } from './emulator.js'
import {
  PARAM_ERRORS,
  TOKEN_REFUSALS,
  WEBHOOK_STAMPS,
  type ParamErrors,
  type TokenRefusal,
  type WebhookStamps,
} from './types.js'

export interface EmulatorEnvConfig {
  port: number
  host: string
  appSecret?: string
  requireProof: boolean
  webhookUrl: string
  pages: { id: string; accessToken: string }[]
  webhookStamps: WebhookStamps
  omitRecipient: boolean
  paramErrors: ParamErrors
  tokenRefusal: TokenRefusal
  /** Unset: repeated opt-in requests are not limited. */
  optinRequestCooldownMs?: number
  /** Unset: every request is kept for GET /_emulator/requests. */
  recordLimit?: number
  /** Unset: Meta's 48 hours. */
  recurringCooldownHours?: number
}

function parsePages(spec: string): { id: string; accessToken: string }[] {
  return spec
    .split(',')
    .map((entry) => entry.trim())
    .filter((entry) => entry !== '')
    .map((entry) => {
      const at = entry.indexOf(':')
      if (at <= 0 || at === entry.length - 1) {
        throw new Error(`EMULATOR_PAGES: expected pageId:accessToken, got "${entry}"`)
      }
      return { id: entry.slice(0, at), accessToken: entry.slice(at + 1) }
    })
}

function parsePort(value: string): number {
  const port = Number(value)
  if (value.trim() === '' || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`EMULATOR_PORT: not a port number: "${value}"`)
  }
  return port
}

function parseBoolean(name: string, value: string | undefined): boolean {
  const v = value ?? ''
  if (!['', '0', '1', 'false', 'true'].includes(v)) throw new Error(`${name}: expected true or false, got "${v}"`)
  return v === '1' || v === 'true'
}

/** Unset or empty: the default. */
function parseChoice<T extends string>(name: string, allowed: readonly T[], value: string | undefined, fallback: T): T {
  if (value === undefined || value === '') return fallback
  if (!(allowed as readonly string[]).includes(value)) {
    throw new Error(`${name}: expected one of ${allowed.join(', ')}, got "${value}"`)
  }
  return value as T
}

function parseCooldown(value: string | undefined): number | undefined {
  if (value === undefined || value.trim() === '') return undefined
  const ms = Number(value)
  if (!/^\s*\d+\s*$/.test(value) || !Number.isSafeInteger(ms)) {
    throw new Error(`EMULATOR_OPTIN_REQUEST_COOLDOWN_MS: expected a whole number of milliseconds >= 0, got "${value}"`)
  }
  return ms
}

export function configFromEnv(env: NodeJS.ProcessEnv): EmulatorEnvConfig {
  return {
    port: parsePort(env.EMULATOR_PORT ?? '3999'),
    host: env.EMULATOR_HOST || '127.0.0.1',
    appSecret: env.META_APP_SECRET || undefined,
    requireProof: parseBoolean('EMULATOR_REQUIRE_PROOF', env.EMULATOR_REQUIRE_PROOF),
    webhookUrl: env.EMULATOR_WEBHOOK_URL || 'http://127.0.0.1:3000/webhooks/messenger',
    pages: parsePages(env.EMULATOR_PAGES ?? '1000001:demo-page-token'),
    webhookStamps: parseChoice('EMULATOR_WEBHOOK_STAMPS', WEBHOOK_STAMPS, env.EMULATOR_WEBHOOK_STAMPS, 'milliseconds'),
    omitRecipient: parseBoolean('EMULATOR_OMIT_RECIPIENT', env.EMULATOR_OMIT_RECIPIENT),
    paramErrors: parseChoice('EMULATOR_PARAM_ERRORS', PARAM_ERRORS, env.EMULATOR_PARAM_ERRORS, 'detailed'),
    tokenRefusal: parseChoice('EMULATOR_TOKEN_REFUSAL', TOKEN_REFUSALS, env.EMULATOR_TOKEN_REFUSAL, 'invalid_parameter'),
    optinRequestCooldownMs: parseCooldown(env.EMULATOR_OPTIN_REQUEST_COOLDOWN_MS),
    recordLimit: parseRecordLimit(env.EMULATOR_RECORD_LIMIT),
    recurringCooldownHours: parseHours(env.EMULATOR_RECURRING_COOLDOWN_HOURS),
  }
}

function parseHours(value: string | undefined): number | undefined {
  if (value === undefined || value.trim() === '') return undefined
  const n = Number(value)
  if (!/^\s*\d+(\.\d+)?\s*$/.test(value) || !Number.isFinite(n)) {
    throw new Error(`EMULATOR_RECURRING_COOLDOWN_HOURS: expected a number of hours >= 0, got "${value}"`)
  }
  return n
}

/** Requests kept for GET /_emulator/requests (the audit counts every one); unset: all. */
function parseRecordLimit(value: string | undefined): number | undefined {
  if (value === undefined || value.trim() === '') return undefined
  const n = Number(value)
  if (!/^\s*\d+\s*$/.test(value) || !Number.isSafeInteger(n) || n < 1) {
    throw new Error(`EMULATOR_RECORD_LIMIT: expected a whole number >= 1, got "${value}"`)
  }
  return n
}

export async function startFromEnv(
  env: NodeJS.ProcessEnv,
  opts: { logger?: boolean } = {},
): Promise<{ emulator: Emulator; url: string; config: EmulatorEnvConfig }> {
  const config = configFromEnv(env)
  const emulator = createEmulator({
    appSecret: config.appSecret,
    requireProof: config.requireProof,
    webhookUrl: config.webhookUrl,
    logger: opts.logger ?? true,
    webhookStamps: config.webhookStamps,
    omitRecipient: config.omitRecipient,
    paramErrors: config.paramErrors,
    tokenRefusal: config.tokenRefusal,
    optinRequestCooldownMs: config.optinRequestCooldownMs,
    recordLimit: config.recordLimit,
    recurringCooldownHours: config.recurringCooldownHours,
  })
  for (const page of config.pages) emulator.addPage(page)
  const url = await emulator.listen(config.port, config.host)
  emulator.app.log.info(
    {
      url,
      webhookUrl: config.webhookUrl,
      pages: config.pages.map((p) => p.id),
      signsWebhooks: config.appSecret !== undefined,
      requireProof: config.requireProof,
      settings: emulator.settings(),
    },
    `Graph API emulator listening: send to ${url}/${DEFAULT_GRAPH_VERSION}/me/messages, control API at ${url}/_emulator`,
  )
  if (config.appSecret === undefined) {
    emulator.app.log.warn('META_APP_SECRET is not set: webhooks go out unsigned and the service will refuse them')
  }
  return { emulator, url, config }
}
