import fp from 'fastify-plugin'
import { batchedSteps } from '../domain/send-steps.js'
import { createSender, type Sender } from '../domain/send.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The one send path: API sends, broadcasts and lease recovery all use it. */
    sender: Sender
  }
}

/**
 * Builds the send path once: its statements batched by one group commit for the whole process
 * (every send, whichever path it comes by, shares it), the Graph client, and the outcome counter.
 */
export default fp(async (app) => {
  const steps = batchedSteps(app.db, app.config.TOKEN_LEASE_SECONDS, 100, 2, app.config.RECURRING_COOLDOWN_HOURS * 3600)
  app.decorate('sender', createSender({
    db: app.db, graph: app.graph, config: app.config, steps, log: app.log, onFinal: app.notificationFinished,
  }))
}, { name: 'sender', dependencies: ['database'] })
