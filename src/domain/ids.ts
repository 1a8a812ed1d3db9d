/**
 * What the service accepts as an id or key, in one place: the /v1 schemas and webhook ingestion
 * read these, so that a webhook never records what the API could not address.
 */

/** A Facebook Page id: digits. */
export const PAGE_ID_PATTERN = '^[0-9]{1,32}$'
/** A page-scoped person id (digits in practice; letters, `_` and `-` admitted). */
export const PSID_PATTERN = '^[0-9A-Za-z_-]{1,64}$'

const PAGE_ID = new RegExp(PAGE_ID_PATTERN)
const PSID = new RegExp(PSID_PATTERN)

export const isPageId = (value: string): boolean => PAGE_ID.test(value)
export const isPsid = (value: string): boolean => PSID.test(value)

/**
 * An opt-in payload (a topic's key). Meta documents no limit or alphabet for it, and deployments
 * put JSON, spaces and any script in it; 1,000 characters is Meta's limit for postback payloads, the
 * nearest documented one. The byte bound keeps every index over it within Postgres's btree row
 * limit (2,704 bytes) with the Page id and PSID beside it.
 */
export const PAYLOAD_MAX_CHARS = 1000
export const PAYLOAD_MAX_BYTES = 2000

/** Characters are code points, as the API's schema counts them. */
export function isPayload (value: string): boolean {
  if (value.length === 0 || Buffer.byteLength(value, 'utf8') > PAYLOAD_MAX_BYTES) return false
  return value.length <= PAYLOAD_MAX_CHARS || [...value].length <= PAYLOAD_MAX_CHARS
}

/**
 * An opt-in token as Meta hands it over: an opaque string without spaces or control characters.
 * Real ones are about a hundred characters; the bound keeps the token's unique index within the
 * btree row limit.
 */
export const TOKEN_MAX_BYTES = 1024
const TOKEN_CHARS = /^[\x21-\x7e]+$/

export function isToken (value: string): boolean {
  return value.length > 0 && value.length <= TOKEN_MAX_BYTES && TOKEN_CHARS.test(value)
}
