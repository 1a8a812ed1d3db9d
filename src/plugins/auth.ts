import { createHash, timingSafeEqual } from 'node:crypto'
import type { onRequestHookHandler } from 'fastify'
import { sendProblem } from './errors.js'

const digest = (value: string): Buffer => createHash('sha256').update(value).digest()

const apiKeyMessages = {
  missing: 'Send an API key as "Authorization: Bearer <key>".',
  invalid: 'The API key is not valid.',
}

/** Bearer API keys (or another bearer secret, with its own messages), compared as fixed-length digests in constant time; every key is checked. */
export function apiKeyAuth (keys: string[], messages = apiKeyMessages): onRequestHookHandler {
  const expected = keys.map(digest)
  return async (request, reply) => {
    const header = request.headers.authorization ?? ''
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header)
    let ok = false
    if (match) {
      const given = digest(match[1])
      for (const key of expected) ok = timingSafeEqual(given, key) || ok
    }
    if (!ok) {
      reply.header('www-authenticate', 'Bearer')
      return sendProblem(reply, 401, 'unauthorized', match ? messages.invalid : messages.missing)
    }
  }
}
