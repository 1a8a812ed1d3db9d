import { randomUUID } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import { LogController, type FastifyReply, type FastifyRequest } from 'fastify'
import { stdSerializers, type LoggerOptions } from 'pino'

// A query parameter whose name says it holds a secret: password=, sslpassword=, api_key=,
// access_token=, hub.verify_token=, appsecret_proof=, client_secret=, sig=, ... (over-masking a
// harmless one such as sslkey= costs nothing in a log).
const SECRET_PARAM = /([?&;][^=&#\s"']*(?:pass|pwd|secret|token|key|sig|proof|auth|cred|session|cookie)[^=&#\s"']*=)[^&#\s"']*/gi
// user:password@ in a URL with a scheme (postgres://user:secret@host/db).
const USERINFO_PASSWORD = /(\b[a-z][a-z0-9+.-]*:\/\/[^/?#@\s:"']*:)[^/?#@\s"']*@/gi

/**
 * A URL (or text that holds URLs, such as an error message) with every secret-looking value masked:
 * the password of `user:password@` and the value of every query parameter whose name looks secret.
 * The one function used wherever the service logs a URL.
 */
export function maskUrl (text: string): string {
  return text.replace(USERINFO_PASSWORD, '$1***@').replace(SECRET_PARAM, '$1[Redacted]')
}

const SAFE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,64}$/

/**
 * The request id: the caller's X-Request-Id when it is short and of safe characters (so that it can
 * go into logs and headers as it is), else a new UUID, unique across instances.
 */
export function requestId (req: IncomingMessage): string {
  const given = req.headers['x-request-id']
  return typeof given === 'string' && SAFE_REQUEST_ID.test(given) ? given : randomUUID()
}

/** Liveness, readiness and the metrics scrape: polled every few seconds, logged at debug only. */
const PROBES = new Set(['/healthz', '/readyz', '/metrics'])

/**
 * Fastify's request log lines, as one line per request when its answer is sent (method, masked URL,
 * route pattern, status, duration; the request id is the line's `reqId`) instead of two. Probes are
 * logged at debug.
 */
export class RequestLog extends LogController {
  override incomingRequest (): void {}

  override requestCompleted (error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply): void {
    const route = request.routeOptions.url ?? 'unmatched'
    const line = {
      method: request.method,
      url: maskUrl(request.url),
      route,
      status: reply.statusCode,
      duration_ms: Math.round(reply.elapsedTime * 10) / 10,
      remote_address: request.ip,
    }
    if (error) reply.log.error({ ...line, err: error }, 'request failed')
    else if (PROBES.has(route)) reply.log.debug(line, 'request')
    else reply.log.info(line, 'request')
  }

  // Our not-found handler answers with a problem; the request's one line says 404.
  override routeNotFound (): void {}
}

/** pino settings: JSON lines, request ids, and no secret ever written. */
export function loggerOptions (level: string, stream?: NodeJS.WritableStream): LoggerOptions & { stream?: NodeJS.WritableStream } {
  return {
    level,
    ...(stream ? { stream } : {}),
    redact: {
      paths: [
        'req.headers.authorization',
        'req.headers["x-hub-signature-256"]',
        'req.headers["x-hub-signature"]',
        'headers.authorization',
        '*.access_token', '*.token', '*.one_time_notif_token', '*.notification_messages_token',
        '*.appsecret_proof', '*.app_secret', '*.api_key',
        'access_token', 'token', 'one_time_notif_token', 'notification_messages_token',
      ],
      censor: '[Redacted]',
    },
    serializers: {
      req (request: FastifyRequest) {
        return {
          method: request.method,
          url: maskUrl(request.url),
          host: request.host,
          remoteAddress: request.ip,
        }
      },
      // An error's message or stack may quote a URL (a connection string, a request).
      err (error: Error) {
        const serialized = stdSerializers.err(error)
        if (typeof serialized.message === 'string') serialized.message = maskUrl(serialized.message)
        if (typeof serialized.stack === 'string') serialized.stack = maskUrl(serialized.stack)
        return serialized
      },
    },
  }
}
