/**
 * Idempotency-Key, one rule for notifications and broadcasts: the same key with the same request
 * returns the first result and does nothing more; the same key with another request is refused;
 * a key whose first request is still in flight is answered at once with "ask again shortly".
 */
import { createHash } from 'node:crypto'
import { DomainError, type DomainErrorExtra } from './errors.js'

/** Sorted keys, recursively (the HTTP layer bounds how deep a body may nest before it gets here). */
function canonical (value: unknown): unknown {
  if (Array.isArray(value)) return value.map(canonical)
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, canonical((value as Record<string, unknown>)[k])]))
  }
  return value
}

/** SHA-256 of a request as the service understands it: defaults applied by the caller, key order ignored. */
export function requestHash (request: Record<string, unknown>): string {
  return createHash('sha256').update(JSON.stringify(canonical(request))).digest('hex')
}

/** Seconds a caller waits before asking again about a key still in flight. */
export const IN_PROGRESS_RETRY_AFTER_SECONDS = 1

/**
 * What an earlier request under the same key means for this one: its record to replay, or a refusal
 * (another request body; or still in flight, when `inFlight` says so). `what` names the resource.
 */
export function replayOf<T extends { request_hash: string | null }> (existing: T, hash: string, what: string,
  opts: { inFlight?: (existing: T) => boolean, extra?: (existing: T) => DomainErrorExtra } = {}): T {
  const extra = opts.extra?.(existing) ?? {}
  if (existing.request_hash !== hash) {
    throw new DomainError('idempotency_conflict',
      `This Idempotency-Key was used with a different request body; use a new key for a new ${what}.`, extra)
  }
  if (opts.inFlight?.(existing)) {
    throw new DomainError('idempotency_in_progress',
      `A request with this Idempotency-Key is still being processed; ask again in ${IN_PROGRESS_RETRY_AFTER_SECONDS} s for its outcome.`,
      { ...extra, retryAfterSeconds: IN_PROGRESS_RETRY_AFTER_SECONDS })
  }
  return existing
}

/** Two requests with one key raced and the other's record is not visible yet: ask again shortly. */
export function keyRace (): DomainError {
  return new DomainError('idempotency_in_progress', 'Another request with this Idempotency-Key is being processed; ask again shortly.',
    { retryAfterSeconds: IN_PROGRESS_RETRY_AFTER_SECONDS })
}
