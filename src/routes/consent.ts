import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { exportPerson } from '../domain/consent-export.js'
import { personHistory } from '../domain/consent-history.js'
import { erasePerson, erasureKey, subjectOf } from '../domain/erasure.js'
import { getPage } from '../domain/pages.js'
import { API_PROBLEMS, apiKeySecurity, named, problems } from '../schemas/common.js'
import { ConsentExportSchema, ErasureSchema, exportView, HistoryListSchema, HistoryQuerySchema, historyView } from '../schemas/consent.js'
import { SubscriberParamsSchema } from '../schemas/subscribers.js'

const tags = ['consent']
const security = apiKeySecurity

/** A person's consent: history, export and erasure (docs/PRIVACY.md). */
const routes: FastifyPluginAsyncTypebox = async (app) => {
  const key = erasureKey(app.config)

  app.get('/pages/:pageId/subscribers/:psid/history', {
    schema: {
      operationId: 'getConsentHistory',
      summary: "A person's consent history, oldest first: opt-ins, stops, what became of each token, what was sent (never a message or a token)",
      description: 'An empty list when the service holds nothing about the person; after an erasure, its `erased` entry (and what came after it).',
      tags, security, 'x-access': { rights: 'read' }, params: SubscriberParamsSchema, querystring: HistoryQuerySchema,
      response: { 200: named(HistoryListSchema, 'A page of entries, oldest first'), ...problems(...API_PROBLEMS, 'page_not_found', 'topic_not_found', 'invalid_cursor') },
    },
  }, async (request) => {
    const { pageId, psid } = request.params
    await getPage(app.db, pageId)
    const { items, next_cursor } = await personHistory(app.db, pageId, psid, request.query, subjectOf(key, pageId, psid))
    return { items: items.map(historyView), next_cursor }
  })

  app.get('/pages/:pageId/subscribers/:psid/export', {
    schema: {
      operationId: 'exportSubscriber',
      summary: 'Everything the service holds about a person on a Page, in one document: subscriber, tokens (masked), history, notifications with their messages, opt-in requests',
      description: 'Empty lists (and a null subscriber) when the service holds nothing about the person.',
      tags, security, 'x-access': { rights: 'read' }, params: SubscriberParamsSchema,
      response: { 200: named(ConsentExportSchema, 'The person\'s data'), ...problems(...API_PROBLEMS, 'page_not_found') },
    },
  }, async (request) => {
    const { pageId, psid } = request.params
    return exportView(await exportPerson(app.db, subjectOf(key, pageId, psid), pageId, psid))
  })

  app.delete('/pages/:pageId/subscribers/:psid', {
    schema: {
      operationId: 'eraseSubscriber',
      summary: 'Erase a person on a Page in one transaction: tokens, subscriber, notifications, opt-in requests, raw webhook bodies that mention them, their history but one `erased` entry',
      description: 'Answers what was erased, by table. A webhook event about the person older than the erasure is not recorded again; a newer opt-in is new consent. ' +
        'A person the service holds nothing about is erased all the same (zeros). What Meta holds is not erased (docs/PRIVACY.md).',
      tags, security, 'x-access': { rights: 'write' }, params: SubscriberParamsSchema,
      response: { 200: named(ErasureSchema, 'What was erased, by table'), ...problems(...API_PROBLEMS, 'page_not_found') },
    },
  }, async (request) => {
    const { pageId, psid } = request.params
    const { complete, ...erasure } = await erasePerson(app.db, key, pageId, psid)
    request.log.info({ page_id: pageId, erased: erasure.erased }, 'person erased')
    // A transaction older than the erasure still running after STRAGGLER_WAIT_MS (erasure.ts): erasing again later removes what it may add.
    if (!complete) request.log.warn({ page_id: pageId }, 'erasure: a transaction that began before it was still running; erase again later to be sure')
    return { ...erasure, erased_at: erasure.erased_at.toISOString() }
  })
}

export default routes
