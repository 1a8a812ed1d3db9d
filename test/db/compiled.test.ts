import t from 'tap'
import { sql } from 'kysely'
import { compiledOnce, type SlotOf } from '../../src/db/compiled.js'
import { countStatements, testDatabase } from '../helper.js'

const { db } = await testDatabase()

interface Input { ids: number[], label: string }

t.test('built and compiled on the first run only; each run reads its own parameters, constants stay', async (t) => {
  let builds = 0
  const statement = compiledOnce((slot: SlotOf<Input>) => {
    builds++
    return sql<{ id: number, label: string, unit: string }>`
      select id, ${slot((i) => i.label)}::text as label, ${'ms'}::text as unit
        from unnest(${slot((i) => i.ids)}::int[]) as u(id) order by id`
  })
  const first = await statement(db, { ids: [3, 1], label: 'a' })
  const second = await statement(db, { ids: [7], label: 'b' })
  t.same(first.rows, [{ id: 1, label: 'a', unit: 'ms' }, { id: 3, label: 'a', unit: 'ms' }])
  t.same(second.rows, [{ id: 7, label: 'b', unit: 'ms' }])
  t.equal(builds, 1, 'one build for two runs')
})

t.test('a database with plugins compiles every run, so that the plugins see each statement', async (t) => {
  const statement = compiledOnce((slot: SlotOf<Input>) => sql<{ n: number }>`select cardinality(${slot((i) => i.ids)}::int[]) as n`)
  await statement(db, { ids: [1], label: '' })
  const { counted, statements } = countStatements(db)
  const { rows } = await statement(counted, { ids: [1, 2, 3], label: '' })
  t.same(rows, [{ n: 3 }])
  t.same(statements, ['RawNode'])
})
