import { createHmac } from 'node:crypto'
import { request } from 'undici'
import type { WebhookResult, WebhookStamps } from './types.js'

// Meta documents a 20 s timeout for webhook deliveries.
const WEBHOOK_TIMEOUT_MS = 20_000

export function signatureHeaders(body: string | Buffer, appSecret: string): Record<string, string> {
  return {
    'x-hub-signature-256': 'sha256=' + createHmac('sha256', appSecret).update(body).digest('hex'),
    'x-hub-signature': 'sha1=' + createHmac('sha1', appSecret).update(body).digest('hex'),
  }
}

export type Stamp = Exclude<WebhookStamps, 'mixed'>

/** The order 'mixed' cycles through, one webhook each. */
export const MIXED_STAMPS: readonly Stamp[] = ['milliseconds', 'seconds', 'string', 'omitted']

export interface EnvelopeShape {
  stamp?: Stamp
  omitRecipient?: boolean
}

function stamped(time: number, stamp: Stamp): number | string {
  if (stamp === 'seconds') return Math.floor(time / 1000)
  if (stamp === 'string') return String(time)
  return time
}

export function messagingEnvelope(
  pageId: string,
  psid: string,
  time: number,
  event: Record<string, unknown>,
  shape: EnvelopeShape = {},
) {
  const stamp = shape.stamp ?? 'milliseconds'
  const at = stamped(time, stamp)
  return {
    object: 'page',
    entry: [
      {
        id: pageId,
        time: at,
        messaging: [
          {
            sender: { id: psid },
            ...(shape.omitRecipient ? {} : { recipient: { id: pageId } }),
            ...(stamp === 'omitted' ? {} : { timestamp: at }),
            ...event,
          },
        ],
      },
    ],
  }
}

export async function postWebhook(url: string, body: string, appSecret: string | undefined): Promise<WebhookResult> {
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    ...(appSecret !== undefined ? signatureHeaders(body, appSecret) : {}),
  }
  try {
    const res = await request(url, {
      method: 'POST',
      headers,
      body,
      headersTimeout: WEBHOOK_TIMEOUT_MS,
      bodyTimeout: WEBHOOK_TIMEOUT_MS,
    })
    await res.body.dump()
    return { status: res.statusCode }
  } catch (err) {
    return { status: null, error: err instanceof Error ? err.message || err.name : String(err) }
  }
}
