import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyRequest, RouteOptions } from 'fastify'
import { Type } from 'typebox'
import { defaultRule, holds, maySee, type AccessRule } from '../domain/access.js'
import { GroupCommit } from '../db/group-commit.js'
import { recordAudit, type AuditRecord } from '../domain/audit.js'
import { notFound } from '../domain/errors.js'
import { isPageId } from '../domain/ids.js'
import { PROBLEM_CODES_LEAD } from '../schemas/common.js'
import type { ProblemCode } from '../schemas/problems.js'
import { sendProblem } from './errors.js'

declare module 'fastify' {
  interface FastifySchema {
    /** What the route needs of a key (src/domain/access.ts); also in the OpenAPI document. */
    'x-access'?: AccessRule
  }
  interface FastifyRequest {
    /** What an audited call acted on, as far as it is known before the entry is written. */
    auditTarget?: { page_id?: string, resource_id?: string }
  }
}

type Bag = Record<string, unknown> | undefined
const text = (bag: unknown, field: string): string | undefined => {
  const v = (bag as Bag)?.[field]
  return typeof v === 'string' ? v : undefined
}

// What an audit entry may hold of what the caller sent: ids of the forms the API accepts, nothing else
// (a call refused as invalid carries its values unchecked).
const RESOURCE_ID = /^[A-Za-z0-9._:-]{1,64}$/
const pageIdOf = (value: string | undefined): string | undefined => value !== undefined && isPageId(value) ? value : undefined
const resourceIdOf = (value: string | undefined): string | undefined => value !== undefined && RESOURCE_ID.test(value) ? value : undefined

const ruleOf = (request: FastifyRequest): AccessRule => request.routeOptions.schema?.['x-access'] ?? defaultRule(request.method)
const READS = new Set(['GET', 'HEAD', 'OPTIONS'])
/** A call that may change something (not a GET, not declared a read): audited, whatever its answer. */
const audited = (request: FastifyRequest): boolean => request.apiKey !== undefined && request.routeOptions.url !== undefined &&
  !READS.has(request.method) && ruleOf(request).rights !== 'read'

/** Adds `codes` to the route's error response of `status` (the problem codes documented per status, schemas/common.ts). */
function documentCodes (route: RouteOptions, status: number, codes: ProblemCode[]): void {
  const schema = route.schema as { response?: Record<number, { description?: string }> } | undefined
  if (!schema?.response) return
  const existing = schema.response[status]
  const listed = existing?.description?.startsWith(PROBLEM_CODES_LEAD)
    ? existing.description.slice(PROBLEM_CODES_LEAD.length).replace(/\.$/, '').split(', ')
    : []
  const all = [...new Set([...listed, ...codes])].sort()
  schema.response[status] = Type.Ref('Problem', { description: `${PROBLEM_CODES_LEAD}${all.join(', ')}.` }) as unknown as { description: string }
}

/**
 * The one access rule of /v1 (docs/SECURITY.md), applied to every route of the scope it is
 * registered in, from what each route declares in its schema (`x-access`; a route that declares
 * nothing is a read by GET and HEAD, a change otherwise):
 * - a change by a read-only key, an admin route for a key that is not an admin: 403 `forbidden`;
 * - a Page the key may not see, named in the path (`pageId`), the body (`page_id`) or through the
 *   resource the route names (`owner`): the same 404 as a Page or resource that does not exist;
 * - listings (`filtered`) hand the key's Pages to their statement.
 * Every call that may change something is audited after its answer (the status is known then);
 * `writes` holds the entries being written (the app waits for them when it closes).
 */
async function access (app: FastifyInstance, opts: { writes: Set<Promise<void>> }): Promise<void> {
  app.addHook('onRoute', (route) => {
    const schema = route.schema as { 'x-access'?: AccessRule, params?: { properties?: Record<string, unknown> }, body?: unknown } | undefined
    const method = Array.isArray(route.method) ? route.method[0] : route.method
    const rule = schema?.['x-access'] ?? defaultRule(method)
    if (rule.rights !== 'read') documentCodes(route, 403, ['forbidden'])
    if (rule.owner) documentCodes(route, 404, [`${rule.owner.what}_not_found`])
    if (route.url.includes(':pageId')) documentCodes(route, 404, ['page_not_found'])
  })

  app.addHook('onRequest', async (request, reply) => {
    const key = request.apiKey
    if (!key || request.routeOptions.url === undefined) return
    const { rights } = ruleOf(request)
    if (holds(key, rights)) return
    return sendProblem(reply, 403, 'forbidden', rights === 'admin'
      ? `Only an admin key (every Page, not read-only) may use this route; key ${key.name} is not one.`
      : `Key ${key.name} is read-only: it cannot change anything.`)
  })

  app.addHook('preHandler', async (request) => {
    const key = request.apiKey
    if (!key || request.routeOptions.url === undefined) return
    const rule = ruleOf(request)
    const pageId = text(request.params, 'pageId') ?? text(request.body, 'page_id')
    if (pageId !== undefined && !maySee(key, pageId)) throw notFound('page', pageId)
    // A filtered route finds the resource among the key's Pages in its own statement.
    if (!rule.owner || rule.filtered === true) return
    const id = text(rule.owner.in === 'params' ? request.params : request.body, rule.owner.field)
    if (id === undefined || key.pages === null) return
    const row = await app.db.selectFrom(rule.owner.table).select('page_id').where('id', '=', id).executeTakeFirst()
    if (row && !maySee(key, row.page_id)) throw notFound(rule.owner.what, id)
    if (row) request.auditTarget = { page_id: row.page_id }
  })

  // What the answer names (a created resource's id, its Page), for the audit entry.
  app.addHook('onSend', async (request, reply, payload) => {
    if (!audited(request) || reply.statusCode >= 300 || typeof payload !== 'string' || !payload.startsWith('{')) return payload
    try {
      const body = JSON.parse(payload) as Bag
      request.auditTarget = { page_id: request.auditTarget?.page_id ?? text(body, 'page_id'), resource_id: text(body, 'id') }
    } catch {}
    return payload
  })

  const writing = opts.writes
  // Entries of calls answered together are written by one statement (group commit), so that under
  // load the audit adds a fraction of a statement per call, after its answer.
  const entries = new GroupCommit<AuditRecord, undefined>(async (batch) => {
    await recordAudit(app.db, ...batch)
    return batch.map(() => undefined)
  }, 200, 1)
  app.addHook('onResponse', async (request, reply) => {
    if (!audited(request)) return
    const rule = ruleOf(request)
    const at = new Date()
    const write = (async () => {
      let pageId = pageIdOf(text(request.params, 'pageId') ?? text(request.body, 'page_id') ?? request.auditTarget?.page_id)
      const ownerId = rule.owner ? text(rule.owner.in === 'params' ? request.params : request.body, rule.owner.field) : undefined
      // Only an id that passed validation is looked up (a 400 carries it unchecked).
      if (pageId === undefined && rule.owner && ownerId !== undefined && reply.statusCode !== 400) {
        pageId = (await app.db.selectFrom(rule.owner.table).select('page_id').where('id', '=', ownerId).executeTakeFirst()
          .catch(() => undefined))?.page_id
      }
      await entries.submit({
        key_name: request.apiKey!.name,
        method: request.method,
        route: request.routeOptions.url!,
        page_id: pageId ?? null,
        resource_id: resourceIdOf(text(request.params, 'id') ?? request.auditTarget?.resource_id) ?? null,
        status: reply.statusCode,
        request_id: request.id,
        at,
      })
    })().catch((err) => { request.log.error({ err }, 'audit entry not written') })
    writing.add(write)
    void write.finally(() => writing.delete(write))
  })
}

export default fp(access, { name: 'access', dependencies: ['database'] })
