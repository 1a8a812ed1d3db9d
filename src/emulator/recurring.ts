import type { TokenRecord } from './state.js'
import type { Frequency } from './types.js'

// Meta's Marketing Messages (Recurring Notifications) rules, as its docs state them:
// https://developers.facebook.com/docs/messenger-platform/marketing-messages

/** The title Meta shows when the request names none. */
export const DEFAULT_RECURRING_TITLE = 'Updates and promotions'
/** The call-to-action texts Meta's attachment reference lists (GET_UPDATES is its default). */
export const CTA_TEXTS: readonly string[] = ['ALLOW', 'GET', 'GET_UPDATES', 'OPT_IN', 'SIGN_UP']
export const REOPTIN_VALUES: readonly string[] = ['ENABLED']
export const MAX_RECURRING_TITLE = 65

// How long a token asked with a frequency lives before Meta's re-opt-in: daily 6 months, weekly 9,
// monthly 12. Tokens asked without one (after August 2023) do not expire.
const LIFETIME_MONTHS: Record<Frequency, number> = { DAILY: 6, WEEKLY: 9, MONTHLY: 12 }

const DAY_MS = 24 * 60 * 60 * 1000

export function isTimeZone(value: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: value })
    return true
  } catch {
    return false
  }
}

/** The expiry of a token opted in (or refreshed) at `from`: calendar months after it, or none without a frequency. */
export function recurringExpiry(from: number, frequency: Frequency | undefined): number | null {
  if (frequency === undefined) return null
  const d = new Date(from)
  d.setUTCMonth(d.getUTCMonth() + LIFETIME_MONTHS[frequency])
  return d.getTime()
}

// One formatter per time zone: building them is the costly part.
const formatters = new Map<string, Intl.DateTimeFormat>()

function localDate(at: number, timeZone: string): { year: number; month: number; day: number } {
  let f = formatters.get(timeZone)
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone, year: 'numeric', month: 'numeric', day: 'numeric' })
    formatters.set(timeZone, f)
  }
  const parts = Object.fromEntries(f.formatToParts(at).map((p) => [p.type, p.value]))
  return { year: Number(parts.year), month: Number(parts.month), day: Number(parts.day) }
}

/**
 * The calendar period `at` falls in, in `timeZone`, as a comparable number: the day; the week from
 * Monday to Sunday (as Meta defines it); the month.
 */
export function periodOf(at: number, frequency: Frequency, timeZone: string): number {
  const { year, month, day } = localDate(at, timeZone)
  if (frequency === 'MONTHLY') return year * 12 + month
  const days = Math.round(Date.UTC(year, month - 1, day) / DAY_MS)
  if (frequency === 'DAILY') return days
  // 1970-01-01 was a Thursday: (days + 3) % 7 counts from Monday.
  return days - ((days + 3) % 7)
}

/**
 * Whether a send with this token at `now` is over Meta's limits: inside the cooldown after the last
 * accepted send, or in the same calendar period of the token's frequency.
 */
export function overFrequencyLimit(token: TokenRecord, now: number, cooldownMs: number): boolean {
  const last = token.recurring?.lastSentAt
  if (last === undefined) return false
  if (now - last < cooldownMs) return true
  const { frequency, timezone } = token.recurring!
  if (frequency === undefined) return false
  return periodOf(now, frequency, timezone) === periodOf(last, frequency, timezone)
}
