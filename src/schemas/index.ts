import { AuditEntrySchema, AuditListSchema } from './audit.js'
import { BroadcastListSchema, BroadcastSchema, EstimateSchema } from './broadcasts.js'
import { ProblemSchema } from './common.js'
import { EventDeliveryListSchema, EventDeliverySchema, EventSchemas, EventSubscriptionListSchema, EventSubscriptionSchema, EventSubscriptionWithSecretSchema } from './events.js'
import { ConsentExportSchema, ErasureSchema, HistoryEntrySchema, HistoryListSchema } from './consent.js'
import { NotificationListSchema, NotificationSchema } from './notifications.js'
import { OptinRequestSchema } from './optin-requests.js'
import { PageListSchema, PageSchema } from './pages.js'
import { SubscriberSchema } from './subscribers.js'
import { DeletedTopicSchema, TopicListSchema, TopicSchema } from './topics.js'
import { WebhookReceiptSchema } from './webhooks.js'

/**
 * Schemas with an $id, registered once and referenced by name from routes (named()): each is a
 * component of the OpenAPI document, so a generated client gets a type per resource.
 */
export const sharedSchemas = [
  ProblemSchema, PageSchema, PageListSchema, TopicSchema, TopicListSchema, DeletedTopicSchema, SubscriberSchema,
  NotificationSchema, NotificationListSchema, BroadcastSchema, EstimateSchema, BroadcastListSchema, OptinRequestSchema, WebhookReceiptSchema,
  HistoryEntrySchema, HistoryListSchema, ConsentExportSchema, ErasureSchema, AuditEntrySchema, AuditListSchema,
  EventSubscriptionSchema, EventSubscriptionWithSecretSchema, EventSubscriptionListSchema, EventDeliverySchema, EventDeliveryListSchema,
  ...EventSchemas,
]
