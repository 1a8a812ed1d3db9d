import type { FastifyRequest } from 'fastify'
import type { LoggerOptions } from 'pino'

// Query parameters whose values are secrets (Meta's handshake sends hub.verify_token in the URL).
const SECRET_PARAMS = /([?&](?:hub\.verify_token|access_token|appsecret_proof|token)=)[^&]*/gi

function redactUrl (url: string): string {
  return url.replace(SECRET_PARAMS, '$1[Redacted]')
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
          url: redactUrl(request.url),
          host: request.host,
          remoteAddress: request.ip,
        }
      },
    },
  }
}
