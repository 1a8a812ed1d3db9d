import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { pendingMigrations } from '../db/migrate.js'
import { sendProblem } from '../plugins/errors.js'
import { problems } from '../schemas/common.js'

const tags = ['operations']

const routes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/healthz', {
    schema: {
      operationId: 'healthz', summary: 'Liveness: the process answers', tags,
      response: { 200: Type.Object({ status: Type.Literal('ok') }, { description: 'The process answers' }), ...problems() },
    },
  }, async () => ({ status: 'ok' as const }))

  app.get('/readyz', {
    schema: {
      operationId: 'readyz', summary: 'Readiness: the database answers and every migration is applied', tags,
      response: { 200: Type.Object({ status: Type.Literal('ready'), database: Type.String() }, { description: 'Ready: the database answers and every migration is applied' }), ...problems('migrations_pending') },
    },
  }, async (request, reply) => {
    try {
      // One read: the database answers, and says which migrations it has applied.
      const pending = await pendingMigrations(app.db)
      if (pending.length > 0) {
        return sendProblem(reply, 503, 'migrations_pending', `Migrations not applied: ${pending.join(', ')}.`)
      }
    } catch (err) {
      request.log.warn({ err }, 'readiness check failed')
      return sendProblem(reply, 503, 'database_unavailable', 'The database cannot be reached.')
    }
    return { status: 'ready' as const, database: app.dbKind }
  })
}

export default routes
