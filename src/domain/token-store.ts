/**
 * The token store: every statement that reads or moves a token is in ./token-store/ (one file
 * per job, re-exported here), and nowhere else: test/domain/token-store.test.ts checks it. The
 * lifecycle's derived states (lifecycle.ts) become SQL there once, in states.ts. Statements of other modules
 * that must move tokens in the same round trip (a send's start and outcome, webhook ingestion)
 * take their token part from this module as a CTE.
 *
 * A held token keeps its state, `available`: a claim sets `notification_id` and
 * `lease_expires_at`, columns no index names, so that Postgres makes the claim a HOT update (no
 * new index entries) and its cost stays flat at ten million tokens (migration 20261122000000):
 * a committed claim's p50 at 10 M tokens went from 1.18–1.80× of its p50 at 10 k to 1.02–1.03×,
 * and its WAL from 29.7 to 7.4 kB (2026-11-22).
 */
export * from './token-store/states.js'
export * from './token-store/holds.js'
export * from './token-store/recovery.js'
export * from './token-store/counts.js'
export * from './token-store/people.js'
export * from './token-store/audience.js'
export * from './token-store/ingest.js'
export * from './token-store/rotation.js'
