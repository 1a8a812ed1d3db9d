import { randomBytes, randomFillSync } from 'node:crypto'

// Random identifiers (message ids, tokens, fbtrace ids) are drawn from a pool of crypto-random bytes
// filled in one OpenSSL call, instead of one call per identifier. Every byte is handed out once:
// the pool is refilled in place only after the identifiers cut from it have become strings.
const POOL_SIZE = 16 * 1024
const pool = Buffer.allocUnsafeSlow(POOL_SIZE)
let offset = POOL_SIZE

/** `bytes` fresh crypto-random bytes, base64url without padding. */
export function randomBase64url(bytes: number): string {
  if (bytes > POOL_SIZE) return randomBytes(bytes).toString('base64url')
  if (offset + bytes > POOL_SIZE) {
    randomFillSync(pool)
    offset = 0
  }
  const start = offset
  offset += bytes
  return pool.toString('base64url', start, offset)
}
