import t from 'tap'
import { fmt, medianInterval } from '../../bench/lib.js'

t.test('a ratio judged against its target never reads as the target when it misses or beats it', async (t) => {
  t.equal(fmt.against(0.598, 0.6), '0.598×', 'just under: a third decimal')
  t.equal(fmt.against(1.2031, 1.2), '1.203×', 'just over: a third decimal')
  t.equal(fmt.against(0.6, 0.6), '0.60×', 'exactly the target: two decimals')
  t.equal(fmt.against(0.6412, 0.6), '0.64×', 'clear of the target: two decimals')
  t.equal(fmt.against(Number.NaN, 0.6), '–', 'no figure')
})

t.test('the interval for a median: order statistics chosen for 95%, or the whole range with the confidence it has', async (t) => {
  const fifteen = [0.72, 0.50, 0.70, 0.65, 0.60, 0.48, 0.37, 0.51, 0.46, 0.56, 0.53, 0.69, 0.56, 0.54, 0.47]
  const i15 = medianInterval(fifteen)
  t.same([i15.median, i15.lo, i15.hi], [0.54, 0.48, 0.65], '15 values: the 8th, and the 4th smallest and the 4th largest')
  t.ok(Math.abs(i15.coverage - (1 - 2 * 576 / 32768)) < 1e-12, '15 values: 1 - 2·P(Bin(15, ½) ≤ 3)')
  const i3 = medianInterval([0.56, 0.49, 0.53])
  t.same([i3.median, i3.lo, i3.hi, i3.coverage], [0.53, 0.49, 0.56, 0.75], 'three rounds: their range, right 75% of the time')
  const i9 = medianInterval([9, 1, 8, 2, 7, 3, 6, 4, 5])
  t.same([i9.lo, i9.hi], [2, 8], '9 values: the 2nd from each end (96%); the 3rd would be 82%')
  t.ok(i9.coverage >= 0.95 && i9.coverage < 0.97)
  t.same(medianInterval([4]), { median: 4, lo: 4, hi: 4, coverage: 0 }, 'one value: no confidence at all')
  t.same(medianInterval([]), { median: Number.NaN, lo: Number.NaN, hi: Number.NaN, coverage: 0 })
  t.same(medianInterval([5, 1, 3, 2, 4, 6]), { median: 3.5, lo: 1, hi: 6, coverage: 1 - 2 / 64 }, 'six values: the middle two\'s mean; the range is already 96.9%')
})
