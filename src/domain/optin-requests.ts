import { sql, type RawBuilder, type Selectable } from 'kysely'
import type { Config } from '../config.js'
import type { Database } from '../db/database.js'
import { SecretUnreadableError, tryOpenSecret } from '../crypto/secret-box.js'
import type { OptinRequestsTable, RecurringFrequency, TokenKind } from '../db/types.js'
import type { GraphClient } from '../graph/client.js'
import { classifyGraphError, type GraphError } from '../graph/errors.js'
import { recordHistory } from './consent-history.js'
import { DomainError, notFound, type DomainCode } from './errors.js'
import { decide, TEMPORARY_RETRY_AFTER_SECONDS } from './lifecycle.js'
import { recordPageError } from './pages.js'
import { timeZone } from './timezones.js'
import { windowIsOpen } from './window.js'

export interface OptinRequestDeps {
  db: Database
  graph: GraphClient
  config: Pick<Config, 'OPTIN_REQUEST_INTERVAL_SECONDS'>
}

/** Stored error: Meta's, or ours when Meta did not answer (`ambiguous`: it may have reached the person). */
type StoredError = GraphError & { ambiguous?: boolean }

export interface OptinRequestView {
  id: string
  topic_id: string
  page_id: string
  psid: string
  title: string
  payload: string
  status: 'pending' | 'sent' | 'failed'
  kind: TokenKind
  graph_message_id?: string
  error?: StoredError
  created_at: string
}

type OptinRequestRow = Selectable<OptinRequestsTable>

function optinRequestView (r: OptinRequestRow): OptinRequestView {
  return {
    id: r.id,
    topic_id: r.topic_id,
    page_id: r.page_id,
    psid: r.psid,
    title: r.title,
    payload: r.payload,
    status: r.status,
    kind: r.kind,
    ...(r.graph_message_id !== null ? { graph_message_id: r.graph_message_id } : {}),
    ...(r.error ? { error: r.error as unknown as StoredError } : {}),
    created_at: r.created_at.toISOString(),
  }
}

// Meta restricting opt-in requests for the Page (MESSENGER.md §1).
const OPTIN_RESTRICTED = (e: GraphError) => (e.code === 10 && e.subcode === 1404170) || (e.code === 9 && e.subcode === 2018352)
// Meta's "this person was already asked on this topic": remembered like a request that was sent.
const ALREADY_ASKED = { code: 613, subcode: 1893016 }
const alreadyAsked = (e: GraphError) => e.code === ALREADY_ASKED.code && e.subcode === ALREADY_ASKED.subcode

export interface OptinRequestInput {
  psid: string
  /** Default: the topic's title. */
  title?: string
  /** Default: one_time_notif. */
  kind?: TokenKind
  // Recurring only (kind notification_messages): the template's options, under Meta's names in the request.
  frequency?: RecurringFrequency
  image_url?: string
  cta_text?: string
  reoptin?: boolean
  /** IANA; default: the Page's time zone. */
  timezone?: string
}

/** Meta's rule for recurring opt-in requests: one per title and person in this long. */
export const RECURRING_REQUEST_WEEK_SECONDS = 7 * 24 * 60 * 60

/** The template a request sends: Meta's one_time_notif_req, or its notification_messages (recurring) with the options given. */
function template (kind: TokenKind, title: string, payload: string, input: OptinRequestInput, timezone: string): Record<string, unknown> {
  if (kind === 'one_time_notif') return { template_type: 'one_time_notif_req', title, payload }
  return {
    template_type: 'notification_messages',
    title,
    payload,
    ...(input.image_url !== undefined ? { image_url: input.image_url } : {}),
    ...(input.frequency !== undefined ? { notification_messages_frequency: input.frequency } : {}),
    ...(input.cta_text !== undefined ? { notification_messages_cta_text: input.cta_text } : {}),
    // Meta documents only ENABLED: without it, Meta does not ask the person to re-opt-in.
    ...(input.reoptin === true ? { notification_messages_reoptin: 'ENABLED' } : {}),
    notification_messages_timezone: timezone,
  }
}

/**
 * Sends an opt-in request for a topic to one person, only inside their 24-hour window: the "Notify
 * Me" request (one_time_notif_req), at most once per OPTIN_REQUEST_INTERVAL_SECONDS per (topic,
 * person), so the Page is not flagged for repeating itself; or the recurring request
 * (notification_messages), at most once per title, person and week (Meta's rule, enforced here
 * before calling Meta; the OTN interval does not apply to it, nor does it count toward it). Requests
 * that go to Meta are recorded with their kind and outcome; refusals decided here (window closed,
 * throttled, bad time zone) send nothing and record nothing.
 */
/** `createdBy`: the name of the API key asking (the request's created_by). */
export async function requestOptin (deps: OptinRequestDeps, topicId: string, input: OptinRequestInput, createdBy?: string): Promise<OptinRequestView> {
  const { db } = deps
  const kind: TokenKind = input.kind ?? 'one_time_notif'
  const topic = await db.selectFrom('topics').select(['id', 'page_id', 'title', 'payload']).where('id', '=', topicId).executeTakeFirst()
  if (!topic) throw notFound('topic', topicId)
  const page = await db.selectFrom('pages').select(['id', 'access_token', 'timezone']).where('id', '=', topic.page_id).executeTakeFirst()
  if (!page) throw notFound('page', topic.page_id)
  const zone = kind === 'notification_messages' && input.timezone !== undefined ? await timeZone(db, input.timezone) : page.timezone
  if (page.access_token === null) {
    throw new DomainError('page_without_access_token', `Page ${page.id} has no access token; PUT /v1/pages/${page.id} with one first.`)
  }
  const subscriber = await db.selectFrom('subscribers').select('last_interaction_at')
    .where('page_id', '=', topic.page_id).where('psid', '=', input.psid).executeTakeFirst()
  if (!windowIsOpen(subscriber?.last_interaction_at ?? null)) {
    throw new DomainError('window_closed',
      'Meta lets a Page ask for an opt-in only within 24 hours of the person\'s last message; this person has not written since.')
  }
  const credentials = { id: page.id, accessToken: pageToken(page.id, page.access_token) }
  const title = input.title ?? topic.title
  const values = { topic_id: topic.id, page_id: topic.page_id, psid: input.psid, title, payload: topic.payload, kind, created_by: createdBy ?? null }
  const row = kind === 'notification_messages' ? await reserveWeek(db, values) : await reserveSlot(deps, values)

  const outcome = await deps.graph.sendMessage(credentials, {
    recipient: { id: input.psid },
    messaging_type: 'RESPONSE',
    message: { attachment: { type: 'template', payload: template(kind, title, topic.payload, input, zone) } },
  })
  if (outcome.kind === 'ok') {
    return optinRequestView(await settle(db, row, 'sent', outcome.messageId, null))
  }
  if (outcome.kind === 'no_answer') {
    const error: StoredError = {
      code: null, subcode: null, fbtrace_id: null,
      message: outcome.sent ? `No answer from the Graph API (${outcome.reason}); the request may have reached the person.` : `The Graph API could not be reached (${outcome.detail}).`,
      ...(outcome.sent ? { ambiguous: true } : {}),
    }
    const failed = optinRequestView(await settle(db, row, 'failed', null, error))
    throw outcome.sent
      ? new DomainError('graph_unconfirmed', `${error.message} It is not sent again, and counts toward the throttle.`, { optin_request: failed })
      : new DomainError('graph_unreachable', `${error.message} Nothing was sent.`, { retryAfterSeconds: TEMPORARY_RETRY_AFTER_SECONDS, optin_request: failed })
  }

  const failed = optinRequestView(await settle(db, row, 'failed', null, outcome.error))
  const extra = { graph: outcome.error, optin_request: failed }
  if (alreadyAsked(outcome.error) && kind === 'notification_messages') {
    // Counted by the weekly rule like a request that was sent (reserveWeek): the next one waits a week from this one.
    throw weeklyLimit(row.created_at, RECURRING_REQUEST_WEEK_SECONDS, `Meta says this person was already asked this recently. Meta said: ${outcome.error.message}`, extra)
  }
  if (alreadyAsked(outcome.error)) {
    // Meta does not say for how long; the next request waits our own interval, refused here without a Graph call.
    const wait = Math.max(1, deps.config.OPTIN_REQUEST_INTERVAL_SECONDS)
    throw new DomainError('optin_request_throttled',
      `Meta says this person was already asked to opt in to this topic recently; ask again in ${wait} s. Meta said: ${outcome.error.message}`,
      { ...extra, retryAfterSeconds: wait })
  }
  if (OPTIN_RESTRICTED(outcome.error)) {
    await recordPageError(db, page.id, outcome.error)
    throw new DomainError('graph_optin_restricted', `Meta restricts opt-in requests for this Page. Meta said: ${outcome.error.message}`, extra)
  }
  // A request goes out like a window send: the lifecycle table says what Meta's refusal means.
  const decision = decide({ kind: 'one_time_notif', route: 'window', ambiguous: false, exhausted: true, recovering: false },
    { kind: 'refused', cause: classifyGraphError(outcome.httpStatus, outcome.error) })
  if (decision.pageUnhealthy) await recordPageError(db, page.id, outcome.error)
  if (decision.next === 'token_route') {
    throw new DomainError('window_closed', `Meta says the person's window is closed. Meta said: ${outcome.error.message}`, extra)
  }
  throw new DomainError(decision.code as DomainCode, `${decision.detail} Meta said: ${outcome.error.message}`, {
    ...extra,
    ...(decision.retryAfterSeconds !== undefined ? { retryAfterSeconds: decision.retryAfterSeconds } : {}),
  })
}

/** A request that may have reached the person (in flight, sent, unanswered) or that Meta said repeats one, as SQL over `r`. */
const MAY_HAVE_ASKED = sql`(r.status in ('pending', 'sent')
  or (r.status = 'failed' and ((r.error ->> 'ambiguous')::boolean
                              or ((r.error ->> 'code')::int = ${ALREADY_ASKED.code} and (r.error ->> 'subcode')::int = ${ALREADY_ASKED.subcode}))))`

/**
 * Meta's weekly rule for recurring requests, race-safe like reserveSlot: under an advisory lock on
 * (Page, person, title), the latest recurring request with this title to this person in the last
 * week that may have reached them (on any topic of the Page) refuses the request until a week after
 * it; otherwise a pending row is written in the same transaction. Sent requests are found through
 * optin_requests_recurring_idx; the few others (in flight, unanswered) through the Page's topics.
 */
async function reserveWeek (db: Database, values: NewRequest): Promise<OptinRequestRow> {
  const week = RECURRING_REQUEST_WEEK_SECONDS
  return db.transaction().execute(async (trx) => {
    await sql`select pg_advisory_xact_lock(hashtextextended(${`optin-recurring:${values.page_id}:${values.psid}:${values.title}`}, 0))`.execute(trx)
    const recent = (status: RawBuilder<unknown>) => sql`
      select r.created_at from optin_requests r
       where r.page_id = ${values.page_id} and r.psid = ${values.psid} and r.title = ${values.title}
         and r.kind = 'notification_messages' and ${status}
         and r.created_at > now() - make_interval(secs => ${week})`
    const { rows: [last] } = await sql<{ created_at: Date }>`
      select created_at from (
        ${recent(sql`r.status = 'sent'`)}
        union all
        ${recent(sql`r.status <> 'sent' and ${MAY_HAVE_ASKED} and r.topic_id in (select id from topics where page_id = ${values.page_id})`)}
      ) asked order by created_at desc limit 1`.execute(trx)
    if (last) throw weeklyLimit(new Date(last.created_at), week, 'Meta allows one recurring opt-in request per title and person a week.')
    return trx.insertInto('optin_requests').values({ ...values, status: 'pending' }).returningAll().executeTakeFirstOrThrow()
  }) as Promise<OptinRequestRow>
}

/** The refusal of Meta's weekly rule: Retry-After and the time the next request is allowed, a week after `askedAt`. */
function weeklyLimit (askedAt: Date, weekSeconds: number, why: string, extra: Record<string, unknown> = {}): DomainError {
  const next = new Date(askedAt.getTime() + weekSeconds * 1000)
  // created_at is rounded to the millisecond: at least a second, at most the week.
  const wait = Math.min(weekSeconds, Math.max(1, Math.ceil((next.getTime() - Date.now()) / 1000)))
  return new DomainError('recurring_optin_weekly_limit',
    `${why} This title was asked of this person at ${askedAt.toISOString()}; ask again from ${next.toISOString()}.`,
    { ...extra, retryAfterSeconds: wait, next_request_at: next.toISOString() })
}

/**
 * The throttle, race-safe: under a transaction-level advisory lock on (topic, person), the last
 * request that may have reached the person (in flight, sent, or unanswered) decides; otherwise a
 * pending row is written in the same transaction, so a concurrent request sees it.
 */
type NewRequest = { topic_id: string, page_id: string, psid: string, title: string, payload: string, kind: TokenKind }

async function reserveSlot (deps: OptinRequestDeps, values: NewRequest): Promise<OptinRequestRow> {
  const interval = deps.config.OPTIN_REQUEST_INTERVAL_SECONDS
  return deps.db.transaction().execute(async (trx) => {
    if (interval > 0) {
      await sql`select pg_advisory_xact_lock(hashtextextended(${`optin:${values.topic_id}:${values.psid}`}, 0))`.execute(trx)
      const { rows: [last] } = await sql<{ wait: number }>`
        select ceil(extract(epoch from (created_at + make_interval(secs => ${interval}) - now())))::int as wait
          from optin_requests
         where page_id = ${values.page_id} and topic_id = ${values.topic_id} and psid = ${values.psid} and kind = 'one_time_notif'
           and (status in ('pending', 'sent')
                or (status = 'failed' and ((error ->> 'ambiguous')::boolean
                                           or ((error ->> 'code')::int = ${ALREADY_ASKED.code} and (error ->> 'subcode')::int = ${ALREADY_ASKED.subcode}))))
           and created_at > now() - make_interval(secs => ${interval})
         order by created_at desc limit 1`.execute(trx)
      if (last) {
        // created_at is rounded to the millisecond, so a request just made can look up to 1 s further away.
        const wait = Math.min(interval, Math.max(1, last.wait))
        throw new DomainError('optin_request_throttled',
          `This person was asked to opt in to this topic less than ${interval} s ago; ask again in ${wait} s.`,
          { retryAfterSeconds: wait })
      }
    }
    return trx.insertInto('optin_requests').values({ ...values, status: 'pending' }).returningAll().executeTakeFirstOrThrow()
  }) as Promise<OptinRequestRow>
}

/** The request's outcome; one that went out is in the person's consent history, written with it. */
async function settle (db: Database, row: { id: string, page_id: string }, status: 'sent' | 'failed', graphMessageId: string | null, error: StoredError | null): Promise<OptinRequestRow> {
  return db.transaction().execute(async (trx) => {
    const settled = await trx.updateTable('optin_requests')
      .set({ status, graph_message_id: graphMessageId, error: error ? JSON.stringify(error) : null })
      .where('page_id', '=', row.page_id).where('id', '=', row.id).returningAll().executeTakeFirstOrThrow() as OptinRequestRow
    if (status === 'sent') {
      await recordHistory(trx, [{
        page_id: settled.page_id, psid: settled.psid, type: 'optin_requested', payload: settled.payload, kind: settled.kind,
        optin_request_id: settled.id, status: 'sent', detail: { title: settled.title, graph_message_id: graphMessageId },
      }])
    }
    return settled
  })
}

/** The Page's access token, decrypted before anything is reserved; unreadable: refused with page_token_unreadable (the key id, never the value). */
function pageToken (pageId: string, stored: string): string {
  const token = tryOpenSecret('pages.access_token', stored)
  if (token instanceof SecretUnreadableError) {
    throw new DomainError('page_token_unreadable', `Page ${pageId}'s access token cannot be read, so nothing was sent: ${token.message}`)
  }
  return token
}
