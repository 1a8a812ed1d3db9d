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
  recurring: Type.Array(Type.Object({
    topic_id: Type.Union([Uuid, Type.Null()], { description: 'The topic whose payload key the opt-in carried; null while no topic of the Page has it.', examples: ['0b9d5a3e-6f1c-4e2a-9a57-3f1d2c4b5a6e'] }),
    name: Type.Union([Type.String(), Type.Null()], { description: 'The topic\'s name; null with topic_id.', examples: ['Weekly deals'] }),
    payload: Type.String({ description: 'The payload key the opt-in carried.', examples: ['deals'] }),
    token: { ...MaskedToken, examples: ['AbCd…wXyZ'] },
    status: Type.Union([Type.Literal('active'), Type.Literal('stopped')], {
      description: 'active: a recurring notification may go out with it (once its pacing allows, see next_send_at); stopped: the person stopped the topic (Meta\'s STOP NOTIFICATIONS) and nothing is sent until they resume it.',
      examples: ['active'],
    }),
    frequency: Type.Union([Type.Literal('DAILY'), Type.Literal('WEEKLY'), Type.Literal('MONTHLY'), Type.Null()], {
      description: 'The frequency the person opted in to (one message per calendar period); null on opt-ins from Graph API v16 on, which name none.',
      examples: ['WEEKLY'],
    }),
    timezone: Type.Union([Type.String(), Type.Null()], { description: 'The opt-in\'s IANA time zone (Meta\'s notification_messages_timezone); null: none given, the Page\'s time zone paces it.', examples: ['Europe/Berlin'] }),
    expires_at: Type.Union([Timestamp, Type.Null()], { description: 'When the opt-in ends; null: never (Meta stopped expiring recurring tokens in August 2023).', examples: [null] }),
    last_sent_at: Type.Union([Timestamp, Type.Null()], { description: 'When a recurring notification last went out with it (or may have: an unanswered attempt counts); null: never.', examples: ['2026-12-01T09:00:00.000Z'] }),
    next_send_at: Type.Union([Timestamp, Type.Null()], { description: 'From when the next recurring notification may go out (its calendar period and the cooldown); null: now.', examples: ['2026-12-03T09:00:00.000Z'] }),
  }), { description: 'The person\'s recurring (notification_messages) tokens on the Page, active or stopped (replaced and expired ones are not shown), by topic name; the tokens above are one-time tokens only.' }),
}, { title: 'Subscriber', $id: 'Subscriber' })
