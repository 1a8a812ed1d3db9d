import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { DomainError } from '../domain/errors.js'
import { erasureKey } from '../domain/erasure.js'
import { DeliveryWriter, receiptOf } from '../domain/ingest.js'
import { parseDelivery, signatureMatches } from '../domain/webhook-body.js'
import { sendProblem } from '../plugins/errors.js'
import { named, problems } from '../schemas/common.js'
import {
  ChallengeSchema, VerifyQuerySchema, WebhookEnvelopeSchema, WebhookHeadersSchema, WebhookReceiptSchema,
} from '../schemas/webhooks.js'

const tags = ['webhooks']
const digest = (value: string): Buffer => createHash('sha256').update(value).digest()

/**
 * Meta's webhook. Encapsulated: here every body is read as raw bytes (whatever its content type),
 * so that the signature is checked over exactly what was sent, before anything is parsed.
 */
const routes: FastifyPluginAsyncTypebox = async (app) => {
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => { done(null, body) })
  const writer = new DeliveryWriter(app.db, undefined, undefined, erasureKey(app.config))

  app.get('/webhooks/messenger', {
    schema: {
      operationId: 'verifyWebhook', summary: "Meta's subscription handshake: echoes hub.challenge when hub.verify_token matches", tags,
      querystring: VerifyQuerySchema,
      response: { 200: { description: 'The bare challenge', content: { 'text/plain': { schema: ChallengeSchema } } }, ...problems('verification_failed') },
    },
  }, async (request, reply) => {
    const { 'hub.mode': mode, 'hub.verify_token': token, 'hub.challenge': challenge } = request.query
    const expected = app.config.META_VERIFY_TOKEN
    // Fixed-length digests, so the comparison takes the same time whatever was sent.
    const tokenOk = expected !== undefined && token !== undefined && timingSafeEqual(digest(token), digest(expected))
    if (mode !== 'subscribe' || !tokenOk || challenge === undefined) {
      return sendProblem(reply, 403, 'verification_failed', expected === undefined
        ? 'Webhook verification is not configured (META_VERIFY_TOKEN is unset).'
        : 'hub.mode must be "subscribe" and hub.verify_token must match.')
    }
    return reply.code(200).type('text/plain; charset=utf-8').send(challenge)
  })

  app.post('/webhooks/messenger', {
    bodyLimit: app.config.WEBHOOK_BODY_LIMIT_BYTES,
    // The schema documents the envelope; the body is bytes, checked by signature and parsed in the handler.
    validatorCompiler: () => () => true,
    schema: {
      operationId: 'receiveWebhook', summary: 'Receive signed Messenger events: stores the delivery, its OTN tokens and interactions', tags,
      headers: WebhookHeadersSchema, body: WebhookEnvelopeSchema,
      response: { 200: named(WebhookReceiptSchema, 'Stored (or already stored: the same bytes again)'), ...problems('invalid_signature', 'invalid_webhook_body', 'body_too_large', 'webhook_not_configured') },
    },
  }, async (request, reply) => {
    const secret = app.config.META_APP_SECRET
    if (secret === undefined) {
      throw new DomainError('webhook_not_configured', 'Webhook deliveries are refused: META_APP_SECRET is unset.')
    }
    const raw = Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0)
    const signature = request.headers['x-hub-signature-256']
    if (typeof signature !== 'string' || !signatureMatches(raw, signature, secret)) {
      request.log.warn({ signed: typeof signature === 'string' }, 'webhook refused: bad or missing signature')
      return sendProblem(reply, 401, 'invalid_signature', typeof signature === 'string'
        ? 'X-Hub-Signature-256 does not match the body.'
        : 'X-Hub-Signature-256 is missing.')
    }
    const delivery = parseDelivery(raw)
    const recorded = await writer.submit({ raw, signature, delivery })
    const receipt = receiptOf(delivery, recorded)
    app.webhookReceived(delivery, recorded.duplicate)
    if (receipt.duplicate) request.log.info({ webhook: receipt }, 'webhook re-delivered: already stored, nothing stored again')
    else if (receipt.rejected_events > 0 || receipt.tokens_unusable > 0) request.log.warn({ webhook: receipt }, 'webhook recorded, with events or tokens not usable')
    else request.log.info({ webhook: receipt }, 'webhook recorded')
    return receipt
  })
}

export default routes
