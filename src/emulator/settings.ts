import {
  PARAM_ERRORS,
  TOKEN_REFUSALS,
  WEBHOOK_STAMPS,
  type EmulatorOptions,
  type EmulatorSettings,
  type ParamErrors,
  type TokenRefusal,
  type WebhookStamps,
} from './types.js'

/** The settings as the control API shows them (snake_case, like the rest of its bodies). */
export interface WireSettings {
  webhook_stamps: WebhookStamps
  omit_recipient: boolean
  param_errors: ParamErrors
  token_refusal: TokenRefusal
  optin_request_cooldown_ms: number | null
  recurring_cooldown_hours: number
}

function oneOf<T extends string>(name: string, allowed: readonly T[], value: unknown): T {
  if (!(allowed as readonly unknown[]).includes(value)) {
    throw new RangeError(`${name} must be one of ${allowed.join(', ')}, got ${JSON.stringify(value)}`)
  }
  return value as T
}

function cooldown(value: unknown): number | null {
  if (value === null) return null
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new RangeError(`optinRequestCooldownMs must be a number >= 0 or null, got ${JSON.stringify(value)}`)
  }
  return value
}

function hours(value: unknown): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new RangeError(`recurringCooldownHours must be a number >= 0, got ${JSON.stringify(value)}`)
  }
  return value
}

/** `current` with `patch` merged in; throws RangeError, changing nothing, when a value is invalid. */
export function mergeSettings(current: EmulatorSettings, patch: Partial<EmulatorSettings>): EmulatorSettings {
  const next = { ...current }
  if (patch.webhookStamps !== undefined) next.webhookStamps = oneOf('webhookStamps', WEBHOOK_STAMPS, patch.webhookStamps)
  if (patch.omitRecipient !== undefined) {
    if (typeof patch.omitRecipient !== 'boolean') throw new RangeError('omitRecipient must be a boolean')
    next.omitRecipient = patch.omitRecipient
  }
  if (patch.paramErrors !== undefined) next.paramErrors = oneOf('paramErrors', PARAM_ERRORS, patch.paramErrors)
  if (patch.tokenRefusal !== undefined) next.tokenRefusal = oneOf('tokenRefusal', TOKEN_REFUSALS, patch.tokenRefusal)
  if (patch.optinRequestCooldownMs !== undefined) next.optinRequestCooldownMs = cooldown(patch.optinRequestCooldownMs)
  if (patch.recurringCooldownHours !== undefined) next.recurringCooldownHours = hours(patch.recurringCooldownHours)
  return next
}

export function settingsFromOptions(opts: EmulatorOptions): EmulatorSettings {
  const defaults: EmulatorSettings = {
    webhookStamps: 'milliseconds',
    omitRecipient: false,
    paramErrors: 'detailed',
    tokenRefusal: 'invalid_parameter',
    optinRequestCooldownMs: null,
    // Meta's subscription_token cooldown since September 1, 2025 (24 hours before).
    recurringCooldownHours: 48,
  }
  return mergeSettings(defaults, {
    webhookStamps: opts.webhookStamps,
    omitRecipient: opts.omitRecipient,
    paramErrors: opts.paramErrors,
    tokenRefusal: opts.tokenRefusal,
    optinRequestCooldownMs: opts.optinRequestCooldownMs,
    recurringCooldownHours: opts.recurringCooldownHours,
  })
}

export function toWire(s: EmulatorSettings): WireSettings {
  return {
    webhook_stamps: s.webhookStamps,
    omit_recipient: s.omitRecipient,
    param_errors: s.paramErrors,
    token_refusal: s.tokenRefusal,
    optin_request_cooldown_ms: s.optinRequestCooldownMs,
    recurring_cooldown_hours: s.recurringCooldownHours,
  }
}

export function fromWire(w: Partial<WireSettings>): Partial<EmulatorSettings> {
  return {
    webhookStamps: w.webhook_stamps,
    omitRecipient: w.omit_recipient,
    paramErrors: w.param_errors,
    tokenRefusal: w.token_refusal,
    optinRequestCooldownMs: w.optin_request_cooldown_ms,
    recurringCooldownHours: w.recurring_cooldown_hours,
  }
}
