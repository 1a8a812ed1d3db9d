import t from 'tap'
import { broadcastRate, META_RATE_LIMITS, pausePage, reservePacingSlots } from '../../src/domain/broadcast-pacing.js'
import { testDatabase, uniquePageId } from '../helper.js'

t.test("a broadcast's rate: the Page's own, else the service's, else Meta's limit for what the message carries", async (t) => {
  const text = { text: 'Flash sale' }
  const image = { attachment: { type: 'image', payload: { url: 'https://example.com/a.png' } } }
  const video = { attachment: { type: 'video', payload: { url: 'https://example.com/a.mp4' } } }
  const audio = { attachment: { type: 'audio', payload: { url: 'https://example.com/a.mp3' } } }
  t.equal(broadcastRate(text, null, undefined), META_RATE_LIMITS.text)
  t.equal(broadcastRate(image, null, undefined), 300, 'images count as Meta\'s text/links/stickers class')
  t.equal(broadcastRate(video, null, undefined), 10)
  t.equal(broadcastRate(audio, null, undefined), 10)
  t.equal(broadcastRate(video, null, 50), 50, 'the service\'s setting wins over Meta\'s default')
  t.equal(broadcastRate(text, 7, 50), 7, 'the Page\'s own wins over both')
})

t.test('pacing: consecutive slots at the rate, shared by racing callers; a rate limit pauses the Page and halves its share until sends give it back', async (t) => {
  const { db } = await testDatabase()
  const pageId = uniquePageId()
  const slotAt = async () => (await db.selectFrom('broadcast_pacing').select('next_slot_at').where('page_id', '=', pageId).executeTakeFirstOrThrow()).next_slot_at.getTime()
  const first = await reservePacingSlots(db, pageId, 10, 10)
  t.equal(first.stepMs, 100, '10/s: a slot every 100 ms')
  t.ok(first.waitMs < 50, 'the first slots start now')
  const start = await slotAt() - 1000
  const second = await reservePacingSlots(db, pageId, 10, 10)
  t.ok(second.waitMs > 700 && second.waitMs <= 1000, `the next ten start after the first ten (${second.waitMs} ms)`)
  await Promise.all(Array.from({ length: 5 }, () => reservePacingSlots(db, pageId, 10, 10)))
  t.equal(await slotAt() - start, 7000, 'seven runs of ten at 10/s, racing or not: every slot taken once, none twice')

  await pausePage(db, pageId, 2)
  const paused = await reservePacingSlots(db, pageId, 10, 1)
  t.ok(paused.waitMs > 1500, `paused for the seconds Meta asked (${paused.waitMs} ms)`)
  t.equal(paused.stepMs, 200, 'half the share: 5/s')
  const share = async () => Number((await db.selectFrom('broadcast_pacing').select('rate_factor').where('page_id', '=', pageId).executeTakeFirstOrThrow()).rate_factor)
  t.ok(Math.abs(await share() - 0.502) < 1e-9, 'a reservation gives a little back')
  await reservePacingSlots(db, pageId, 10, 249)
  t.equal(await share(), 1, 'given back in full after 250 sends')
})

t.test('pacing: a caller that will not wait that long takes no slot, however often it asks', async (t) => {
  const { db } = await testDatabase()
  const pageId = uniquePageId()
  const slotAt = async () => (await db.selectFrom('broadcast_pacing').select('next_slot_at').where('page_id', '=', pageId).executeTakeFirstOrThrow()).next_slot_at.getTime()
  await pausePage(db, pageId, 5)
  const pausedUntil = await slotAt()
  for (let i = 0; i < 20; i++) {
    const slots = await reservePacingSlots(db, pageId, 10, 50, 2000)
    t.equal(slots.taken, false)
    t.ok(slots.waitMs > 4000, `it is told how long the Page is paused (${slots.waitMs} ms)`)
  }
  t.equal(await slotAt(), pausedUntil, 'twenty refusals of 50 slots moved the Page\'s schedule by nothing (taking them would have added 100 s at 10/s)')
  const within = await reservePacingSlots(db, pageId, 10, 5, 10_000)
  t.equal(within.taken, true, 'a caller that waits longer takes them')
  t.equal(await slotAt() - pausedUntil, 1000, 'five slots at the halved share (5/s): one second')
})
