import t from 'tap'
import { DEFAULT_GRAPH_VERSION, GRAPH_VERSIONS, oldestServed, versionStatus, versionWarning } from '../../src/graph/versions.js'
import { auth, build, LogCapture } from '../helper.js'
import { giveTokens, newPsid, notify, world } from '../fixtures/otn.js'

const at = (iso: string) => Date.parse(iso)

t.test("the table follows Meta's changelog (MESSENGER.md §9), newest first, and the default is the newest", async (t) => {
  t.equal(DEFAULT_GRAPH_VERSION, 'v26.0')
  const released = GRAPH_VERSIONS.map((v) => v.released)
  t.same(released, [...released].sort().reverse())
  t.match(GRAPH_VERSIONS.find((v) => v.version === 'v21.0'), { until: '2027-01-21' })
})

t.test('each version is current, retiring within 90 days, retired (served as the oldest still available) or unknown', async (t) => {
  t.same(versionStatus('v26.0', at('2026-12-02T00:00:00Z')), { status: 'current', version: 'v26.0', until: null })
  t.same(versionStatus('v25.0', at('2026-12-02T00:00:00Z')), { status: 'current', version: 'v25.0', until: '2028-07-29' })
  t.same(versionStatus('v21.0', at('2026-12-02T00:00:00Z')), { status: 'retiring', version: 'v21.0', until: '2027-01-21', days_left: 50 })
  t.same(versionStatus('v21.0', at('2026-10-23T00:00:00Z')), { status: 'current', version: 'v21.0', until: '2027-01-21' }, 'more than 90 days left')
  t.same(versionStatus('v21.0', at('2027-01-21T23:00:00Z')), { status: 'retiring', version: 'v21.0', until: '2027-01-21', days_left: 0 }, 'served through its last day')
  t.same(versionStatus('v21.0', at('2027-01-22T00:00:00Z')), { status: 'retired', version: 'v21.0', until: '2027-01-21', served_as: 'v22.0' })
  t.same(versionStatus('v20.0', at('2026-12-02T00:00:00Z')), { status: 'retired', version: 'v20.0', until: '2026-09-24', served_as: 'v21.0' })
  t.same(versionStatus('v19.0', at('2026-12-02T00:00:00Z')), { status: 'unknown', version: 'v19.0' })
  t.equal(oldestServed(at('2026-12-02T00:00:00Z')), 'v21.0')
  t.equal(oldestServed(at('2027-06-01T00:00:00Z')), 'v23.0')
})

t.test('the start-up warning says what to do', async (t) => {
  const now = at('2026-12-02T00:00:00Z')
  t.equal(versionWarning('v26.0', now), null)
  t.equal(versionWarning('v24.0', now), null)
  t.match(versionWarning('v21.0', now), /v21\.0 is served by Meta until 2027-01-21 \(50 days left\); move to v26\.0/)
  t.match(versionWarning('v20.0', now), /v20\.0 was retired on 2026-09-24: Meta now serves its calls as v21\.0.*move to v26\.0/)
  t.match(versionWarning('v99.0', now), /not a version this build knows/)
})

t.test('start-up logs a warning for a retiring or retired version, and none for the default', async (t) => {
  for (const [version, warned] of [['v20.0', true], ['v21.0', true], [DEFAULT_GRAPH_VERSION, false]] as const) {
    const logs = new LogCapture()
    await build(t, { GRAPH_API_VERSION: version, LOG_LEVEL: 'warn' }, { logStream: logs })
    const line = logs.lines.find((l) => l.graph_api_version === version)
    t.equal(line !== undefined, warned, version)
    if (line) t.match(line, { level: 40, msg: /GRAPH_API_VERSION/ })
  }
})

t.test("a retired version is answered from another one (the emulator, like Meta, says so in facebook-api-version): logged once", async (t) => {
  const logs = new LogCapture()
  const w = await world(t, { env: { GRAPH_API_VERSION: 'v20.0', LOG_LEVEL: 'warn' }, deps: { logStream: logs } })
  for (let i = 0; i < 3; i++) {
    const psid = newPsid()
    await giveTokens(w, psid, 1)
    t.equal((await notify(w.app, { topic_id: w.topic.id, psid, message: { text: 'hi' } })).statusCode, 201)
  }
  t.equal(w.emulator.requests.at(-1)?.servedVersion, oldestServed())
  const served = logs.lines.filter((l) => l.served_as !== undefined)
  t.equal(served.length, 1, 'once, not per send')
  t.match(served[0], { graph_api_version: 'v20.0', served_as: oldestServed(), msg: /retired or unknown/ })
  t.notOk((await w.app.inject({ method: 'GET', url: `/v1/pages/${w.pageId}`, headers: auth })).json().last_error)
})
