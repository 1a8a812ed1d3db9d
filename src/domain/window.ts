/** Meta's standard messaging window: a person's message, postback, reaction or referral opens it for 24 hours. */
export const WINDOW_MS = 24 * 60 * 60 * 1000

/** OTN tokens are good for one year after the opt-in. */
export const OTN_TOKEN_LIFETIME_MS = 365 * 24 * 60 * 60 * 1000

export function windowClosesAt (lastInteraction: Date | null): Date | null {
  return lastInteraction ? new Date(lastInteraction.getTime() + WINDOW_MS) : null
}

export function windowIsOpen (lastInteraction: Date | null, now: Date = new Date()): boolean {
  const closes = windowClosesAt(lastInteraction)
  return closes !== null && closes.getTime() > now.getTime()
}

/**
 * What the API shows of a token: enough to tell two apart, never enough to use one. At most an
 * eighth of it from each end (so three quarters stay hidden), at most 4 characters from each; none of
 * one under 12 characters.
 */
export function maskToken (token: string): string {
  const shown = token.length < 12 ? 0 : Math.min(4, Math.floor(token.length / 8))
  return shown === 0 ? '****' : `${token.slice(0, shown)}…${token.slice(-shown)}`
}
