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

/** What the API shows of a token: enough to tell two apart, never enough to use one. */
export function maskToken (token: string): string {
  return token.length <= 8 ? '****' : `${token.slice(0, 4)}…${token.slice(-4)}`
}
