import fp from 'fastify-plugin'
import { BodyTooDeepError } from './errors.js'

const OPEN_OBJECT = 0x7b // {
const OPEN_ARRAY = 0x5b // [
const CLOSE_OBJECT = 0x7d // }
const CLOSE_ARRAY = 0x5d // ]
const QUOTE = 0x22 // "
const BACKSLASH = 0x5c // \

/**
 * True when the JSON text nests objects and arrays deeper than `max`. One pass over the text,
 * brackets inside strings skipped; the text need not be valid JSON (the parser judges that next).
 */
export function nestedDeeperThan (text: string, max: number): boolean {
  let depth = 0
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === BACKSLASH) i++
      else if (c === QUOTE) inString = false
    } else if (c === QUOTE) {
      inString = true
    } else if (c === OPEN_OBJECT || c === OPEN_ARRAY) {
      if (++depth > max) return true
    } else if (c === CLOSE_OBJECT || c === CLOSE_ARRAY) {
      depth--
    }
  }
  return false
}

/**
 * Fastify's JSON body parser (prototype poisoning refused), behind a nesting limit checked on the
 * text before it is parsed: a body thousands of levels deep is a 400 body_too_deep, and nothing
 * after the parser (validation, the idempotency hash) ever walks one. The webhook route reads its
 * bodies as bytes and is not concerned.
 */
export default fp<{ maxDepth: number }>(async (app, { maxDepth }) => {
  const parse = app.getDefaultJsonParser('error', 'error')
  app.removeContentTypeParser('application/json')
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    if (typeof body === 'string' && nestedDeeperThan(body, maxDepth)) {
      done(new BodyTooDeepError(maxDepth), undefined)
      return
    }
    parse(request, body as string, done)
  })
}, { name: 'json-body' })
