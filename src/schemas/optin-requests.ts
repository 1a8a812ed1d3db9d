import { Type, type Static } from 'typebox'
import { IdParamsSchema, PageId, Psid, Timestamp, Uuid } from './common.js'

export const OptinRequestParamsSchema = IdParamsSchema

const kinds = () => [Type.Literal('one_time_notif'), Type.Literal('notification_messages')] as const
/** Meta's `notification_messages_cta_text`: the words on the opt-in button. */
const ctaTexts = () => [Type.Literal('ALLOW'), Type.Literal('GET'), Type.Literal('GET_UPDATES'), Type.Literal('OPT_IN'), Type.Literal('SIGN_UP')] as const
/** The options only a recurring request (kind notification_messages) takes. */
export const RECURRING_OPTIONS = ['frequency', 'image_url', 'cta_text', 'reoptin', 'timezone'] as const


export const CreateOptinRequestBodySchema = Type.Object({
  psid: Psid,
  title: Type.Optional(Type.String({
    minLength: 1, maxLength: 65, pattern: '\\S',
    description: 'Shown above the "Notify Me" button (Meta allows 65 characters); default: the topic\'s title. For recurring requests Meta\'s weekly rule counts per title.',
  })),
  kind: Type.Optional(Type.Union([...kinds()], {
    default: 'one_time_notif',
    description: 'Which opt-in to ask for. one_time_notif (default): Meta\'s one_time_notif_req template, one message per click, ' +
      'throttled per topic and person (OPTIN_REQUEST_INTERVAL_SECONDS). notification_messages: the recurring (marketing messages) ' +
      'template, only for people Meta still serves it to (AU, EU, JP, KR, UK since 2026-02-10); Meta allows one per title, person and ' +
      'week, enforced here (429 recurring_optin_weekly_limit).',
    examples: ['notification_messages'],
  })),
  frequency: Type.Optional(Type.Union([Type.Literal('DAILY'), Type.Literal('WEEKLY'), Type.Literal('MONTHLY')], {
    description: 'Recurring only: sent as notification_messages_frequency. Only for Pages on Graph API versions before v16 (Meta removed ' +
      'the frequency in 2023: newer versions send one per period of the token without it); omit otherwise.',
    examples: ['WEEKLY'],
  })),
  image_url: Type.Optional(Type.String({
    format: 'uri', pattern: '^https?://', maxLength: 2000,
    description: 'Recurring only: the image shown in the opt-in template (Meta\'s image_url).',
    examples: ['https://shop.example/img/deals.png'],
  })),
  cta_text: Type.Optional(Type.Union([...ctaTexts()], {
    description: 'Recurring only: the words on the opt-in button, Meta\'s notification_messages_cta_text (Meta\'s attachment reference lists these; its default is GET_UPDATES).',
    examples: ['SIGN_UP'],
  })),
  reoptin: Type.Optional(Type.Boolean({
    description: 'Recurring only: true asks Meta to invite the person to re-opt-in before the opt-in ends (notification_messages_reoptin ENABLED, ' +
      'the only value Meta documents); false or omitted sends nothing. Meta stopped expiring tokens in August 2023, so it matters only to older opt-ins.',
    examples: [true],
  })),
  timezone: Type.Optional(Type.String({
    minLength: 1, maxLength: 64,
    description: 'Recurring only: IANA time zone of the opt-in\'s calendar periods, sent as notification_messages_timezone; default: the ' +
      'Page\'s timezone (PUT /v1/pages/{pageId}), so that Meta\'s periods and ours agree. An unknown name is refused with 400 invalid_timezone.',
    examples: ['Europe/Berlin'],
  })),
}, { additionalProperties: false })
export type CreateOptinRequestBody = Static<typeof CreateOptinRequestBodySchema>

export const OptinRequestSchema = Type.Object({
  id: Uuid,
  topic_id: Uuid,
  page_id: PageId,
  psid: Psid,
  title: Type.String(),
  payload: Type.String({ description: 'The topic\'s payload key, echoed back by Meta with the token.' }),
  status: Type.Union([Type.Literal('pending'), Type.Literal('sent'), Type.Literal('failed')]),
  kind: Type.Union([...kinds()], {
    description: 'The opt-in asked for: one_time_notif (one_time_notif_req template) or notification_messages (recurring).',
    examples: ['notification_messages'],
  }),
  graph_message_id: Type.Optional(Type.String()),
  error: Type.Optional(Type.Object({
    code: Type.Union([Type.Integer(), Type.Null()]),
    subcode: Type.Union([Type.Integer(), Type.Null()]),
    message: Type.String(),
    fbtrace_id: Type.Union([Type.String(), Type.Null()]),
    ambiguous: Type.Optional(Type.Boolean({ description: 'Meta did not answer: the request may have reached the person.' })),
  })),
  created_at: Timestamp,
}, { title: 'OptinRequest', $id: 'OptinRequest' })
