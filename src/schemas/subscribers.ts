import { Type, type Static } from 'typebox'
import { PageId, Psid, Timestamp, Uuid } from './common.js'

export const SubscriberParamsSchema = Type.Object({ pageId: PageId, psid: Psid })
export type SubscriberParams = Static<typeof SubscriberParamsSchema>

const MaskedToken = Type.String({ description: 'The token masked (first and last four characters); the value itself is never shown.' })

export const SubscriberSchema = Type.Object({
  page_id: PageId,
  psid: Psid,
  first_seen_at: Timestamp,
  last_interaction_at: Type.Union([Timestamp, Type.Null()], { description: 'Latest message, postback, reaction or referral from the person; null if they only opted in.' }),
  window: Type.Object({
    open: Type.Boolean({ description: 'Whether a standard message can be sent now (24 hours after the last interaction).' }),
    closes_at: Type.Union([Timestamp, Type.Null()], { description: 'When the open window closes; null while it is closed.' }),
  }),
  topics: Type.Array(Type.Object({
    topic_id: Uuid,
    name: Type.String(),
    payload: Type.String(),
    usable_tokens: Type.Integer(),
    tokens: Type.Array(Type.Object({
      id: Type.String({ description: 'Token id (not the token).' }),
      token: MaskedToken,
      opted_in_at: Timestamp,
      expires_at: Timestamp,
    }), { description: 'Usable tokens, soonest expiry first.' }),
  }), { description: 'Topics the person holds usable tokens for, the topic with the soonest-expiring token first.' }),
  unmatched_tokens: Type.Array(Type.Object({
    payload: Type.String({ description: 'The payload key the opt-in carried; a topic created with it takes these tokens.' }),
    token: MaskedToken,
    opted_in_at: Timestamp,
    expires_at: Timestamp,
  }), { description: 'Usable tokens whose payload matches no topic of the Page yet, soonest expiry first.' }),
}, { title: 'Subscriber', $id: 'Subscriber' })
