import t from 'tap'
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { parse } from 'yaml'
import { buildApp } from '../src/app.js'
import { EnvSchema } from '../src/config.js'
import { upsertPage, recordPageError } from '../src/domain/pages.js'
import { databaseKind, testConfig, testDatabase, uniquePageId } from './helper.js'

// What an operator deploys with: docker-compose.yml, the alert rules and the dashboard in ops/, and
// the runbooks in docs/OPERATIONS.md. No Docker engine or Grafana runs here, so each is checked by
// construction against the code it refers to: the image's commands, the variables the service and
// the emulator read, and the metrics the service exposes.
const root = new URL('..', import.meta.url).pathname
const read = (path: string) => readFileSync(`${root}${path}`, 'utf8')

t.test('docker-compose.yml: Postgres, a migration that runs first, the service, the emulator on request', async (t) => {
  const compose = parse(read('docker-compose.yml'))
  const { postgres, migrate, service, emulator } = compose.services
  t.same(Object.keys(compose.services).sort(), ['emulator', 'migrate', 'postgres', 'service'])
  t.match(postgres.image, /^postgres:\d+$/)
  t.same(postgres.healthcheck.test, ['CMD-SHELL', `pg_isready -U ${postgres.environment.POSTGRES_USER} -d ${postgres.environment.POSTGRES_DB}`])

  const { POSTGRES_USER: user, POSTGRES_PASSWORD: password, POSTGRES_DB: db } = postgres.environment
  for (const s of [migrate, service]) {
    t.equal(s.build, '.', 'built from the Dockerfile')
    t.equal(s.environment.DATABASE_URL, `postgres://${user}:${password}@postgres:5432/${db}`)
  }
  t.equal(emulator.build, '.')
  t.equal(new Set([migrate.image, service.image, emulator.image]).size, 1, 'one image')
  t.same(migrate.depends_on, { postgres: { condition: 'service_healthy' } })
  t.same(service.depends_on, { migrate: { condition: 'service_completed_successfully' } }, 'the service starts on a migrated database')
  t.same(emulator.profiles, ['emulator'], 'only when asked for')

  for (const [s, command] of [[migrate, 'node dist/src/cli/migrate.js'], [emulator, 'node dist/src/emulator/main.js']] as const) {
    t.equal(s.command.join(' '), command)
    t.ok(existsSync(`${root}${command.split(' ')[1].replace(/^dist\//, '').replace(/\.js$/, '.ts')}`), `${command}: its source exists`)
  }
  const known = new Set(Object.keys(EnvSchema.properties))
  for (const name of Object.keys(service.environment)) t.ok(known.has(name), `service: ${name} is a variable the service reads`)
  t.match(service.environment.API_KEYS, /^\$\{API_KEYS:\?/, 'API_KEYS must be given')
  t.match(service.environment.ENCRYPTION_KEYS, /^\$\{ENCRYPTION_KEYS:\?/, 'ENCRYPTION_KEYS must be given: the service refuses Postgres without it')
  t.notOk('ENCRYPTION_KEYS' in migrate.environment, 'migrate needs no key')
  const emulatorVariables = new Set(read('src/emulator/from-env.ts').match(/\b(EMULATOR_[A-Z_]+|META_APP_SECRET)\b/g))
  for (const name of Object.keys(emulator.environment)) t.ok(emulatorVariables.has(name), `emulator: ${name} is a variable the emulator reads`)
  t.equal(emulator.environment.EMULATOR_WEBHOOK_URL, 'http://service:3000/webhooks/messenger')
})

/** Every metric name the service exposes, histograms with their _bucket, _sum and _count series. */
async function exposedMetrics (): Promise<Set<string>> {
  // The app opens its own database as in production, so that the pg pool's gauges exist on Postgres.
  const env: Record<string, string> = databaseKind === 'postgres' ? { DATABASE_URL: (await testDatabase()).url! } : { PGLITE_DATA_DIR: 'memory://' }
  const app = await buildApp(testConfig(env))
  try {
    const text = (await app.inject({ url: '/metrics' })).body
    const names = new Set<string>()
    for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
      names.add(name)
      if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(`${name}${suffix}`)
    }
    return names
  } finally {
    await app.close()
  }
}

/** Metric names in a PromQL expression: identifiers of this service's families, not functions or labels. */
function metricsIn (expr: string): string[] {
  const withoutLabels = expr.replace(/\{[^}]*\}/g, '').replace(/\b(by|on|without)\s*\([^)]*\)/g, '')
  return [...withoutLabels.matchAll(/\b((?:otn|process|nodejs)_[a-z0-9_]+)\b/g)].map((m) => m[1])
}

interface Rule { alert: string, expr: string, for: string, labels: { severity: string }, annotations: { summary: string, runbook_url: string } }
const rules: Rule[] = parse(read('ops/prometheus/alerts.yml')).groups.flatMap((g: { rules: Rule[] }) => g.rules)

t.test('alerts: the four the issue names and two more, each on metrics the service exposes, each with a runbook', async (t) => {
  const names = rules.map((r) => r.alert)
  for (const required of ['OTNPageUnhealthy', 'OTNPendingNotificationsAging', 'OTNJobBacklog', 'OTNGraphErrorRate']) t.ok(names.includes(required), required)
  const exposed = await exposedMetrics()
  const operations = read('docs/OPERATIONS.md')
  for (const rule of rules) {
    t.match(rule.for, /^\d+m$/, `${rule.alert}: waits before firing`)
    t.ok(['warning', 'critical'].includes(rule.labels.severity), `${rule.alert}: severity`)
    t.ok(rule.annotations.summary.length > 20)
    t.equal(rule.annotations.runbook_url, `docs/OPERATIONS.md#${rule.alert.toLowerCase()}`)
    const runbook = new RegExp(`^### ${rule.alert}\\n\\n(\\S.*(?:\\n\\S.*)*)\\n`, 'm').exec(operations)
    t.ok(runbook, `${rule.alert}: a runbook under its own heading`)
    t.ok((runbook?.[1].match(/[.!?](\s|$)/g) ?? []).length <= 1, `${rule.alert}: one sentence`)
    const metrics = metricsIn(rule.expr)
    t.ok(metrics.length > 0 || /\bup\{/.test(rule.expr), `${rule.alert}: reads a metric`)
    for (const metric of metrics) {
      if (metric.startsWith('otn_db_pool_') && databaseKind === 'pglite') continue
      t.ok(exposed.has(metric), `${rule.alert}: ${metric} is exposed`)
    }
  }
})

t.test('alerts: promtool checks the rules and runs their unit tests (where promtool is installed)', async (t) => {
  const promtool = spawnSync('promtool', ['--version'])
  if (promtool.error) {
    t.comment('promtool is not installed (Debian: apt-get install prometheus): the rules were checked by parsing only')
    return
  }
  const check = spawnSync('promtool', ['check', 'rules', 'alerts.yml'], { cwd: `${root}ops/prometheus`, encoding: 'utf8' })
  t.equal(check.status, 0, check.stdout + check.stderr)
  t.match(check.stdout, `SUCCESS: ${rules.length} rules found`)
  const unit = spawnSync('promtool', ['test', 'rules', 'alerts.test.yml'], { cwd: `${root}ops/prometheus`, encoding: 'utf8' })
  t.equal(unit.status, 0, unit.stdout + unit.stderr)
})

t.test('the Grafana dashboard: every panel on the chosen Prometheus, every query on metrics the service exposes', async (t) => {
  const dashboard = JSON.parse(read('ops/grafana/otn-service.json'))
  t.equal(dashboard.title, 'OTN service')
  t.same(dashboard.templating.list.map((v: { type: string, name: string }) => [v.type, v.name]), [['datasource', 'datasource']])
  const panels = dashboard.panels.filter((p: { type: string }) => p.type !== 'row')
  t.ok(panels.length >= 12)
  const ids = dashboard.panels.map((p: { id: number }) => p.id)
  t.equal(new Set(ids).size, ids.length, 'panel ids are unique')
  const exposed = await exposedMetrics()
  const used = new Set<string>()
  for (const panel of panels) {
    t.same(panel.datasource, { type: 'prometheus', uid: '${datasource}' }, panel.title)
    for (const target of panel.targets) {
      for (const metric of metricsIn(target.expr)) {
        used.add(metric)
        if (metric.startsWith('otn_db_pool_') && databaseKind === 'pglite') continue
        t.ok(exposed.has(metric), `${panel.title}: ${metric} is exposed`)
      }
    }
  }
  for (const family of ['otn_pages', 'otn_notifications_total', 'otn_graph_requests_total', 'otn_jobs_queued', 'otn_http_requests_total', 'otn_notifications_oldest_age_seconds']) {
    t.ok(used.has(family), `the dashboard shows ${family}`)
  }
})

t.test('otn_pages counts Pages by health, as OTNPageUnhealthy reads it', async (t) => {
  const { db, kind } = await testDatabase()
  const app = await buildApp(testConfig({ METRICS_CACHE_SECONDS: '0' }), { db, dbKind: kind }) // each scrape reads the database
  t.teardown(() => app.close())
  const value = async (healthy: string) => {
    const text = (await app.inject({ url: '/metrics' })).body
    return Number(new RegExp(`^otn_pages\\{healthy="${healthy}"\\} (\\S+)$`, 'm').exec(text)?.[1])
  }
  const before = await value('false')
  const id = uniquePageId()
  await upsertPage(db, id, { name: 'Metrics', access_token: 'tok' })
  const healthyBefore = await value('true')
  await recordPageError(db, id, { code: 190, message: 'Invalid OAuth access token.' } as any)
  t.equal(await value('false'), before + 1)
  t.equal(await value('true'), healthyBefore - 1)
  await upsertPage(db, id, { name: 'Metrics', access_token: 'new-token' })
  t.equal(await value('false'), before, 'a new access token makes the Page healthy again')
})
