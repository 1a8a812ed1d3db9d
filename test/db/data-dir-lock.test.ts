import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync, readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { DataDirInUseError, LOCK_FILE, lockDataDir } from '../../src/db/data-dir-lock.js'
import { openDatabase } from '../../src/db/database.js'
import { startServiceProcess, type ServiceProcess } from '../fixtures/service-process.js'

// The embedded database's folder belongs to one process at a time. Every process here is real:
// the service started as `npm start` starts it, or a small script holding the lock.
const root = new URL('../..', import.meta.url).pathname
const key = 'lock-test-api-key'

const startService = (dataDir: string): ServiceProcess => startServiceProcess({ API_KEYS: key, PGLITE_DATA_DIR: dataDir })

const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' }

t.test('two services on one folder: the second refuses to start, naming the folder and the holder; the first keeps its data', async (t) => {
  const dir = t.testdir({})
  const first = startService(dir)
  t.teardown(() => { first.child.kill('SIGKILL') })
  const base = await first.listening

  const second = startService(dir)
  t.equal(await second.exited, 69, 'exit code 69 (EX_UNAVAILABLE)')
  t.equal(second.stderr(), `otn-service: the embedded database folder ${resolve(dir)} is in use by another process (pid ${first.child.pid}): stop that one, or give this one its own PGLITE_DATA_DIR (several instances share one database through DATABASE_URL)\n`)
  t.same(second.lines.filter((l) => l.docs), [], 'the second never listened')

  const put = await fetch(`${base}/v1/pages/4100`, { method: 'PUT', headers, body: JSON.stringify({ name: 'Acknowledged', access_token: 'tok' }) })
  t.equal(put.status, 201)

  // Killed: no chance to release anything. The next start takes the folder at once and has the write.
  first.child.kill('SIGKILL')
  t.equal(await first.exited, null)
  const third = startService(dir)
  t.teardown(() => { third.child.kill('SIGKILL') })
  const base3 = await third.listening
  const recovered = third.lines.find((l) => l.previous_pid !== undefined)
  t.equal(recovered?.previous_pid, first.child.pid, 'the start-up log names the killed holder')
  t.equal(recovered?.level, 40)
  const got = await fetch(`${base3}/v1/pages/4100`, { headers })
  t.match(await got.json(), { id: '4100', name: 'Acknowledged' }, 'the write acknowledged before the kill is there')

  third.child.kill('SIGTERM')
  t.equal(await third.exited, 0)
  t.equal(readFileSync(join(dir, LOCK_FILE), 'utf8'), '', 'a clean stop leaves the lock file empty')
  const fourth = startService(dir)
  t.teardown(() => { fourth.child.kill('SIGKILL') })
  await fourth.listening
  t.notOk(fourth.lines.some((l) => l.previous_pid !== undefined), 'after a clean stop nothing is reported')
  fourth.child.kill('SIGTERM')
  t.equal(await fourth.exited, 0)
})

/** A process that takes the folder's lock, says so, and waits to be killed. */
function holdInChild (dir: string): Promise<ChildProcess> {
  const script = `import { lockDataDir } from './src/db/data-dir-lock.ts'; lockDataDir(${JSON.stringify(dir)}); console.log('locked'); setInterval(() => {}, 1000)`
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] })
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (c) => { if (String(c).includes('locked')) resolve(child) })
    child.on('exit', (code) => reject(new Error(`holder exited ${code}`)))
  })
}

t.test('the lock alone: held by a live process, free once it is killed, reported with its pid', async (t) => {
  const dir = t.testdir({})
  const holder = await holdInChild(dir)
  t.teardown(() => { holder.kill('SIGKILL') })
  const refused = t.throws(() => lockDataDir(dir)) as unknown as DataDirInUseError
  t.type(refused, DataDirInUseError)
  t.equal(refused.holder?.pid, holder.pid)
  t.equal(refused.dataDir, dir)

  holder.kill('SIGKILL')
  await once(holder, 'exit')
  const lock = lockDataDir(dir)
  t.equal(lock.previous?.pid, holder.pid, 'the killed holder is named')
  t.equal(JSON.parse(readFileSync(join(dir, LOCK_FILE), 'utf8')).pid, process.pid, 'the file now names this process')
  t.throws(() => lockDataDir(dir), DataDirInUseError, 'a second lock in the same process is refused too')
  lock.release()
  const again = lockDataDir(dir)
  t.equal(again.previous, undefined, 'a released lock leaves no holder behind')
  again.release()
})

t.test('openDatabase holds the folder until closed; memory:// needs no lock', async (t) => {
  const dir = t.testdir({})
  const handle = await openDatabase({ pgliteDataDir: dir })
  t.throws(() => lockDataDir(dir), DataDirInUseError)
  await t.rejects(openDatabase({ pgliteDataDir: dir }), DataDirInUseError)
  await handle.close()
  lockDataDir(dir).release()

  const memory = await openDatabase({ pgliteDataDir: 'memory://' })
  t.notOk(existsSync(join('memory:', LOCK_FILE)))
  await memory.close()
})
