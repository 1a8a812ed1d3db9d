import t from 'tap'
import {
  BUSY_RETRY_AFTER_SECONDS, decide, PAGE_LEVEL, RATE_LIMIT_RETRY_AFTER_SECONDS, retryOf, TEMPORARY_RETRY_AFTER_SECONDS, transitionFor, TRANSITIONS,
  type Decision, type Route, type SendEvent, type SendSituation, type TokenKind,
} from '../../src/domain/lifecycle.js'
import type { GraphErrorClass } from '../../src/graph/errors.js'

// The lifecycle table alone, without a database: one case per row, then every situation has a row.

const at = (s: Partial<SendSituation>): SendSituation =>
  ({ kind: 'one_time_notif', route: 'token', ambiguous: false, exhausted: false, recovering: false, ...s })
const rec = (s: Partial<SendSituation>): SendSituation => at({ kind: 'notification_messages', route: 'recurring', ...s })
const refused = (cause: GraphErrorClass): SendEvent => ({ kind: 'refused', cause })

const CASES: Array<[string, SendSituation, SendEvent, Partial<Decision>]> = [
  // window route
  ['window: accepted', at({ route: 'window' }), { kind: 'accepted' }, { next: 'finish', status: 'sent', code: 'sent', token: undefined }],
  ['window: closed at Meta', at({ route: 'window' }), refused('outside_window'), { next: 'token_route' }],
  ['window: unknown person', at({ route: 'window' }), refused('token_invalid'), { next: 'finish', status: 'failed', code: 'graph_recipient_invalid' }],
  ['window: unanswered is never re-sent', at({ route: 'window' }), { kind: 'unanswered' }, { next: 'finish', status: 'unconfirmed', code: 'graph_unconfirmed', token: undefined }],
  ['window: unreachable, tries left', at({ route: 'window' }), { kind: 'unreachable' }, { next: 'retry' }],
  ['window: unreachable, last try', at({ route: 'window', exhausted: true }), { kind: 'unreachable' }, { next: 'finish', status: 'failed', code: 'graph_unreachable', retryAfterSeconds: TEMPORARY_RETRY_AFTER_SECONDS }],
  ['window: topic or Page gone', at({ route: 'window' }), { kind: 'target_gone', code: 'topic_not_found' }, { next: 'finish', status: 'failed', code: 'topic_not_found' }],
  // token route
  ['token: gone, maybe sent', at({ ambiguous: true }), { kind: 'target_gone', code: 'page_without_access_token' }, { status: 'unconfirmed', token: 'unconfirmed', code: 'page_without_access_token' }],
  ['token: gone, nothing sent', at({}), { kind: 'target_gone', code: 'topic_not_found' }, { status: 'failed', token: 'released', code: 'topic_not_found' }],
  ['token: too many refused', at({}), { kind: 'token_limit' }, { status: 'failed', code: 'graph_token_refused', token: undefined }],
  ['token: none usable', at({}), { kind: 'no_token' }, { status: 'no_token', code: 'no_token' }],
  ['token: locked for a moment, tries left', at({}), { kind: 'busy' }, { next: 'retry', token: undefined }],
  ['token: locked through every try', at({ exhausted: true }), { kind: 'busy' }, { next: 'finish', status: 'failed', code: 'token_busy', token: undefined, retryAfterSeconds: BUSY_RETRY_AFTER_SECONDS }],
  ['token: accepted', at({ ambiguous: true }), { kind: 'accepted' }, { status: 'sent', token: 'used', code: 'sent' }],
  ['token: transient after a lost answer, tries left', at({ ambiguous: true }), refused('rate_limited'), { next: 'retry' }],
  ['token: transient after a lost answer, recovering', at({ ambiguous: true, exhausted: true, recovering: true }), refused('temporary'), { next: 'defer' }],
  ['token: any refusal after a lost answer', at({ ambiguous: true }), refused('token_invalid'), { status: 'unconfirmed', token: 'unconfirmed', code: 'graph_unconfirmed' }],
  ['token: unanswered, tries left', at({}), { kind: 'unanswered' }, { next: 'retry' }],
  ['token: unanswered, recovering', at({ exhausted: true, recovering: true }), { kind: 'unanswered' }, { next: 'defer' }],
  ['token: unanswered, last try', at({ ambiguous: true, exhausted: true }), { kind: 'unanswered' }, { status: 'unconfirmed', token: 'unconfirmed' }],
  ['token: unreachable, tries left', at({ ambiguous: true }), { kind: 'unreachable' }, { next: 'retry' }],
  ['token: unreachable after a lost answer, recovering', at({ ambiguous: true, exhausted: true, recovering: true }), { kind: 'unreachable' }, { next: 'defer' }],
  ['token: unreachable after a lost answer', at({ ambiguous: true, exhausted: true }), { kind: 'unreachable' }, { status: 'unconfirmed', token: 'unconfirmed' }],
  ['token: unreachable on every try', at({ exhausted: true }), { kind: 'unreachable' }, { status: 'failed', token: 'released', code: 'graph_unreachable', retryAfterSeconds: TEMPORARY_RETRY_AFTER_SECONDS }],
  ['token: Meta names the token', at({}), refused('token_invalid'), { next: 'next_token', token: 'invalid' }],
  ['token: bare (#100)', at({}), refused('message_refused'), { status: 'failed', token: 'invalid', code: 'graph_message_refused', discardOthers: undefined }],
  ['token: topic stopped', at({}), refused('topic_stopped'), { status: 'failed', token: 'invalid', discardOthers: true, code: 'graph_topic_stopped' }],
  // recurring tokens: reusable, never re-sent after a lost answer
  ['recurring: cooling down', rec({}), { kind: 'cooling' }, { next: 'finish', status: 'failed', code: 'recurring_cooldown', token: undefined }],
  ['recurring: unanswered is not re-sent', rec({}), { kind: 'unanswered' }, { next: 'finish', status: 'unconfirmed', token: 'unconfirmed', code: 'graph_unconfirmed' }],
  ['recurring: a refusal after a lost answer (recovery)', rec({ ambiguous: true, recovering: true }), refused('temporary'), { status: 'unconfirmed', token: 'unconfirmed' }],
  ['recurring: unreachable after a lost answer (recovery)', rec({ ambiguous: true, recovering: true }), { kind: 'unreachable' }, { status: 'unconfirmed', token: 'unconfirmed' }],
  ['recurring: Meta\'s frequency limit', rec({}), refused('frequency_limited'), { status: 'failed', token: 'deferred', code: 'recurring_cooldown', retryAfterSeconds: RATE_LIMIT_RETRY_AFTER_SECONDS }],
  ['recurring: stopped at Meta', rec({}), refused('topic_stopped'), { status: 'failed', token: 'stopped', code: 'graph_topic_stopped', discardOthers: undefined }],
  ['recurring: accepted (the shared row)', rec({}), { kind: 'accepted' }, { status: 'sent', token: 'used', code: 'sent' }],
  ['recurring: unreachable, tries left (the shared row)', rec({}), { kind: 'unreachable' }, { next: 'retry' }],
  // both routes
  ['window: bare (#100)', at({ route: 'window' }), refused('message_refused'), { status: 'failed', code: 'graph_message_refused' }],
  ['window: topic stopped', at({ route: 'window' }), refused('topic_stopped'), { status: 'failed', code: 'graph_topic_stopped', discardOthers: undefined }],
  ['temporary', at({}), refused('temporary'), { status: 'failed', token: 'released', code: 'graph_temporary', retryAfterSeconds: TEMPORARY_RETRY_AFTER_SECONDS }],
  ['rate limited', at({ route: 'window' }), refused('rate_limited'), { status: 'failed', code: 'graph_rate_limited', retryAfterSeconds: RATE_LIMIT_RETRY_AFTER_SECONDS }],
  ['frequency limit off the recurring route', at({}), refused('frequency_limited'), { status: 'failed', token: 'released', code: 'graph_frequency_limited', retryAfterSeconds: RATE_LIMIT_RETRY_AFTER_SECONDS }],
  ['person unavailable', at({}), refused('person_unavailable'), { status: 'failed', token: 'released', code: 'graph_person_unavailable', pageUnhealthy: undefined }],
  ['Page restricted', at({}), refused('page_restricted'), { status: 'failed', token: 'released', code: 'graph_page_restricted', pageUnhealthy: true }],
  ['Page token invalid', at({ route: 'window' }), refused('page_token_invalid'), { code: 'graph_page_token_invalid', pageUnhealthy: true }],
  ['permission', at({}), refused('permission'), { code: 'graph_permission_missing', pageUnhealthy: true }],
  ['request invalid', at({}), refused('request_invalid'), { status: 'failed', token: 'released', code: 'graph_request_invalid' }],
  ['unknown', at({}), refused('unknown'), { status: 'failed', token: 'released', code: 'graph_error' }],
]

t.test('one case per row of the transition table: the row it meets, and what it decides', async (t) => {
  const met = new Set<number>()
  for (const [name, situation, event, expected] of CASES) {
    met.add(TRANSITIONS.indexOf(transitionFor(situation, event)))
    t.match(decide(situation, event), expected, name)
    for (const [key, value] of Object.entries(expected)) if (value === undefined) t.notOk(key in decide(situation, event) && decide(situation, event)[key as keyof Decision] !== undefined, `${name}: no ${key}`)
  }
  TRANSITIONS.forEach((row, i) => t.ok(met.has(i), `row ${i} has its case: ${JSON.stringify({ ...row, then: row.then.code ?? row.then.next })}`))
})

t.test('every situation meets a row, and each decision is complete', async (t) => {
  // Each kind on the routes it can take.
  const paths: Array<[TokenKind, Route]> = [['one_time_notif', 'window'], ['notification_messages', 'window'], ['one_time_notif', 'token'], ['notification_messages', 'recurring']]
  const causes: GraphErrorClass[] = ['temporary', 'rate_limited', 'frequency_limited', 'outside_window', 'person_unavailable', 'topic_stopped', 'page_restricted',
    'token_invalid', 'message_refused', 'page_token_invalid', 'permission', 'request_invalid', 'unknown']
  const events: SendEvent[] = [{ kind: 'accepted' }, { kind: 'unanswered' }, { kind: 'unreachable' }, { kind: 'target_gone', code: 'topic_not_found' },
    ...causes.map(refused)]
  let checked = 0
  for (const [kind, route] of paths) {
    {
      const tokenRoute = route !== 'window'
      for (const event of [...events, ...(tokenRoute ? [{ kind: 'no_token' } as const, { kind: 'token_limit' } as const, { kind: 'busy' } as const] : []),
        ...(route === 'recurring' ? [{ kind: 'cooling' } as const] : [])]) {
        for (const ambiguous of [false, true]) {
          for (const exhausted of [false, true]) {
            for (const recovering of [false, true]) {
              const d = decide({ kind, route, ambiguous, exhausted, recovering }, event)
              checked++
              const name = JSON.stringify({ kind, route, event, ambiguous, exhausted, recovering })
              if (d.next === 'finish') {
                t.ok(d.status && d.code, `${name}: a final status and a code`)
                }
              if (d.next === 'defer') t.ok(recovering, `${name}: only recovery defers`)
              if (d.status === 'sent') t.equal(event.kind, 'accepted', `${name}: only Meta's acceptance is sent`)
              // A claim that found nothing to hold (none, no more, cooling, locked) has no token to settle.
              const holds = !['no_token', 'token_limit', 'cooling', 'busy'].includes(event.kind)
              if (d.next === 'finish' && tokenRoute && holds && d.status !== 'no_token') t.ok(d.token, `${name}: the held token's fate`)
              if (!holds) t.equal(d.token, undefined, `${name}: nothing held, nothing settled`)
              if (holds && route === 'recurring' && (ambiguous || event.kind === 'unanswered')) t.not(d.next, 'retry', `${name}: a recurring token is never re-sent after a lost answer`)
              if (ambiguous && tokenRoute && holds && d.next === 'finish') t.ok(['used', 'unconfirmed'].includes(d.token!), `${name}: after a lost answer a token is never released`)
              if (event.kind === 'refused') t.equal(d.pageUnhealthy ?? false, PAGE_LEVEL.has(event.cause), `${name}: the Page's health follows the cause`)
            }
          }
        }
      }
    }
  }
  t.ok(checked > 300, `${checked} situations`)
})

t.test('a refusal with a Retry-After is retried later; a rate limit pauses the Page', async (t) => {
  t.same(retryOf('graph_rate_limited', 60), { afterSeconds: 60, pausesPage: true })
  t.same(retryOf('graph_temporary', 5), { afterSeconds: 5, pausesPage: false })
  t.equal(retryOf('graph_person_unavailable', undefined), undefined)
})
