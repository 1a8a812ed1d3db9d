import t from 'tap'
import { existsSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { sql } from 'kysely'
import { openDatabase } from '../../src/db/database.js'
import { migrate } from '../../src/db/migrate.js'
import { defaultSeedPath, pgliteVersion, seedFor, writeSeed } from '../../src/db/pglite-seed.js'

// A new embedded folder starts from the seed the build writes; an existing one is never overwritten.
t.test('a new folder starts from the seed, takes the migrations, and reopens as itself', async (t) => {
  const dir = t.testdir({})
  const seed = join(dir, 'seed.tar.gz')
  t.equal(await writeSeed(seed), true)
  t.equal(await writeSeed(seed), false, 'written once')
  t.same(readdirSync(dir), ['seed.tar.gz'], 'no partial file left')

  const data = join(dir, 'data')
  t.type(seedFor(data, seed), Blob, 'a folder without a database gets the seed')
  const first = await openDatabase({ pgliteDataDir: data, pgliteSeed: seed })
  t.ok(existsSync(join(data, 'PG_VERSION')))
  await migrate(first.db)
  await sql`insert into pages (id, name, access_token) values ('9001', 'Seeded', 'tok')`.execute(first.db)
  await first.close()

  t.equal(seedFor(data, seed), undefined, 'a folder with a database is opened as it is')
  const again = await openDatabase({ pgliteDataDir: data, pgliteSeed: seed })
  const { rows } = await sql<{ name: string }>`select name from pages where id = '9001'`.execute(again.db)
  t.same(rows, [{ name: 'Seeded' }])
  await again.close()
})

t.test('the seed is named by the PGlite version that wrote it, beside the compiled code; none means initdb', async (t) => {
  t.match(pgliteVersion(), /^\d+\.\d+\.\d+/)
  t.equal(defaultSeedPath(), `${new URL('../..', import.meta.url).pathname}dist/pglite-seed-${pgliteVersion()}.tar.gz`, 'run from the sources: the one the build wrote')
  t.equal(seedFor(t.testdir({}), join(t.testdirName, 'absent.tar.gz')), undefined)
})
