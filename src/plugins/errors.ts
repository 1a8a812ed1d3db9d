import type { Socket } from 'node:net'
import fp from 'fastify-plugin'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { DomainError } from '../domain/errors.js'
import { PROBLEMS, type ProblemCode } from '../schemas/problems.js'
import type { Notification } from '../db/types.js'
import type { Problem } from '../schemas/common.js'
import { notificationView } from '../schemas/notifications.js'

const titles: Record<number, string> = {
  400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed',
  408: 'Request Timeout', 409: 'Conflict', 413: 'Payload Too Large', 414: 'URI Too Long', 415: 'Unsupported Media Type',
  422: 'Unprocessable Entity', 429: 'Too Many Requests', 431: 'Request Header Fields Too Large',
  500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout',
}

function problem (status: number, code: ProblemCode, detail: string, extra: Partial<Problem> = {}): Problem {
  return { type: `https://otn.invalid/problems/${code}`, title: titles[status] ?? 'Error', status, detail, code, ...extra }
}

export function sendProblem (reply: FastifyReply, status: number, code: ProblemCode, detail: string,
  extra: Partial<Problem> = {}): FastifyReply {
  return reply.code(status).type('application/problem+json').send(problem(status, code, detail, extra))
}

/** A validation answer lists at most this many errors (a body of 90k unknown properties made an 8.8 MB answer). */
export const MAX_VALIDATION_ERRORS = 20

/** Raised by the JSON body parser (plugins/json-body.ts) before parsing a body nested deeper than allowed. */
export class BodyTooDeepError extends Error {
  readonly code = 'OTN_BODY_TOO_DEEP'
  constructor (readonly maxDepth: number) {
    super(`The JSON body is nested deeper than ${maxDepth} levels of objects and arrays.`)
  }
}

// Fastify's own errors that are the caller's fault, with the code we promise for each.
const fastifyErrors: Record<string, [number, ProblemCode]> = {
  FST_ERR_CTP_BODY_TOO_LARGE: [413, 'body_too_large'],
  FST_ERR_CTP_INVALID_MEDIA_TYPE: [415, 'unsupported_media_type'],
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: [400, 'invalid_content_length'],
  FST_ERR_CTP_EMPTY_JSON_BODY: [400, 'invalid_json'],
  FST_ERR_CTP_INVALID_JSON_BODY: [400, 'invalid_json'],
  FST_ERR_BAD_URL: [400, 'bad_url'],
  OTN_BODY_TOO_DEEP: [400, 'body_too_deep'],
}

// Input Postgres itself refuses (a NUL character in text, a value of the wrong form): the caller's fault.
const postgresInputErrors: Record<string, [ProblemCode, string]> = {
  22021: ['invalid_characters', 'Text may not contain NUL characters or invalid UTF-8.'],
  '22P05': ['invalid_characters', 'Text may not contain NUL characters or invalid UTF-8.'],
  '22P02': ['invalid_value', 'A value is not of the expected form.'],
  22001: ['value_too_long', 'A value is longer than allowed.'],
  22007: ['invalid_value', 'A value is not of the expected form.'],
  22008: ['invalid_value', 'A date or time is out of range.'],
}

function isDatabaseDown (error: unknown): boolean {
  const e = error as { code?: string, message?: string }
  return ['ECONNREFUSED', 'ECONNRESET', '57P01', '57P03', '08006', '08001', '08003'].includes(e.code ?? '') ||
    /Connection terminated|timeout exceeded when trying to connect|PGlite is closed|not queryable/i.test(e.message ?? '')
}

/** Errors Fastify's router raises before any route or hook runs (the frameworkErrors option). */
export function frameworkErrors (error: FastifyError, _request: unknown, reply: FastifyReply): FastifyReply {
  if (error.code === 'FST_ERR_MAX_PARAM_LENGTH') return sendProblem(reply, 414, 'path_parameter_too_long', 'A path parameter is longer than any valid id.')
  if (error.code === 'FST_ERR_BAD_URL') return sendProblem(reply, 400, 'bad_url', 'The URL is not valid.')
  return sendProblem(reply, 500, 'internal_error', 'Something went wrong on our side; it has been logged.')
}

// Errors Node's HTTP parser raises before Fastify sees a request (the clientErrorHandler option).
const clientErrorProblems: Record<string, [number, ProblemCode, string]> = {
  ERR_HTTP_REQUEST_TIMEOUT: [408, 'request_timeout', 'The request was not received in time (HTTP_HEADERS_TIMEOUT_MS, HTTP_REQUEST_TIMEOUT_MS).'],
  HPE_HEADER_OVERFLOW: [431, 'headers_too_large', 'The request\'s headers are larger than allowed.'],
}

/**
 * Node's own answers to requests that never reach Fastify (bad header characters, headers too
 * large, a request not received in time), in the problem shape; the connection is closed after it.
 */
export function clientErrors (this: FastifyInstance, error: Error & { code?: string }, socket: Socket): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) return
  const [status, code, detail]: [number, ProblemCode, string] = clientErrorProblems[error.code ?? ''] ?? [400, 'malformed_request', 'The request is not valid HTTP.']
  this.log.debug({ err: error, status }, 'client error')
  if (socket.writable) {
    const body = JSON.stringify(problem(status, code, detail))
    socket.write(`HTTP/1.1 ${status} ${titles[status]}\r\nConnection: close\r\nContent-Type: application/problem+json; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`)
  }
  socket.destroy(error)
}

/** No route matched: 404, or 401 first under /v1 (see app.ts), so that routes cannot be enumerated without a key. */
export function routeNotFound (request: FastifyRequest, reply: FastifyReply): FastifyReply {
  return sendProblem(reply, 404, 'route_not_found', `No route ${request.method} ${request.url.split('?')[0]}.`)
}

/** The one place that turns errors into application/problem+json; nothing internal leaks out. */
export default fp(async (app) => {
  app.setErrorHandler((error: FastifyError, request, reply) => {
    if (error instanceof DomainError) {
      const status = PROBLEMS[error.code].status
      const { retryAfterSeconds, graph, notification, ...rest } = error.extra
      if (retryAfterSeconds !== undefined) reply.header('retry-after', String(retryAfterSeconds))
      return sendProblem(reply, status, error.code, error.message, {
        ...rest,
        // A recorded notification rides along as the API shows it.
        ...(notification ? { notification: notificationView(notification as Notification) } : {}),
        ...(graph ? { graph } : {}),
        ...(retryAfterSeconds !== undefined ? { retry_after_seconds: retryAfterSeconds } : {}),
      })
    }
    if (error.validation) {
      const errors = error.validation.map((v) => {
        const missing = (v.params as { missingProperty?: string }).missingProperty
        const extra = (v.params as { additionalProperty?: string }).additionalProperty
        const path = v.instancePath.replace(/^\//, '').replace(/\//g, '.')
        const field = [error.validationContext, path, missing ?? extra].filter(Boolean).join('/')
        return { field, message: extra ? `unknown property ${extra}` : v.message ?? 'is invalid' }
      })
      const shown = errors.slice(0, MAX_VALIDATION_ERRORS)
      const more = errors.length - shown.length
      return sendProblem(reply, 400, 'validation_failed',
        shown.map((e) => `${e.field}: ${e.message}`).join('; ') + (more > 0 ? `; and ${more} more` : ''), { errors: shown })
    }
    const known = error.code ? fastifyErrors[error.code] : undefined
    if (known) return sendProblem(reply, known[0], known[1], error.message)
    const input = postgresInputErrors[(error as { code?: string }).code ?? '']
    if (input) return sendProblem(reply, 400, input[0], input[1])
    if (isDatabaseDown(error)) {
      request.log.error({ err: error }, 'database unavailable')
      reply.header('retry-after', '5')
      return sendProblem(reply, 503, 'database_unavailable', 'The database cannot be reached; try again shortly.')
    }
    if (error.statusCode && error.statusCode >= 400 && error.statusCode < 500) {
      return sendProblem(reply, error.statusCode, 'bad_request', error.message)
    }
    request.log.error({ err: error }, 'unhandled error')
    return sendProblem(reply, 500, 'internal_error', 'Something went wrong on our side; it has been logged.')
  })

  app.setNotFoundHandler(routeNotFound)
}, { name: 'errors' })
