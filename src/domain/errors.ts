import type { GraphError } from '../db/types.js'

/** What went wrong, in terms a caller can act on; the HTTP layer maps kinds to status codes. */
export type ErrorKind = 'invalid' | 'not_found' | 'conflict' | 'unprocessable' | 'throttled' | 'upstream' | 'unavailable' | 'timeout'

export class DomainError extends Error {
  constructor (
    public readonly kind: ErrorKind,
    public readonly code: string,
    message: string,
    public readonly extra: Record<string, unknown> & { retryAfterSeconds?: number, graph?: GraphError } = {},
  ) {
    super(message)
    this.name = 'DomainError'
  }
}

export const notFound = (what: string, id: string): DomainError =>
  new DomainError('not_found', `${what}_not_found`, `No ${what} with id ${id}.`)

/** Postgres unique violation, the same code on pg and PGlite. */
export function uniqueViolation (error: unknown): string | undefined {
  const e = error as { code?: string, constraint?: string }
  if (e?.code !== '23505') return undefined
  return e.constraint ?? ''
}
