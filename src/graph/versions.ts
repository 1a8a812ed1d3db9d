/**
 * Graph API versions and how long Meta serves each. Source: Meta's Graph API changelog,
 * https://developers.facebook.com/docs/graph-api/changelog/versions (read 2026-12; copied into
 * shared/MESSENGER.md §9). `until` null: Meta has not set the date yet. Add a row when Meta
 * releases a version; the table is the one place that knows them.
 */
export interface GraphVersion {
  version: string
  released: string
  /** The last day Meta serves it (UTC); after it, calls are served by the oldest version still available. */
  until: string | null
}

export const GRAPH_VERSIONS: readonly GraphVersion[] = [
  { version: 'v26.0', released: '2026-07-29', until: null },
  { version: 'v25.0', released: '2026-02-18', until: '2028-07-29' },
  { version: 'v24.0', released: '2025-10-08', until: '2028-02-18' },
  { version: 'v23.0', released: '2025-05-29', until: '2027-10-08' },
  { version: 'v22.0', released: '2025-01-21', until: '2027-05-20' },
  { version: 'v21.0', released: '2024-10-02', until: '2027-01-21' },
  { version: 'v20.0', released: '2024-05-21', until: '2026-09-24' },
]

/** The newest version: the default, so that a deployment gets the longest support. */
export const DEFAULT_GRAPH_VERSION = GRAPH_VERSIONS[0].version

/** Days before a version's end from which start-up warns. */
export const VERSION_WARNING_DAYS = 90

const DAY_MS = 86_400_000

const endOf = (v: GraphVersion): number | null => (v.until === null ? null : Date.parse(`${v.until}T23:59:59.999Z`))

export type VersionStatus =
  | { status: 'current', version: string, until: string | null }
  | { status: 'retiring', version: string, until: string, days_left: number }
  | { status: 'retired', version: string, until: string, served_as: string }
  | { status: 'unknown', version: string }

/** What Meta does with calls to `version` at `now`. */
export function versionStatus (version: string, now: number = Date.now()): VersionStatus {
  const known = GRAPH_VERSIONS.find((v) => v.version === version)
  if (!known) return { status: 'unknown', version }
  const end = endOf(known)
  if (end === null || known.until === null) return { status: 'current', version, until: null }
  if (now > end) return { status: 'retired', version, until: known.until, served_as: oldestServed(now) }
  const daysLeft = Math.floor((end - now) / DAY_MS)
  if (daysLeft < VERSION_WARNING_DAYS) return { status: 'retiring', version, until: known.until, days_left: daysLeft }
  return { status: 'current', version, until: known.until }
}

/** The oldest version Meta still serves at `now`: where it sends calls made to a retired one. */
export function oldestServed (now: number = Date.now()): string {
  const alive = GRAPH_VERSIONS.filter((v) => { const end = endOf(v); return end === null || now <= end })
  return (alive[alive.length - 1] ?? GRAPH_VERSIONS[0]).version
}

/** The start-up warning for `version`, or null when it is served for longer than VERSION_WARNING_DAYS. */
export function versionWarning (version: string, now: number = Date.now()): string | null {
  const s = versionStatus(version, now)
  switch (s.status) {
    case 'current': return null
    case 'retiring':
      return `GRAPH_API_VERSION ${version} is served by Meta until ${s.until} (${s.days_left} days left); move to ${DEFAULT_GRAPH_VERSION}.`
    case 'retired':
      return `GRAPH_API_VERSION ${version} was retired on ${s.until}: Meta now serves its calls as ${s.served_as}, which may behave differently; move to ${DEFAULT_GRAPH_VERSION}.`
    case 'unknown':
      return `GRAPH_API_VERSION ${version} is not a version this build knows (newest known: ${DEFAULT_GRAPH_VERSION}); check Meta's changelog.`
  }
}
