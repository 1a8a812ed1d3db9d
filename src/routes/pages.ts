import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { deletePage, getPage, listPages, pageView, upsertPage } from '../domain/pages.js'
import { API_PROBLEMS, apiKeySecurity, BODY_PROBLEMS, named, problems } from '../schemas/common.js'
import { PageListQuerySchema, PageListSchema, PageParamsSchema, PageSchema, PutPageBodySchema } from '../schemas/pages.js'

const tags = ['pages']
const security = apiKeySecurity

const routes: FastifyPluginAsyncTypebox = async (app) => {
  app.put('/pages/:pageId', {
    schema: {
      operationId: 'putPage', summary: 'Register or update a Page and its access token', tags, security, 'x-access': { rights: 'write' },
      params: PageParamsSchema, body: PutPageBodySchema,
      response: { 200: named(PageSchema, 'Updated'), 201: named(PageSchema, 'Registered'), ...problems(...API_PROBLEMS, ...BODY_PROBLEMS, 'invalid_timezone') },
    },
  }, async (request, reply) => {
    const { page, created } = await upsertPage(app.db, request.params.pageId, request.body, request.apiKey?.name)
    return reply.code(created ? 201 : 200).send(pageView(page))
  })

  app.get('/pages/:pageId', {
    schema: {
      operationId: 'getPage', summary: 'Read a Page (never its access token)', tags, security, 'x-access': { rights: 'read' },
      params: PageParamsSchema, response: { 200: named(PageSchema, 'The Page (never its access token)'), ...problems(...API_PROBLEMS, 'page_not_found') },
    },
  }, async (request) => pageView(await getPage(app.db, request.params.pageId)))

  app.get('/pages', {
    schema: {
      operationId: 'listPages', summary: 'List Pages (those the key may see)', tags, security, 'x-access': { rights: 'read', filtered: true },
      querystring: PageListQuerySchema, response: { 200: named(PageListSchema, 'A page of Pages, oldest first'), ...problems(...API_PROBLEMS, 'invalid_cursor') },
    },
  }, async (request) => {
    const { items, next_cursor } = await listPages(app.db, request.query.limit, request.query.cursor, request.apiKey?.pages)
    return { items: items.map(pageView), next_cursor }
  })

  app.delete('/pages/:pageId', {
    schema: {
      operationId: 'deletePage', summary: 'Delete a Page that has no topics', tags, security, 'x-access': { rights: 'write' },
      params: PageParamsSchema, response: { 204: Type.Null({ description: 'Deleted' }), ...problems(...API_PROBLEMS, 'page_not_found', 'page_has_topics') },
    },
  }, async (request, reply) => {
    await deletePage(app.db, request.params.pageId)
    return reply.code(204).send(null)
  })
}

export default routes
