import t from 'tap'
import { sql } from 'kysely'
import { ensureQueue } from '../../src/jobs/queue.js'
import { build, LogCapture, testDatabase } from '../helper.js'

// pg-boss marks a finished job completed without awaiting it. When the database refuses that write
// (down, restarting) the instance must not die of an unhandled rejection: the failure is logged and
// the job, still active, is retried after it expires (src/jobs/queue.ts).
t.test('a job the database cannot mark completed is logged, not an unhandled rejection', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, { LOG_LEVEL: 'error' }, { logStream: logs })
  const { db } = await testDatabase()
  const unhandled: unknown[] = []
  const record = (reason: unknown) => { unhandled.push(reason) }
  process.on('unhandledRejection', record)
  t.teardown(() => { process.off('unhandledRejection', record) })

  const queue = `probe-${Date.now()}`
  await ensureQueue(app.jobs, queue, {})
  await sql`create or replace function refuse_completion() returns trigger language plpgsql as $$
    begin raise exception 'completion refused for the test'; end $$`.execute(db)
  await sql`create trigger refuse_completion before update on pgboss.job for each row
    when (new.state = 'completed' and new.name like 'probe-%') execute function refuse_completion()`.execute(db)
  t.teardown(async () => { await sql`drop trigger if exists refuse_completion on pgboss.job`.execute(db) })

  let ran = 0
  await app.jobs.work(queue, { pollingIntervalSeconds: 0.5 }, async () => { ran++ })
  const id = await app.jobs.send(queue, {})
  for (let i = 0; i < 100 && !logs.text.includes('completion refused for the test'); i++) await new Promise((resolve) => setTimeout(resolve, 100))

  t.equal(ran, 1, 'the handler ran')
  t.ok(logs.lines.some((l) => l.msg === 'job queue error' && JSON.stringify(l).includes('completion refused for the test')), 'the refusal is logged as a queue error')
  await new Promise((resolve) => setTimeout(resolve, 200))
  t.same(unhandled, [], 'no unhandled rejection')
  const job = await app.jobs.getJobById(queue, id!)
  t.equal(job?.state, 'active', 'the job stays active: it expires and is retried, nothing is lost')
})
