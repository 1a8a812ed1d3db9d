import { Type } from 'typebox'

export const VerifyQuerySchema = Type.Object({
  'hub.mode': Type.Optional(Type.String({ description: 'Meta sends "subscribe".' })),
  'hub.verify_token': Type.Optional(Type.String({ description: 'Must equal META_VERIFY_TOKEN.' })),
  'hub.challenge': Type.Optional(Type.String({ description: 'Echoed back as the whole response body.' })),
})

export const ChallengeSchema = Type.String({ description: 'The hub.challenge value, bare.' })

const Messaging = Type.Array(Type.Object({
  sender: Type.Optional(Type.Object({ id: Type.String() })),
  recipient: Type.Optional(Type.Object({ id: Type.String() })),
  timestamp: Type.Optional(Type.Union([Type.Integer(), Type.String()], { description: 'Epoch milliseconds; seconds and numeric strings are read too.' })),
  optin: Type.Optional(Type.Object({
    type: Type.Optional(Type.String({ description: 'one_time_notif_req is recorded; other kinds stay in the raw log.' })),
    payload: Type.Optional(Type.String()),
    one_time_notif_token: Type.Optional(Type.String()),
  })),
  message: Type.Optional(Type.Object({ is_echo: Type.Optional(Type.Boolean()) })),
  postback: Type.Optional(Type.Object({})),
  reaction: Type.Optional(Type.Object({})),
  referral: Type.Optional(Type.Object({})),
}))

/** Documentation of what is read; the body is checked by its signature and parsed by hand, not by this schema. */
export const WebhookEnvelopeSchema = Type.Object({
  object: Type.String({ description: 'Only "page" deliveries are read; others are stored and acknowledged.' }),
  entry: Type.Array(Type.Object({
    id: Type.String({ description: 'Page id: the Page of events that name no recipient.' }),
    time: Type.Optional(Type.Union([Type.Integer(), Type.String()], { description: 'Epoch milliseconds (or seconds): the time of an event that carries none.' })),
    messaging: Type.Optional(Messaging),
    standby: Type.Optional(Messaging),
  })),
}, { description: 'Signed with X-Hub-Signature-256 over the raw bytes.' })

export const WebhookHeadersSchema = Type.Object({
  'x-hub-signature-256': Type.Optional(Type.String({ description: 'sha256=<hex HMAC-SHA256 of the raw body, keyed with the App Secret>.' })),
})

export const WebhookReceiptSchema = Type.Object({
  event_id: Type.String({ description: 'Id of the stored raw delivery; for a duplicate, of the one stored first.' }),
  duplicate: Type.Boolean({ description: 'The same bytes were delivered before (Meta re-delivers for up to 36 hours): answered 200, nothing stored or recorded again.' }),
  object: Type.String(),
  tokens_received: Type.Integer({ description: 'Distinct tokens read from the delivery\'s opt-ins: one-time (OTN) and recurring (notification_messages, opt-ins and re-opt-ins).' }),
  tokens_recorded: Type.Integer({ description: 'Usable tokens this delivery added (re-delivered tokens are not counted again).' }),
  tokens_unusable: Type.Integer({ description: 'Tokens added but never usable: already past their expiry (reasons.token_expired).' }),
  tokens_already_held: Type.Integer({ description: 'Tokens already recorded by an earlier delivery (Meta delivers at least once).' }),
  interactions: Type.Integer({ description: 'Messages, postbacks, reactions and referrals read.' }),
  ignored_events: Type.Integer({ description: 'Events of kinds not recorded (echoes, reads, other opt-in kinds, ...): kept only in the raw log.' }),
  rejected_events: Type.Integer({ description: 'Events of a recorded kind whose ids, token or payload cannot be kept: kept only in the raw log.' }),
  restamped_events: Type.Integer({ description: 'Events without a readable time of their own, stamped with the entry\'s time or the time of receipt.' }),
  recurring_stops: Type.Integer({ description: 'Recurring notifications the person stopped (notification_messages_status STOP_NOTIFICATIONS); applied in event-time order, so a late or repeated one changes nothing.' }),
  recurring_resumes: Type.Integer({ description: 'Recurring notifications the person resumed (RESUME_NOTIFICATIONS).' }),
  reasons: Type.Record(Type.String(), Type.Integer(), {
    description: 'Counts by reason of what was not recorded as usable: echo, receipt, unsupported_event, unsupported_optin, not_page_object, ' +
      'changes_field, page_unknown, sender_unknown (ignored); invalid_page_id, invalid_psid, invalid_token, invalid_payload (rejected); token_expired.',
  }),
}, { title: 'WebhookReceipt', $id: 'WebhookReceipt' })
