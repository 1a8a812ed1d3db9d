import fp from 'fastify-plugin'
import type { FastifyError, FastifyReply } from 'fastify'
import { DomainError } from '../domain/errors.js'
import { PROBLEMS, type ProblemCode } from '../schemas/problems.js'
import type { Notification } from '../db/types.js'
import type { Problem } from '../schemas/common.js'
import { notificationView } from '../schemas/notifications.js'

const titles: Record<number, string> = {
  400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed',
  409: 'Conflict', 413: 'Payload Too Large', 414: 'URI Too Long', 415: 'Unsupported Media Type', 422: 'Unprocessable Entity',
  429: 'Too Many Requests', 500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable',
  504: 'Gateway Timeout',
}

export function sendProblem (reply: FastifyReply, status: number, code: ProblemCode, detail: string,
  extra: Partial<Problem> = {}): FastifyReply {
  const body: Problem = {
    type: `https://otn.invalid/problems/${code}`,
    title: titles[status] ?? 'Error',
    status,
    detail,
    code,
    ...extra,
  }
  return reply.code(status).type('application/problem+json').send(body)
}

// Fastify's own errors that are the caller's fault, with the code we promise for each.
const fastifyErrors: Record<string, [number, ProblemCode]> = {
  FST_ERR_CTP_BODY_TOO_LARGE: [413, 'body_too_large'],
  FST_ERR_CTP_INVALID_MEDIA_TYPE: [415, 'unsupported_media_type'],
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: [400, 'invalid_content_length'],
  FST_ERR_CTP_EMPTY_JSON_BODY: [400, 'invalid_json'],
  FST_ERR_CTP_INVALID_JSON_BODY: [400, 'invalid_json'],
  FST_ERR_BAD_URL: [400, 'bad_url'],
}

// Input Postgres itself refuses (a NUL character in text, a value of the wrong form): the caller's fault.
const postgresInputErrors: Record<string, [ProblemCode, string]> = {
  22021: ['invalid_characters', 'Text may not contain NUL characters or invalid UTF-8.'],
  '22P05': ['invalid_characters', 'Text may not contain NUL characters or invalid UTF-8.'],
  '22P02': ['invalid_value', 'A value is not of the expected form.'],
  22001: ['value_too_long', 'A value is longer than allowed.'],
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
      return sendProblem(reply, 400, 'validation_failed',
        errors.map((e) => `${e.field}: ${e.message}`).join('; '), { errors })
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

  app.setNotFoundHandler((request, reply) =>
    sendProblem(reply, 404, 'route_not_found', `No route ${request.method} ${request.url.split('?')[0]}.`))
}, { name: 'errors' })
