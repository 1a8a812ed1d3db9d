// Recording webhook deliveries: one statement per batch stores the raw bodies, tokens, recurring
// opt-ins and people a parsed delivery (webhook-body.ts) carries, group-committed (DeliveryWriter).
import { sql } from 'kysely'
import type { Database } from '../db/database.js'
import { activeKeyring } from '../crypto/secret-box.js'
import { GroupCommit } from '../db/group-commit.js'
import { ingestHistory } from './consent-history.js'
import { erasureKey, notErased, subjectOf } from './erasure.js'
import { insertTokens, recordRecurring, storedToken } from './token-store.js'
import { mentionSubjects, type Delivery } from './webhook-body.js'

export interface Recorded {
  /** The stored delivery: this one's, or for a duplicate the one stored first. */
  event_id: string
  /** The same bytes were delivered before (Meta re-delivers for up to 36 hours): nothing was stored again. */
  duplicate: boolean
  /** Usable tokens this delivery added; a token already held (a re-delivery) is not counted again. */
  tokens_recorded: number
  /** Tokens this delivery added already expired (opted in over a year before): kept, never usable. */
  tokens_expired: number
}

/** What a delivery changed, as the webhook answers it (WebhookReceiptSchema). */
export function receiptOf (delivery: Delivery, recorded: Recorded) {
  const received = delivery.tokens.length + new Set(delivery.recurring.filter((r) => r.event === 'optin').map((r) => `${r.page_id}\u0000${r.token}`)).size
  const reasons: Record<string, number> = { ...delivery.skipped }
  if (recorded.tokens_expired > 0) reasons.token_expired = recorded.tokens_expired
  return {
    event_id: recorded.event_id,
    duplicate: recorded.duplicate,
    object: delivery.object,
    tokens_received: received,
    tokens_recorded: recorded.tokens_recorded,
    tokens_unusable: recorded.tokens_expired,
    tokens_already_held: received - recorded.tokens_recorded - recorded.tokens_expired,
    interactions: delivery.interactions,
    ignored_events: delivery.ignored_events,
    rejected_events: delivery.rejected_events,
    restamped_events: delivery.restamped_events,
    recurring_stops: delivery.recurring.filter((r) => r.event === 'stop').length,
    recurring_resumes: delivery.recurring.filter((r) => r.event === 'resume').length,
    reasons,
  }
}

/** One signed delivery, parsed, waiting to be stored. */
export interface DeliveryInput {
  raw: Buffer
  signature: string
  delivery: Delivery
}

/**
 * Stores deliveries in one statement: one round trip and one transaction for all of them, so a
 * failure leaves nothing behind and Meta's retry brings it all again. Each raw body goes into
 * webhook_events (sealed: docs/SECURITY.md, with `mentions`, the erasure subjects of the people its
 * events name), each new token into the token store (naming its event), each person's first-seen and
 * last-interaction times into subscribers. A body already stored (the same bytes: its keyed digest
 * under the current key is unique among a Page's stored deliveries) is a re-delivery: it is answered
 * with the first one's event and changes nothing; the unique index decides between concurrent
 * statements, so it holds across instances. A copy stored under an older key, or before encryption
 * (the unkeyed SHA-256), is found by its digest under that key (keyedDigests) until rotate-keys
 * re-digests it. Rows are written in key order (events by digest, tokens, people) and tokens and people
 * only after every event row is settled, so that concurrent statements over the same deliveries or
 * people never deadlock; a token already held is left as it is (another POST with it); a person's
 * last interaction only moves forward, however deliveries are ordered. Times later than the
 * database's clock are held at its `now()`: a skewed clock must not keep the window open longer than
 * it is.
 */
export async function recordDeliveries (db: Database, inputs: DeliveryInput[], subjectKey: Buffer = erasureKey({})): Promise<Recorded[]> {
  // Each person's erasure digest (erasure.ts): an event about an erased person older than the erasure is not recorded.
  // (Once per person of the statement: a delivery names its person in the token and again as a subscriber.)
  const subjects = new Map<string, string>()
  const subject = (r: { page_id: string, psid: string }): string => {
    const name = `${r.page_id}\u0000${r.psid}`
    let hex = subjects.get(name)
    if (hex === undefined) subjects.set(name, hex = subjectOf(subjectKey, r.page_id, r.psid).toString('hex'))
    return hex
  }
  const tokens = inputs.flatMap(({ delivery }, ord) => delivery.tokens.map((t) => ({ ...t, ord, subject: subject(t) })))
  const recurring = inputs.flatMap(({ delivery }, ord) => delivery.recurring.map((r) => ({ ...r, ord, subject: subject(r) })))
  const people = inputs.flatMap(({ delivery }, ord) => delivery.subscribers.map((p) => ({ ...p, ord, subject: subject(p), at: p.last_interaction_at ?? p.first_seen_at })))
  const keyring = activeKeyring()
  const bodies = inputs.map((i) => keyring.sealBytes('webhook_events.body', i.raw))
  // Each body's digest as stored, and every digest a stored copy may carry (each configured key's, then the unkeyed SHA-256), one row each.
  const bodyDigests = inputs.map((i) => keyring.digests('webhook_body', i.raw))
  const digests = bodyDigests.map((all) => all[0])
  const lookups = bodyDigests.flatMap((all, ord) => all.map((digest) => ({ ord, digest })))
  const named = inputs.flatMap(({ delivery }, ord) => mentionSubjects(delivery.named, subjectKey).map((subject) => ({ ord, subject })))
  // A delivery that mentions a person in an event older than their erasure (Meta re-delivering what
  // the erasure deleted) is stored without its body: its digest still answers a later re-delivery as
  // a duplicate, and the person's id does not come back into webhook_events.
  const mentions = [...tokens.map((t) => ({ ord: t.ord, page_id: t.page_id, subject: t.subject, at: t.opted_in_at })),
    ...recurring.map((r) => ({ ord: r.ord, page_id: r.page_id, subject: r.subject, at: r.at })),
    ...people.map((p) => ({ ord: p.ord, page_id: p.page_id, subject: p.subject, at: p.at }))]
  // Across the deliveries of one statement, the rules parseDelivery applies within one body: a token
  // is recorded once, from its earliest opt-in (for that delivery); a person is written once, with
  // the earliest first sight and the latest interaction. `prior` is a copy already stored under any
  // key's digest (or the unkeyed one); for the others, the no-op update on a digest already stored
  // returns that row (waiting for a concurrent statement that stores it to commit); `fresh` holds the
  // deliveries whose own row was stored, and the sorts below read all of it before writing. A
  // withheld body is stored empty and mentions no one.
  const { rows } = await sql<Recorded>`
    with withheld as (
      select distinct (m.value ->> 'ord')::int as ord
        from jsonb_array_elements(${JSON.stringify(mentions)}::jsonb) m
       where exists (select 1 from consent_history h
                      where h.type = 'erased' and h.page_id = m.value ->> 'page_id'
                        and h.subject = decode(m.value ->> 'subject', 'hex')
                        and h.at >= (m.value ->> 'at')::timestamptz)
    ), input as (
      select nextval(pg_get_serial_sequence('webhook_events', 'id')) as id, e.ord, e.page_id, e.signature, e.object,
             case when e.ord in (select ord from withheld) then ''::bytea else e.body end as body, e.digest,
             case when e.ord in (select ord from withheld) then '{}'::bytea[]
                  else coalesce((select array_agg(m.subject order by m.subject)
                                   from unnest(${named.map((m) => m.ord)}::int[], ${named.map((m) => m.subject)}::bytea[]) as m(ord, subject)
                                  where m.ord = e.ord), '{}'::bytea[]) end as mentions
        from unnest(${inputs.map((_, i) => i)}::int[], ${inputs.map((i) => i.delivery.page_id)}::text[],
                    ${inputs.map((i) => i.signature)}::text[], ${inputs.map((i) => i.delivery.object)}::text[],
                    ${bodies}::bytea[], ${digests}::bytea[]) as e(ord, page_id, signature, object, body, digest)
    ), prior as (
      select distinct on (input.ord) input.ord, w.id
        from input
        join unnest(${lookups.map((l) => l.ord)}::int[], ${lookups.map((l) => l.digest)}::bytea[]) as l(ord, digest) on l.ord = input.ord
        join webhook_events w on w.page_id = input.page_id and w.digest = l.digest
       order by input.ord, w.id
    ), event as (
      insert into webhook_events (id, page_id, signature, object, body, digest, mentions) overriding system value
      select distinct on (page_id, digest) id, page_id, signature, object, body, digest, mentions from input
       where ord not in (select ord from prior)
       order by page_id, digest, ord
      on conflict (page_id, digest) where digest is not null do update set digest = excluded.digest
      returning id, page_id, digest
    ), fresh as (
      select input.ord, input.id from input join event on event.id = input.id
    ), new_tokens as (${insertTokens(notErased(JSON.stringify(tokens.map(storedToken)), 'opted_in_at'), 'fresh')}
    ), ${recordRecurring(notErased(JSON.stringify(recurring.map(storedToken)), 'at'), 'fresh')}, history as (${ingestHistory('new_tokens', 'rec_in', 'rec_written')}
    ), added as (
      select webhook_event_id, state from new_tokens
      union all
      select webhook_event_id, state from rec_written where inserted
    ), touched as (
      insert into subscribers (page_id, psid, first_seen_at, last_interaction_at)
      select s.page_id, s.psid, least(min(s.first_seen_at), now()),
             case when max(s.last_interaction_at) is not null then least(max(s.last_interaction_at), now()) end
      from jsonb_to_recordset(${notErased(JSON.stringify(people), 'at')})
        as s(ord int, page_id text, psid text, first_seen_at timestamptz, last_interaction_at timestamptz)
        join fresh on fresh.ord = s.ord
      group by s.page_id, s.psid
      order by s.page_id, s.psid
      on conflict (page_id, psid) do update set
        first_seen_at = least(subscribers.first_seen_at, excluded.first_seen_at),
        last_interaction_at = greatest(subscribers.last_interaction_at, excluded.last_interaction_at),
        updated_at = now()
    )
    select coalesce(prior.id, event.id)::text as event_id, coalesce(prior.id, event.id) <> input.id as duplicate,
           count(added.webhook_event_id) filter (where added.state = 'available')::int as tokens_recorded,
           count(added.webhook_event_id) filter (where added.state = 'expired')::int as tokens_expired
      from input
      left join prior on prior.ord = input.ord
      left join event on prior.ord is null and event.page_id = input.page_id and event.digest = input.digest
      left join added on added.webhook_event_id = input.id
     group by input.ord, input.id, event.id, prior.id
     order by input.ord
  `.execute(db)
  return rows
}

/**
 * Group commit for webhook deliveries (see GroupCommit): a POST is answered only once its delivery
 * is committed; deliveries that arrive while a statement runs go together in the next one.
 */
export class DeliveryWriter extends GroupCommit<DeliveryInput, Recorded> {
  /** `subjectKey`: the erasure digest's key (erasureKey of the config). */
  constructor (db: Database, maxBatch = 100, maxInFlight = 2, subjectKey: Buffer = erasureKey({})) {
    super((inputs) => recordDeliveries(db, inputs, subjectKey), maxBatch, maxInFlight)
  }
}
