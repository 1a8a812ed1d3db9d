import t from 'tap'
import { fmt } from '../../bench/lib.js'

t.test('a ratio judged against its target never reads as the target when it misses or beats it', async (t) => {
  t.equal(fmt.against(0.598, 0.6), '0.598×', 'just under: a third decimal')
  t.equal(fmt.against(1.2031, 1.2), '1.203×', 'just over: a third decimal')
  t.equal(fmt.against(0.6, 0.6), '0.60×', 'exactly the target: two decimals')
  t.equal(fmt.against(0.6412, 0.6), '0.64×', 'clear of the target: two decimals')
  t.equal(fmt.against(Number.NaN, 0.6), '–', 'no figure')
})
