import type { Migration } from 'kysely'
import * as createCoreTables from './20261121000000_create_core_tables.js'
import * as addNotificationTokenState from './20261121020000_add_notification_token_state.js'
import * as createBroadcasts from './20261121030000_create_broadcasts.js'
import * as rekeyBacklogIndexes from './20261121040000_rekey_backlog_indexes.js'
import * as holdTokensInPlace from './20261122000000_hold_tokens_in_place.js'
import * as addMessagingType from './20261202000000_add_messaging_type.js'
import * as broadcastPace from './20261202010000_broadcast_pace.js'
import * as addWebhookEventDigest from './20261202090000_add_webhook_event_digest.js'
import * as contractShardKeysByPage from './20261202120000_contract_shard_keys_by_page.js'
import * as recurringNotifications from './20261202150000_recurring_notifications.js'
import * as broadcastAudiences from './20261202180000_broadcast_audiences.js'
import * as consentHistoryAndRetention from './20261202200000_consent_history_and_retention.js'
import * as events from './20261203000000_events.js'
import * as scopedKeysAndAudit from './20261203010000_scoped_keys_and_audit.js'
import * as optinTokenDigest from './20261203020000_optin_token_digest.js'
import * as contractSealedOptinTokens from './20261203020100_contract_sealed_optin_tokens.js'
import * as webhookBodyMentions from './20261203030000_webhook_body_mentions.js'

// Listed here (not read from the folder) so the same list works from .ts sources and compiled .js.
export const migrations: Record<string, Migration> = {
  '20261121000000_create_core_tables': createCoreTables,
  '20261121020000_add_notification_token_state': addNotificationTokenState,
  '20261121030000_create_broadcasts': createBroadcasts,
  '20261121040000_rekey_backlog_indexes': rekeyBacklogIndexes,
  '20261122000000_hold_tokens_in_place': holdTokensInPlace,
  '20261202000000_add_messaging_type': addMessagingType,
  '20261202010000_broadcast_pace': broadcastPace,
  '20261202090000_add_webhook_event_digest': addWebhookEventDigest,
  '20261202120000_contract_shard_keys_by_page': contractShardKeysByPage,
  '20261202150000_recurring_notifications': recurringNotifications,
  '20261202180000_broadcast_audiences': broadcastAudiences,
  '20261202200000_consent_history_and_retention': consentHistoryAndRetention,
  '20261203000000_events': events,
  '20261203010000_scoped_keys_and_audit': scopedKeysAndAudit,
  '20261203020000_optin_token_digest': optinTokenDigest,
  '20261203020100_contract_sealed_optin_tokens': contractSealedOptinTokens,
  '20261203030000_webhook_body_mentions': webhookBodyMentions,
}
