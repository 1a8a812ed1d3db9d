import t from 'tap'
import { sql } from 'kysely'
import { openDatabase } from '../../src/db/database.js'
import { activeKeyring, Keyring, newEncryptionKey, parseEncryptionKeys, useKeyring } from '../../src/crypto/secret-box.js'
import { erasureKey } from '../../src/domain/erasure.js'
import { FULL_ROTATION_MS, RotationSchedule, rotateKeys } from '../../src/domain/key-rotation.js'
import { rotateTokenBatch, type TokenKey } from '../../src/domain/token-store.js'
import { databaseKind, TEST_ENCRYPTION_KEYS, testDatabase, truncateAll, uniquePageId } from '../helper.js'
import { seedRecurring } from '../fixtures/recurring.js'
import { heldOpen } from '../fixtures/locks.js'
import { newPsid, recurringEvent, recurringRows, world } from '../fixtures/otn.js'
import { accountedForOnce, broadcastEnv, NOWHERE, people, postBroadcast, recurringFor, settled, tokensFor } from '../fixtures/broadcasts.js'

const ring = (...keys: string[]) => new Keyring(keys.flatMap((k) => parseEncryptionKeys(k).keys))

t.test('rotation re-encrypts in batches, leaves values already under the first key alone, and does nothing without a key', async (t) => {
  const { db } = await testDatabase()
  const [k1, k2] = [newEncryptionKey('r1'), newEncryptionKey('r2')]
  const ids = Array.from({ length: 5 }, () => uniquePageId())
  await sql`delete from pages`.execute(db)
  for (const [i, id] of ids.entries()) {
    await db.insertInto('pages').values({ id, name: 'Rotating', access_token: i === 0 ? ring(k2).seal('pages.access_token', `tok-${i}`) : ring(k1).seal('pages.access_token', `tok-${i}`) }).execute()
  }
  t.same(await rotateKeys(db, { keyring: new Keyring([]) }), { pages: 0, event_subscriptions: 0, optin_tokens: 0, webhook_events: 0 }, 'no key: nothing to rotate to')
  const seen: number[] = []
  const counts = await rotateKeys(db, { keyring: ring(k2, k1), batch: 2, progress: (c) => seen.push(c.pages) })
  t.equal(counts.pages, 4, 'the four under r1, not the one already under r2')
  t.same(seen, [2, 4], 'two rows per statement')
  const rows = await db.selectFrom('pages').select(['id', 'access_token']).where('id', 'in', ids).orderBy('id').execute()
  const byId = new Map(rows.map((r) => [r.id, r.access_token!]))
  t.same(ids.map((id) => ring(k2).open('pages.access_token', byId.get(id)!)), ids.map((_, i) => `tok-${i}`), 'every token kept, readable with r2 alone')
  t.ok(ids.every((id) => byId.get(id)!.startsWith('enc:v1:r2:')))
})

t.test('rotation skips rows a running change holds, without waiting, and takes them on the next run (Postgres)', { skip: databaseKind !== 'postgres' && 'PGlite has one connection' }, async (t) => {
  const { db } = await testDatabase()
  const [k1, k2] = [newEncryptionKey('s1'), newEncryptionKey('s2')]
  const [held, free] = [uniquePageId(), uniquePageId()]
  await sql`delete from pages`.execute(db)
  for (const id of [held, free]) await db.insertInto('pages').values({ id, name: 'Locked', access_token: ring(k1).seal('pages.access_token', `tok-${id}`) }).execute()
  const holder = await heldOpen(t, (trx) => sql`select 1 from pages where id = ${held} for update`.execute(trx))
  const first = await rotateKeys(db, { keyring: ring(k2, k1) })
  const after = async (id: string) => (await db.selectFrom('pages').select('access_token').where('id', '=', id).executeTakeFirstOrThrow()).access_token!
  t.ok((await after(free)).startsWith('enc:v1:s2:'), 'the free row is rotated')
  t.ok((await after(held)).startsWith('enc:v1:s1:'), 'the held row is skipped, not waited for')
  t.equal(first.pages, 1, 'one row rotated, the held one skipped')
  holder.release()
  await holder.done
  t.same(await rotateKeys(db, { keyring: ring(k2, k1) }), { pages: 1, event_subscriptions: 0, optin_tokens: 0, webhook_events: 0 })
  t.ok((await after(held)).startsWith('enc:v1:s2:'), 'the next run takes it')
  t.equal(ring(k2).open('pages.access_token', await after(held)), `tok-${held}`)
})

t.test('webhook bodies: re-sealed in batches, re-digested; the same body stored twice keeps one digest, a withheld (empty) body is left alone', async (t) => {
  const { db } = await testDatabase()
  const [k1, k2] = [newEncryptionKey('w1'), newEncryptionKey('w2')]
  await sql`delete from pages`.execute(db)
  const pageId = uniquePageId()
  const raw = Buffer.from(JSON.stringify({ object: 'page', entry: [{ id: pageId, messaging: [{ sender: { id: '7000000000042' }, recipient: { id: pageId }, message: { text: 'twice' } }] }] }))
  const other = Buffer.from(JSON.stringify({ object: 'page', entry: [{ id: pageId, messaging: [] }] }))
  const insert = async (body: Buffer, digest: Buffer | null, mentions: Buffer[] | null) => (await sql<{ id: string }>`
    insert into webhook_events (page_id, signature, object, body, digest, mentions)
    values (${pageId}, 'sha256=x', 'page', ${body}, ${digest}, ${mentions}::bytea[]) returning id::text as id`.execute(db)).rows[0].id
  // The same body twice (an instance under w1, one from before encryption), another under w1, and a withheld one.
  const underK1 = await insert(ring(k1).sealBytes('webhook_events.body', raw), ring(k1).digest('webhook_body', raw), [])
  const legacy = await insert(raw, ring().digest('webhook_body', raw), null)
  const second = await insert(ring(k1).sealBytes('webhook_events.body', other), ring(k1).digest('webhook_body', other), [])
  const withheld = await insert(Buffer.alloc(0), ring(k1).digest('webhook_body', Buffer.from('erased')), [])
  const seen: number[] = []
  const counts = await rotateKeys(db, { keyring: ring(k2, k1), batch: 2, progress: (c) => seen.push(c.webhook_events) })
  t.equal(counts.webhook_events, 3, 'the three bodies, not the empty one')
  t.same(seen.filter((n) => n > 0), [2, 3], 'two rows per statement')
  const rows = await sql<{ id: string, body: Uint8Array, digest: Uint8Array | null, has_mentions: boolean }>`
    select id::text as id, body, digest, mentions is not null as has_mentions from webhook_events where page_id = ${pageId} order by id`.execute(db)
  const byId = new Map(rows.rows.map((r) => [r.id, r]))
  for (const [id, body] of [[underK1, raw], [legacy, raw], [second, other]] as const) {
    t.ok(ring(k2).openBytes('webhook_events.body', byId.get(id)!.body).equals(body), `row ${id} sealed under w2`)
    t.ok(ring(k2).isCurrent(byId.get(id)!.body))
  }
  const digests = [underK1, legacy].map((id) => byId.get(id)!.digest)
  t.same(digests.filter((d) => d !== null).map((d) => Buffer.from(d!).toString('hex')), [ring(k2).digest('webhook_body', raw).toString('hex')], 'one of the two copies holds the new digest, the other none')
  t.ok(Buffer.from(byId.get(second)!.digest!).equals(ring(k2).digest('webhook_body', other)))
  t.equal(byId.get(legacy)!.has_mentions, true, 'the legacy row got its mentions')
  t.equal(Buffer.from(byId.get(withheld)!.body).length, 0, 'the withheld row stays empty')
  t.same(await rotateKeys(db, { keyring: ring(k2, k1) }), { pages: 0, event_subscriptions: 0, optin_tokens: 0, webhook_events: 0 }, 'nothing left')
})

t.test('the maintenance schedule reads opt-in tokens and bodies whole on its first run, then only the rows added since, and whole again once a day', async (t) => {
  const { db } = await testDatabase()
  await truncateAll(db)
  const before = activeKeyring()
  t.teardown(async () => {
    useKeyring(before)
    await truncateAll(db)
  })
  const schedKey = newEncryptionKey('sched')
  useKeyring(ring(schedKey))
  const pageId = uniquePageId()
  await db.insertInto('pages').values({ id: pageId, name: 'Scheduled', access_token: null }).execute()
  const seed = async () => await seedRecurring(db, { pageId, psid: newPsid(), payload: 'deals' })
  const stored = async (id: string) => (await db.selectFrom('optin_tokens').select('token').where('id', '=', id).executeTakeFirstOrThrow()).token
  const body = async () => (await sql<{ id: string }>`
    insert into webhook_events (page_id, signature, object, body, digest)
    values (${pageId}, 'sha256=x', 'page', ${Buffer.from(`{"object":"page","n":"${newPsid()}"}`)}, null) returning id::text as id`.execute(db)).rows[0].id
  const schedule = new RotationSchedule()
  const subjectKey = erasureKey({})
  const now = Date.now()
  const early = await seed()
  await body()
  t.match(await schedule.run(db, subjectKey, now), { optin_tokens: 1, webhook_events: 1 }, 'the first run reads everything')
  t.ok((await stored(early.id)).startsWith('enc:v1:sched:'))

  // A row behind the first run's ids back in clear (as a row committed after the run passed it would
  // be), and a token and a body added after the run.
  await sql`update optin_tokens set token = ${early.token}, token_digest = sha256(convert_to(${early.token}, 'UTF8')) where id = ${early.id}::bigint`.execute(db)
  const late = await seed()
  await body()
  t.match(await schedule.run(db, subjectKey, now + 60_000), { optin_tokens: 1, webhook_events: 1 }, 'a later run reads only the rows added since the last one began')
  t.ok((await stored(late.id)).startsWith('enc:v1:sched:'), 'the token added since is sealed')
  t.equal(await stored(early.id), early.token, 'the row behind the mark is not read')
  t.match(await schedule.run(db, subjectKey, now + 120_000), { optin_tokens: 0, webhook_events: 0 }, 'nothing added: nothing read')

  t.match(await schedule.run(db, subjectKey, now + FULL_ROTATION_MS), { optin_tokens: 1 }, 'a day after the full run, everything again')
  t.ok((await stored(early.id)).startsWith('enc:v1:sched:'))

  const key = newEncryptionKey('sched-2')
  useKeyring(ring(key, schedKey))
  t.match(await schedule.run(db, subjectKey, now + FULL_ROTATION_MS + 60_000), { optin_tokens: 2, webhook_events: 2 }, 'a new first key: everything again')
  t.ok((await stored(early.id)).startsWith('enc:v1:sched-2:') && (await stored(late.id)).startsWith('enc:v1:sched-2:'))
})

t.test('a recurring re-delivery racing the rotation of its token updates the one row: it waits for the rotation and goes by the new digest (Postgres)', { skip: databaseKind !== 'postgres' && 'PGlite has one connection' }, async (t) => {
  const w = await world(t, { env: { MAINTENANCE_INTERVAL_SECONDS: '86400' } })
  const psid = newPsid()
  const token = await recurringEvent(w, psid, { at: Date.now() - 60_000 })
  // Step 1 of a rotation done: every instance knows the new key, first; the token is still under the test key.
  const next = newEncryptionKey('race-next')
  const keyring = ring(next, TEST_ENCRYPTION_KEYS)
  useKeyring(keyring)
  t.teardown(() => useKeyring(ring(TEST_ENCRYPTION_KEYS)))
  // A rotation batch has rewritten the row (sealed and digested under the new key) and not committed yet.
  const rotation = await heldOpen(t, (trx) => rotateTokenBatch(trx, keyring, 500))
  // Meanwhile Meta delivers a later event of the same token (a resume): its statement reads the row under the old digest.
  const redelivery = recurringEvent(w, psid, { token, status: 'RESUME_NOTIFICATIONS' })
  const waiting = async () => (await sql<{ n: number }>`
    select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`.execute(w.db)).rows[0].n
  for (let i = 0; i < 200 && await waiting() === 0; i++) await new Promise((resolve) => setTimeout(resolve, 25))
  t.equal(await waiting(), 1, 'the re-delivery waits for the rotation\'s row')
  rotation.release()
  t.ok((await rotation.done).changed >= 1, 'the rotation rewrote the token')
  await redelivery
  const rows = await recurringRows(w.db, w.pageId, psid)
  t.equal(rows.length, 1, 'one row for the token, not a second under the old digest')
  t.equal(rows[0].token, token)
  t.ok(Buffer.from(rows[0].token_digest!).equals(keyring.digest('optin_token', token)), 'under the new key\'s digest')
  // Every row back under the test key alone, for the tests after this one.
  await rotateKeys(w.db, { keyring: ring(TEST_ENCRYPTION_KEYS, next) })
})

t.test('a broadcast while rotation re-seals its audience\'s tokens pass after pass: everybody sent once, nobody no_token or cooling (Postgres)', { skip: databaseKind !== 'postgres' && 'PGlite has one connection' }, async (t) => {
  // 200 a second: the 400 sends span about ten rotation passes.
  const w = await world(t, { env: broadcastEnv({ MAINTENANCE_INTERVAL_SECONDS: '86400', BROADCAST_RATE_PER_SECOND: '200' }), emulator: { webhookUrl: NOWHERE } })
  const { url } = await testDatabase()
  const other = await openDatabase({ databaseUrl: url, poolSize: 1 })
  t.teardown(() => other.close())
  // The app reads under both keys; the rotation seals under one, then the other, so that every
  // pass rewrites (and row-locks) every token while the broadcast claims them.
  const next = newEncryptionKey('broadcast-next')
  const rings = [ring(next, TEST_ENCRYPTION_KEYS), ring(TEST_ENCRYPTION_KEYS, next)]
  useKeyring(rings[0])
  t.teardown(() => useKeyring(ring(TEST_ENCRYPTION_KEYS)))
  await tokensFor(w, people(300, 'rot'))
  await recurringFor(w, people(100, 'rec'))
  let stop = false
  let passes = 0
  const rotating = (async () => {
    while (!stop) {
      const keyring = rings[passes++ % 2]
      for (let after: TokenKey | undefined; ;) {
        const step = await other.db.transaction().execute(async (trx) => {
          const batch = await rotateTokenBatch(trx, keyring, 100, after)
          // A commit that waits (a synchronous replica, a slow disk): the rewritten rows stay locked meanwhile.
          await sql`select pg_sleep(0.05)`.execute(trx)
          return batch
        })
        if (step.read === 0) break
        after = step.last
      }
    }
  })()
  const created = await postBroadcast(w.app, { topic_id: w.topic.id, message: { text: 'rotating' } })
  t.equal(created.statusCode, 202, created.body)
  const done = await settled(w.app, created.json().id)
  stop = true
  await rotating
  // Every row back under the test key alone, for the tests after this one.
  await rotateKeys(other.db, { keyring: rings[1] })
  t.ok(passes >= 2, `the rotation rewrote the tokens ${passes} times while the broadcast ran`)
  t.match(done.progress, { total: 400, sent_token: 300, sent_recurring: 100, no_token: 0, cooldown: 0, unconfirmed: 0 })
  t.same(done.progress.failed, {}, 'nobody failed')
  await accountedForOnce(t, w, done)
})
