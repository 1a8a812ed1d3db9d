/**
 * Broadcast audiences: the filters a campaign narrows a topic's audience with, what each means,
 * and the estimate before sending. The SQL is the token store's (audienceMatch); this module checks
 * a filter, resolves its topics on the Page and hands the token store one AudienceQuery.
 */
import type { Database } from '../db/database.js'
import type { TokenKind } from './lifecycle.js'
import { DomainError, notFound } from './errors.js'
import { audienceEstimate, type AudienceQuery } from './token-store.js'
import { WINDOW_MS } from './window.js'

/**
 * What the caller may narrow a topic audience by; every filter given must hold (AND). Times are
 * ISO strings: `_after` includes its instant, `_before` excludes it. Token filters ask that the
 * person hold one usable token on the topic matching them all; person filters are about the
 * person on the Page.
 */
export interface AudienceFilter {
  /** Token: opted in at or after. */
  opted_in_after?: string
  /** Token: opted in before. */
  opted_in_before?: string
  /** Token: of this kind (`any` or absent: either). The broadcast then sends only with that kind. */
  token_kind?: TokenKind | 'any'
  /** Token: expires before (a last call before people's tokens lapse). */
  expiring_before?: string
  /** Person: last wrote to the Page at or after (never: no). */
  last_interaction_after?: string
  /** Person: last wrote to the Page before (never: yes). */
  last_interaction_before?: string
  /** Person: their 24-hour window is open or closed now (`any` or absent: either). */
  window?: 'open' | 'closed' | 'any'
  /** Person: also holds a usable token on each of these topics of the Page. */
  holds_topics?: string[]
  /** Person: holds no usable token on any of these topics of the Page. */
  excludes_topics?: string[]
  /** Person: no message from this service reached them (sent or unconfirmed, any topic) at or after this time. */
  not_notified_since?: string
  /** Person: one of these. */
  psids?: string[]
  /** Person: none of these. */
  exclude_psids?: string[]
}

export const WINDOW_SECONDS = WINDOW_MS / 1000

const iso = (v: string | undefined): string | undefined => v === undefined ? undefined : new Date(v).toISOString()
const set = (v: string[] | undefined): string[] | undefined => v === undefined ? undefined : [...new Set(v)].sort()

/**
 * The filter in one canonical form (times in UTC ISO, lists sorted without duplicates, `any` and
 * empty lists dropped): what is stored on the broadcast and hashed for its Idempotency-Key.
 * Undefined when nothing is left to filter by. An empty range is refused: it can only be a mistake.
 */
export function normalizeAudience (f: AudienceFilter | undefined): AudienceFilter | undefined {
  if (f === undefined) return undefined
  const out: AudienceFilter = {
    opted_in_after: iso(f.opted_in_after),
    opted_in_before: iso(f.opted_in_before),
    token_kind: f.token_kind === 'any' ? undefined : f.token_kind,
    expiring_before: iso(f.expiring_before),
    last_interaction_after: iso(f.last_interaction_after),
    last_interaction_before: iso(f.last_interaction_before),
    window: f.window === 'any' ? undefined : f.window,
    holds_topics: set(f.holds_topics),
    excludes_topics: set(f.excludes_topics),
    not_notified_since: iso(f.not_notified_since),
    psids: set(f.psids),
    exclude_psids: set(f.exclude_psids),
  }
  for (const [after, before] of [['opted_in_after', 'opted_in_before'], ['last_interaction_after', 'last_interaction_before']] as const) {
    const a = out[after]
    const b = out[before]
    if (a !== undefined && b !== undefined && a >= b) {
      throw new DomainError('audience_range_empty', `audience.${after} (${a}) must be before audience.${before} (${b}): nobody can match.`)
    }
  }
  const both = (out.holds_topics ?? []).filter((id) => out.excludes_topics?.includes(id))
  if (both.length > 0) {
    throw new DomainError('audience_range_empty', `audience.holds_topics and audience.excludes_topics both name ${both.join(', ')}: nobody can match.`)
  }
  const kept = Object.fromEntries(Object.entries(out).filter(([, v]) => v !== undefined && !(Array.isArray(v) && v.length === 0)))
  return Object.keys(kept).length > 0 ? kept as AudienceFilter : undefined
}

export interface AudienceTopic { page_id: string, payload: string }

/**
 * The token store's query for a topic and a (normalized) filter. Topics of holds_topics and
 * excludes_topics are looked up on the topic's Page: an unknown one (or another Page's) is refused
 * with `audience_topic_not_found` when `strict` (creating, estimating). At planning (not strict) a
 * topic deleted since creation is held by nobody: holds_topics matches nobody, excludes_topics excludes nobody.
 */
export async function audienceQuery (db: Database, topic: AudienceTopic, f: AudienceFilter | undefined, strict: boolean): Promise<AudienceQuery> {
  const { holds_topics: holdsTopics, excludes_topics: excludesTopics, token_kind: kind, window, ...rest } = f ?? {}
  const ids = [...(holdsTopics ?? []), ...(excludesTopics ?? [])]
  const payloads = new Map<string, string>()
  if (ids.length > 0) {
    const rows = await db.selectFrom('topics').select(['id', 'payload']).where('page_id', '=', topic.page_id).where('id', 'in', ids).execute()
    for (const r of rows) payloads.set(r.id, r.payload)
    const missing = ids.filter((id) => !payloads.has(id))
    if (strict && missing.length > 0) {
      throw new DomainError('audience_topic_not_found', `No topic ${missing.join(', ')} on Page ${topic.page_id} (audience.holds_topics / audience.excludes_topics).`)
    }
  }
  const holds = holdsTopics?.map((id) => payloads.get(id))
  return {
    page_id: topic.page_id,
    payload: topic.payload,
    ...rest,
    ...(kind !== undefined && kind !== 'any' ? { token_kind: kind } : {}),
    ...(window !== undefined && window !== 'any' ? { window } : {}),
    ...(holds !== undefined ? { holds: holds.every((p) => p !== undefined) ? holds as string[] : false } : {}),
    ...(excludesTopics !== undefined ? { excludes: excludesTopics.flatMap((id) => payloads.get(id) ?? []) } : {}),
  }
}

/** The estimate's numbers: the audience and the route each person would take now. */
export interface Estimate { audience: number, by_route: { window: number, recurring: number, token: number } }

export async function estimateOf (db: Database, q: AudienceQuery, useWindow: boolean): Promise<Estimate> {
  const { rows: [r] } = await audienceEstimate(q, WINDOW_SECONDS, useWindow).execute(db)
  return { audience: r.audience, by_route: { window: r.window, recurring: r.recurring, token: r.token } }
}

/** Who a broadcast is for, as a request gives it: a topic (narrowed by `audience`), or an explicit list. */
export interface AudienceInput {
  topic_id: string
  use_window?: boolean
  audience?: AudienceFilter
  psids?: string[]
}

/** The explicit list and the normalized filter of a request; the two together are refused. */
export function audienceOf (input: AudienceInput): { psids?: string[], filter?: AudienceFilter } {
  if (input.psids !== undefined && input.audience !== undefined) {
    throw new DomainError('audience_with_psids',
      'Give either psids (an explicit audience) or audience (filters of the topic audience; audience.psids narrows it to a list).')
  }
  if (input.psids !== undefined) return { psids: [...new Set(input.psids)].sort() }
  const filter = normalizeAudience(input.audience)
  return filter ? { filter } : {}
}

/**
 * POST /v1/broadcasts/estimate: the audience a broadcast with this body would have now, and the
 * route each person would take, without creating anything. An explicit list counts as given; its
 * routes are those of the people on it who hold a usable token, the others are `without_token`
 * (reached only through an open window, else counted no_token).
 */
export async function estimateBroadcast (db: Database, input: AudienceInput): Promise<Estimate & { by_route: { without_token: number } }> {
  const { psids, filter } = audienceOf(input)
  const topic = await db.selectFrom('topics').select(['page_id', 'payload']).where('id', '=', input.topic_id).executeTakeFirst()
  if (!topic) throw notFound('topic', input.topic_id)
  const useWindow = input.use_window ?? true
  if (psids) {
    const holders = await estimateOf(db, { page_id: topic.page_id, payload: topic.payload, psids }, useWindow)
    return { audience: psids.length, by_route: { ...holders.by_route, without_token: psids.length - holders.audience } }
  }
  const e = await estimateOf(db, await audienceQuery(db, topic, filter, true), useWindow)
  return { ...e, by_route: { ...e.by_route, without_token: 0 } }
}
