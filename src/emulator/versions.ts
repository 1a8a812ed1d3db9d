import { oldestServed, versionStatus } from '../graph/versions.js'

const VERSION = /^v(\d+)\.(\d+)$/

function parse(version: string): [number, number] | null {
  const m = VERSION.exec(version)
  return m ? [Number(m[1]), Number(m[2])] : null
}

function compare(a: [number, number], b: [number, number]): number {
  return a[0] - b[0] || a[1] - b[1]
}

/**
 * The version Meta answers a call to `version` with at `now`: itself while it is served, the oldest
 * version still available once it is retired. A well-formed version the table does not know is
 * served as itself (a newer release) unless it is older than the oldest one still available (then it
 * is long retired).
 * undefined for a malformed version (no such path).
 */
export function servedVersion(version: string, now: number): string | undefined {
  const requested = parse(version)
  if (!requested) return undefined
  const status = versionStatus(version, now)
  if (status.status === 'retired') return status.served_as
  if (status.status !== 'unknown') return version
  const oldest = oldestServed(now)
  const oldestParsed = parse(oldest)
  return oldestParsed && compare(requested, oldestParsed) < 0 ? oldest : version
}
