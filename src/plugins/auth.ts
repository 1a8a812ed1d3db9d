import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify'
import type { ApiKey } from '../domain/access.js'
import { sendProblem } from './errors.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** The /v1 key the request came with (set once it is recognised). */
    apiKey?: ApiKey
  }
}

const digest = (value: string): Buffer => createHash('sha256').update(value).digest()

const apiKeyMessages = {
  missing: 'Send an API key as "Authorization: Bearer <key>".',
  invalid: 'The API key is not valid.',
}

/**
 * Bearer secrets compared as fixed-length digests in constant time: every key is checked, whichever
 * matches. `recognised` is told which key it was.
 */
function bearerAuth<K extends { secret: string }> (keys: readonly K[], messages: typeof apiKeyMessages,
  recognised: (request: FastifyRequest, reply: FastifyReply, key: K) => void): onRequestHookHandler {
  const expected = keys.map((key) => ({ key, digest: digest(key.secret) }))
  return async (request, reply) => {
    const header = request.headers.authorization ?? ''
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header)
    let found: K | undefined
    if (match) {
      const given = digest(match[1])
      for (const e of expected) if (timingSafeEqual(given, e.digest)) found = e.key
    }
    if (!found) {
      reply.header('www-authenticate', 'Bearer')
      return sendProblem(reply, 401, 'unauthorized', match ? messages.invalid : messages.missing)
    }
    recognised(request, reply, found)
  }
}

/** One bearer secret (or several), with its own messages: the metrics token. */
export function apiKeyAuth (secrets: string[], messages = apiKeyMessages): onRequestHookHandler {
  return bearerAuth(secrets.map((secret) => ({ secret })), messages, () => {})
}

/**
 * The /v1 keys (API_KEYS). The request carries its key, and every log line about it the key's
 * name (`key_name`), never its secret.
 */
export function v1KeyAuth (keys: readonly ApiKey[]): onRequestHookHandler {
  return bearerAuth(keys, apiKeyMessages, (request, reply, key) => {
    request.apiKey = key
    request.log = request.log.child({ key_name: key.name })
    reply.log = request.log
  })
}
