import { readdirSync, readFileSync } from 'node:fs'
import t from 'tap'
import { parseGraphError } from '../../src/graph/client.js'
import { CLASS_RULES, classifyGraphError, ruleFor, type GraphErrorClass } from '../../src/graph/errors.js'
import { decide, type Decision, type Route } from '../../src/domain/lifecycle.js'
import { statusOf } from '../../src/schemas/problems.js'

const NONE = '—'

interface Row {
  http: number
  code: number | null
  subcode: number | null
  message: string
  cause: string
  token: string
  tokenAnswer: string
  windowAnswer: string
  page: string
}

/** The decision table of docs/NOTIFICATIONS.md, row by row. */
function documentedRows (): Row[] {
  const doc = readFileSync(new URL('../../docs/NOTIFICATIONS.md', import.meta.url), 'utf8')
  const table = /<!-- decision-table:start -->\n([\s\S]*?)<!-- decision-table:end -->/.exec(doc)
  if (!table) throw new Error('docs/NOTIFICATIONS.md has no decision table')
  return table[1].trim().split('\n').slice(2).map((line) => {
    const cells = line.slice(1, -1).split(' | ').map((c) => c.trim())
    if (cells.length !== 9) throw new Error(`a decision-table row needs 9 cells: ${line}`)
    const [http, code, subcode, message, cause, token, tokenAnswer, windowAnswer, page] = cells
    const num = (v: string) => (v === NONE ? null : Number(v))
    return { http: Number(http), code: num(code), subcode: num(subcode), message: message.replace(/^`|`$/g, ''), cause, token, tokenAnswer, windowAnswer, page }
  })
}

/** What the lifecycle table decides for a first (not ambiguous) attempt that Meta refused with `cause`. */
const verdict = (cause: GraphErrorClass, route: Route): Decision =>
  decide({ kind: 'one_time_notif', route, ambiguous: false, exhausted: true, recovering: false }, { kind: 'refused', cause })

// The words the table uses for what becomes of the token.
function tokenWords (d: Decision): string {
  if (d.next === 'next_token') return 'invalid, next token'
  if (d.token === 'released') return 'kept'
  if (d.token === 'invalid') return d.discardOthers ? 'invalid, others discarded' : 'invalid, attempt ends'
  return String(d.token)
}
const answer = (d: Decision): string =>
  d.next === 'next_token' ? 'next token (409 `no_token` when none is left)' : d.next === 'token_route' ? 'token route' : `${statusOf(d.code!)} \`${d.code}\``

t.test('every row of the documented decision table is what the code decides', async (t) => {
  const rows = documentedRows()
  t.ok(rows.length >= 40, `${rows.length} rows`)
  for (const row of rows) {
    const name = `${row.http} ${row.code ?? NONE}/${row.subcode ?? NONE} ${row.message}`
    const cls = classifyGraphError(row.http, { code: row.code, subcode: row.subcode, message: row.message, fbtrace_id: null })
    t.equal(cls, row.cause, `${name}: cause`)
    const token = verdict(cls, 'token')
    const window = verdict(cls, 'window')
    t.equal(tokenWords(token), row.token, `${name}: the token`)
    t.equal(answer(token), row.tokenAnswer, `${name}: token send's answer`)
    t.equal(answer(window), row.windowAnswer, `${name}: window send's answer`)
    t.equal(token.pageUnhealthy ? 'unhealthy' : 'healthy', row.page, `${name}: the Page`)
    t.equal(window.pageUnhealthy ?? false, token.pageUnhealthy ?? false, `${name}: the Page's health does not depend on the route`)
  }
})

t.test('every classification rule is exercised by a documented row', async (t) => {
  const used = new Set(documentedRows().map((r) => ruleFor({ code: r.code, subcode: r.subcode, message: r.message, fbtrace_id: null })))
  for (const rule of CLASS_RULES) t.ok(used.has(rule), `documented: ${rule.note}`)
})

t.test('a refusal that does not name the token never moves on to the next token', async (t) => {
  // The invariant of the table: only a cause that names the token (or its recipient) tries another.
  const movesOn = new Set<GraphErrorClass>(['token_invalid', 'outside_window'])
  for (const row of documentedRows()) {
    const v = verdict(row.cause as GraphErrorClass, 'token')
    t.equal(v.next === 'next_token', movesOn.has(row.cause as GraphErrorClass), row.message)
  }
})

// Real answers collected from Meta's documentation and open-source clients (test/fixtures/meta/SOURCES.md).
const FIXTURE_CLASSES: Record<string, GraphErrorClass> = {
  'courier-100-invalid-user.json': 'token_invalid',
  'courier-36000-error-with-http-200.json': 'unknown',
  'fbmessenger-hs-100-invalid-parameter-error-data.json': 'token_invalid',
  'issue-botframework-10-2018065-outside-window.json': 'outside_window',
  'issue-botframework-10-pages-messaging-fragment.json': 'permission',
  'issue-botframework-551-1545041.json': 'person_unavailable',
  'issue-botkit-613-rate-limit.json': 'rate_limited',
  'issue-bridgy-190-463-session-expired.json': 'page_token_invalid',
  'issue-fb-nodejs-sdk-4-app-limit-transient.json': 'rate_limited',
  'issue-hartleybrody-100-no-matching-user.json': 'token_invalid',
  'issue-hass-100-recipient-id-not-valid.json': 'request_invalid',
  'issue-ker0x-100-invalid-tag.json': 'request_invalid',
  'issue-messaging-apis-2500-active-token.json': 'page_token_invalid',
  'issue-node-fb-messenger-100-graphmethodexception.json': 'permission',
  'issue-remixz-1200-2018024-temporary.json': 'temporary',
  'meta-docs-190-example.json': 'page_token_invalid',
}

t.test("Meta's real error bodies are classified as the table says", async (t) => {
  const dir = new URL('../fixtures/meta/graph-errors/', import.meta.url)
  const files = readdirSync(dir).filter((f) => f.endsWith('.json'))
  const errors = files.filter((f) => 'error' in JSON.parse(readFileSync(new URL(f, dir), 'utf8')).body)
  t.same(errors.sort(), Object.keys(FIXTURE_CLASSES).sort(), 'every error fixture has an expected class')
  for (const file of errors) {
    const { http_status: status, body } = JSON.parse(readFileSync(new URL(file, dir), 'utf8'))
    const error = parseGraphError(status, JSON.stringify(body))
    t.equal(classifyGraphError(status, error), FIXTURE_CLASSES[file], file)
  }
})

t.test('parseGraphError reads what Meta writes: error_data beside a generic message, codes as strings, no body', async (t) => {
  t.same(parseGraphError(400, '{"error":{"message":"Invalid parameter","type":"FacebookApiException","code":100,"error_data":"No matching user found.","fbtrace_id":"D2k"}}'),
    { code: 100, subcode: null, message: 'Invalid parameter (No matching user found.)', fbtrace_id: 'D2k' })
  t.same(parseGraphError(400, '{"error":{"message":"(#613) x","code":"613","error_subcode":"1893016"}}'),
    { code: 613, subcode: 1893016, message: '(#613) x', fbtrace_id: null })
  t.same(parseGraphError(502, '<html>bad gateway</html>'),
    { code: null, subcode: null, message: 'HTTP 502 without a Graph error body', fbtrace_id: null })
  t.equal(parseGraphError(400, JSON.stringify({ error: { message: 'x'.repeat(5000), code: 1 } })).message.length, 1000, 'bounded')
})
