import fp from 'fastify-plugin'
import type { Database } from '../db/database.js'

declare module 'fastify' {
  interface FastifyInstance {
    db: Database
  }
}

/** Decorates the app with the Kysely handle; closes it on shutdown only when the app opened it. */
export default fp<{ db: Database, close?: () => Promise<void> }>(async (app, { db, close }) => {
  app.decorate('db', db)
  if (close) app.addHook('onClose', async () => { await close() })
}, { name: 'database' })
