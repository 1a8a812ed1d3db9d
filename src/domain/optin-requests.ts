import { sql, type Selectable } from 'kysely'
import type { Config } from '../config.js'
import type { Database } from '../db/database.js'
import type { OptinRequestsTable } from '../db/types.js'
import type { GraphClient } from '../graph/client.js'
import { classifyGraphError, type GraphError } from '../graph/errors.js'
import { DomainError, notFound, type DomainCode } from './errors.js'
import { decide, TEMPORARY_RETRY_AFTER_SECONDS } from './lifecycle.js'
import { recordPageError } from './pages.js'
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

/**
 * Sends the "Notify Me" request (one_time_notif_req) for a topic to one person, only inside their
 * 24-hour window and at most once per OPTIN_REQUEST_INTERVAL_SECONDS per (topic, person), so the
 * Page is not flagged for repeating itself. Requests that go to Meta are recorded with their outcome;
 * refusals decided here (window closed, throttled) send nothing and record nothing.
 */
export async function requestOptin (deps: OptinRequestDeps, topicId: string, input: { psid: string, title?: string }): Promise<OptinRequestView> {
  const { db } = deps
  const topic = await db.selectFrom('topics').select(['id', 'page_id', 'title', 'payload']).where('id', '=', topicId).executeTakeFirst()
  if (!topic) throw notFound('topic', topicId)
  const page = await db.selectFrom('pages').select(['id', 'access_token']).where('id', '=', topic.page_id).executeTakeFirst()
  if (!page) throw notFound('page', topic.page_id)
  if (page.access_token === null) {
    throw new DomainError('page_without_access_token', `Page ${page.id} has no access token; PUT /v1/pages/${page.id} with one first.`)
  }
  const subscriber = await db.selectFrom('subscribers').select('last_interaction_at')
    .where('page_id', '=', topic.page_id).where('psid', '=', input.psid).executeTakeFirst()
  if (!windowIsOpen(subscriber?.last_interaction_at ?? null)) {
    throw new DomainError('window_closed',
      'Meta lets a Page ask for an opt-in only within 24 hours of the person\'s last message; this person has not written since.')
  }
  const title = input.title ?? topic.title
  const row = await reserveSlot(deps, { topic_id: topic.id, page_id: topic.page_id, psid: input.psid, title, payload: topic.payload })

  const outcome = await deps.graph.sendMessage({ id: page.id, accessToken: page.access_token }, {
    recipient: { id: input.psid },
    messaging_type: 'RESPONSE',
    message: { attachment: { type: 'template', payload: { template_type: 'one_time_notif_req', title, payload: topic.payload } } },
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

/**
 * The throttle, race-safe: under a transaction-level advisory lock on (topic, person), the last
 * request that may have reached the person (in flight, sent, or unanswered) decides; otherwise a
 * pending row is written in the same transaction, so a concurrent request sees it.
 */
async function reserveSlot (deps: OptinRequestDeps, values: { topic_id: string, page_id: string, psid: string, title: string, payload: string }): Promise<OptinRequestRow> {
  const interval = deps.config.OPTIN_REQUEST_INTERVAL_SECONDS
  return deps.db.transaction().execute(async (trx) => {
    if (interval > 0) {
      await sql`select pg_advisory_xact_lock(hashtextextended(${`optin:${values.topic_id}:${values.psid}`}, 0))`.execute(trx)
      const { rows: [last] } = await sql<{ wait: number }>`
        select ceil(extract(epoch from (created_at + make_interval(secs => ${interval}) - now())))::int as wait
          from optin_requests
         where page_id = ${values.page_id} and topic_id = ${values.topic_id} and psid = ${values.psid}
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

async function settle (db: Database, row: { id: string, page_id: string }, status: 'sent' | 'failed', graphMessageId: string | null, error: StoredError | null): Promise<OptinRequestRow> {
  return db.updateTable('optin_requests')
    .set({ status, graph_message_id: graphMessageId, error: error ? JSON.stringify(error) : null })
    .where('page_id', '=', row.page_id).where('id', '=', row.id).returningAll().executeTakeFirstOrThrow() as Promise<OptinRequestRow>
}
