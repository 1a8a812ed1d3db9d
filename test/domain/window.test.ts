import t from 'tap'
import { maskToken } from '../../src/domain/window.js'

t.test('a masked token shows at most a quarter of itself, and nothing of a short one (#24.3)', async (t) => {
  // Before: any token over 8 characters showed 4 + 4 of them (8 of 9).
  t.equal(maskToken('abcdefghi'), '****')
  t.equal(maskToken('abcdefghijk'), '****')
  t.equal(maskToken('abcdefghijkl'), 'a…l')
  t.equal(maskToken('abcdefghijklmnop'), 'ab…op')
  t.equal(maskToken('x'.repeat(31)), 'xxx…xxx')
  const meta = `AQ${'z'.repeat(120)}9w`
  t.equal(maskToken(meta), 'AQzz…zz9w', "Meta's long tokens: 4 + 4, enough to tell two apart")
  const tooMuch = Array.from({ length: 201 }, (_, length) => [length, maskToken('x'.repeat(length)).replace(/[…*]/g, '').length])
    .filter(([length, shown]) => shown > length / 4)
  t.same(tooMuch, [], 'no length shows more than a quarter')
})
