import { Type, type Static } from 'typebox'
import { Compile } from 'typebox/compile'
import { DEFAULT_GRAPH_VERSION, VERSION_WARNING_DAYS } from './graph/versions.js'
import { RECURRING_COOLDOWN_HOURS } from './domain/lifecycle.js'
import { parseAllowedHosts } from './domain/event-addresses.js'
import { parseApiKeys, type ApiKey } from './domain/access.js'
import { parseEncryptionKeys, type EncryptionKey } from './crypto/secret-box.js'

const Int = (description: string, def: number, minimum: number, maximum: number) =>
  Type.Integer({ description, default: def, minimum, maximum })

// One schema documents and validates every variable: name, meaning, default and range.
export const EnvSchema = Type.Object({
  DATABASE_URL: Type.Optional(Type.String({ description: 'Postgres connection string. Unset: embedded PGlite in PGLITE_DATA_DIR.', pattern: '^postgres(ql)?://' })),
  DATABASE_POOL_SIZE: Int('Connections in the pg Pool (Postgres only).', 10, 1, 200),
  DATABASE_STATEMENT_CACHE_SIZE: Int('Named (prepared) statements kept per Postgres connection; 0 sends every statement unnamed (for a pooler that cannot keep them).', 100, 0, 10000),
  PGLITE_DATA_DIR: Type.String({ description: 'Folder of the embedded database (used when DATABASE_URL is unset). "memory://" keeps it in memory.', default: './data/pglite', minLength: 1 }),
  HOST: Type.String({ description: 'Address to listen on (0.0.0.0 in containers).', default: '127.0.0.1', minLength: 1 }),
  PORT: Int('TCP port to listen on.', 3000, 0, 65535),
  LOG_LEVEL: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)), { description: 'pino log level.', default: 'info' }),
  API_KEYS: Type.String({ description: 'Comma-separated API keys accepted as "Authorization: Bearer <secret>" on /v1 (list several to rotate). Each entry is a bare secret (an admin key named key-<position>), or <name>:<secret>, optionally followed by scope parts :pages=<id>[+<id>...] (only those Pages) and :read-only (no changes); secrets are at least 8 characters without spaces, commas or colons (docs/SECURITY.md).', minLength: 1 }),
  ENCRYPTION_KEYS: Type.Optional(Type.String({ description: 'Keys that encrypt Page access tokens, opt-in tokens, event signing secrets and raw webhook bodies at rest (AES-256-GCM): comma-separated <id>:<base64 of 32 random bytes> (e.g. `node -e "console.log(\'k1:\'+crypto.randomBytes(32).toString(\'base64\'))"`); the first encrypts, all decrypt; rotate with npm run rotate-keys (docs/SECURITY.md). Unset with the embedded database: a key generated into PGLITE_DATA_DIR on first start. Unset with DATABASE_URL: start-up is refused unless ALLOW_PLAINTEXT_SECRETS=true.', minLength: 1 })),
  ALLOW_PLAINTEXT_SECRETS: Type.Boolean({ description: 'With DATABASE_URL and no ENCRYPTION_KEYS, start anyway and store Page access tokens and event signing secrets in plaintext (development only; a warning at start-up).', default: false }),
  META_APP_SECRET: Type.Optional(Type.String({ description: 'App Secret: verifies webhook signatures and signs appsecret_proof. Unset: webhook deliveries are refused (503).', minLength: 1 })),
  META_VERIFY_TOKEN: Type.Optional(Type.String({ description: 'Token Meta echoes in the webhook verification handshake. Unset: the handshake is refused.', minLength: 1 })),
  GRAPH_API_BASE_URL: Type.String({ description: 'Graph API origin; tests and the demo point it at the emulator.', default: 'https://graph.facebook.com', pattern: '^https?://[^/]+$' }),
  GRAPH_API_VERSION: Type.String({ description: `Pinned Graph API version (default: the newest this build knows). Start-up warns when Meta retires it within ${VERSION_WARNING_DAYS} days or has retired it.`, default: DEFAULT_GRAPH_VERSION, pattern: '^v\\d+\\.\\d+$' }),
  GRAPH_API_TIMEOUT_MS: Int('Time to wait for a Graph API answer before the attempt counts as unanswered.', 10000, 100, 120000),
  GRAPH_API_CONNECT_TIMEOUT_MS: Int('Time to wait for a connection to the Graph API.', 5000, 100, 60000),
  GRAPH_API_CONNECTIONS: Int('Connections kept to the Graph API, opened as needed: the most Send API calls in flight at once. One instance sends at most this many per Meta round trip; calls beyond it wait for a free one for at most GRAPH_API_TIMEOUT_MS (then have GRAPH_API_TIMEOUT_MS for the exchange), and one that gets none is not sent (its token is kept).', 512, 1, 4096),
  GRAPH_API_MAX_RETRIES: Int('Re-sends of the same token after an unanswered attempt before it is recorded unconfirmed.', 2, 0, 10),
  PAGE_ID: Type.Optional(Type.String({ description: 'A Page registered at start-up (with PAGE_ACCESS_TOKEN).', pattern: '^\\d{1,32}$' })),
  PAGE_ACCESS_TOKEN: Type.Optional(Type.String({ description: 'Access token of PAGE_ID.', minLength: 1 })),
  PAGE_NAME: Type.String({ description: 'Name given to PAGE_ID when it is registered at start-up.', default: 'Default Page', minLength: 1 }),
  BODY_LIMIT_BYTES: Int('Largest JSON body accepted on /v1 routes.', 1048576, 1024, 104857600),
  BODY_MAX_DEPTH: Int('Deepest nesting of objects and arrays accepted in a JSON body on /v1 (deeper: 400 body_too_deep, before it is parsed).', 32, 2, 1000),
  WEBHOOK_BODY_LIMIT_BYTES: Int('Largest webhook body accepted from Meta.', 5242880, 1024, 104857600),
  HTTP_HEADERS_TIMEOUT_MS: Int('Time a client has to send a request\'s headers, counted from connecting (or from the first byte of a later request on the connection); then 408 and the connection is closed, so a silent connection is closed after it.', 10000, 100, 600000),
  HTTP_REQUEST_TIMEOUT_MS: Int('Time a client has to send a whole request, headers and body; then 408 and the connection is closed (the handler\'s own time is not counted). At least HTTP_HEADERS_TIMEOUT_MS.', 30000, 100, 3600000),
  HTTP_KEEP_ALIVE_TIMEOUT_MS: Int('Time an idle keep-alive connection is kept open after an answer; keep it above a load balancer\'s idle timeout (60 s on AWS ALB).', 72000, 100, 3600000),
  HTTP_MAX_CONNECTIONS: Int('Most client connections one instance keeps open at once; one over it is closed as soon as it is accepted.', 4096, 1, 1000000),
  TOKEN_LEASE_SECONDS: Int('How long a claimed token stays held by its send before lease recovery takes the send over. At least 2 × GRAPH_API_TIMEOUT_MS + 1 s (one attempt\'s longest wait), checked at start-up.', 120, 5, 86400),
  OPTIN_REQUEST_INTERVAL_SECONDS: Int('Least time between two opt-in requests to one person on one topic.', 86400, 0, 31536000),
  MAINTENANCE_INTERVAL_SECONDS: Int('Period of the expiry sweep and lease recovery (both also run at start-up, in the background).', 60, 1, 86400),
  ERASURE_KEY: Type.Optional(Type.String({ description: 'Key of the digest an erasure leaves instead of the person\'s id, so that a webhook re-delivered after it is recognised (at least 16 characters; keep it at least 36 hours after an erasure). Unset: derived from META_APP_SECRET (docs/PRIVACY.md).', minLength: 16 })),
  WEBHOOK_BODY_RETENTION_DAYS: Int('Days a raw webhook body is kept (for audit and replay) before the maintenance task removes it; 0 keeps it forever (docs/PRIVACY.md).', 30, 0, 36500),
  MESSAGE_BODY_RETENTION_DAYS: Int('Days a notification\'s message is kept before the maintenance task empties it (the notification, its status and outcome stay); 0 keeps it forever (docs/PRIVACY.md).', 90, 0, 36500),
  AUDIT_RETENTION_DAYS: Int('Days an audit entry (who changed what through /v1) is kept before the maintenance task removes it; 0 keeps it forever (docs/SECURITY.md).', 365, 0, 36500),
  RECOVERY_CONCURRENCY: Int('Sends lease recovery makes at once while it works through what crashed processes left (at most half of GRAPH_API_CONNECTIONS).', 32, 1, 1024),
  SHUTDOWN_TIMEOUT_MS: Int('Longest wait for in-flight requests on SIGTERM/SIGINT.', 10000, 100, 600000),
  RECURRING_COOLDOWN_HOURS: Type.Number({ description: 'Hours after a recurring notification before the same token may send again (Meta\'s 48-hour cooldown since September 2025, enforced here before calling Meta; docs/RECURRING.md). 0 leaves only the calendar period of the token\'s frequency.', default: RECURRING_COOLDOWN_HOURS, minimum: 0, maximum: 8760 }),
  JOB_POLL_INTERVAL_SECONDS: Type.Number({ description: 'How often each job worker asks the queue (pg-boss) for work when idle.', default: 2, minimum: 0.5, maximum: 60 }),
  BROADCAST_RATE_PER_SECOND: Type.Optional(Type.Integer({ description: 'Broadcast sends per second per Page, shared by every worker of every instance. Unset: Meta\'s limit for the message (300 for text, links and stickers; 10 with audio or video); a Page\'s own broadcast_rate_per_second wins over both.', minimum: 1, maximum: 1000 })),
  BROADCAST_BATCH_SIZE: Int('People per broadcast send job (and per page when the audience is listed).', 500, 1, 10000),
  BROADCAST_CONCURRENCY: Int('Broadcast send jobs one instance works on at once.', 4, 1, 64),
  BROADCAST_MAX_ATTEMPTS: Int('Sends tried per person when Meta rate-limits or fails temporarily (nothing sent) before the person counts as failed.', 5, 1, 50),
  BROADCAST_BACKOFF_SECONDS: Int('Longest pause after such a refusal: the Page\'s broadcasts pause on a rate limit, the person is retried later on a temporary failure.', 60, 1, 3600),
  EVENTS_ALLOW_HTTP: Type.Boolean({ description: 'Admit http:// event subscription URLs (development only); otherwise only https (docs/EVENTS.md).', default: false }),
  EVENTS_ALLOW_PRIVATE_NETWORKS: Type.Boolean({ description: 'Admit event destinations on loopback, private, link-local and other non-public addresses (checked when a subscription is written and at every delivery on the resolved address). Development and tests only.', default: false }),
  EVENTS_ALLOWED_HOSTS: Type.Optional(Type.String({ description: 'Comma-separated host names, addresses and CIDR ranges (e.g. "hooks.internal,10.20.0.0/16") that event subscriptions may reach although they are not public; checked on the resolved address at every delivery.', pattern: '^\\s*[^,\\s]+\\s*(,\\s*[^,\\s]+\\s*)*$' })),
  EVENTS_ATTEMPT_TIMEOUT_MS: Int('Time one event delivery attempt may take, connecting included, before it counts as failed and is retried.', 15000, 100, 120000),
  EVENTS_RETRY_BASE_SECONDS: Type.Number({ description: 'Pause after the first failed event delivery attempt; each later pause is three times longer, up to 8,640 times this (12 hours at the default 5), each ±20% at random, so that EVENTS_MAX_ATTEMPTS=15 spans about three days (docs/EVENTS.md).', default: 5, minimum: 0.001, maximum: 3600 }),
  EVENTS_MAX_ATTEMPTS: Int('Attempts at one event delivery before it is recorded failed.', 15, 1, 50),
  EVENTS_DISABLE_AFTER_HOURS: Type.Number({ description: 'Hours a subscription may fail without a single success before it is disabled (with disabled_reason); 0 never disables it for failing.', default: 120, minimum: 0, maximum: 8760 }),
  EVENTS_SECRET_GRACE_HOURS: Type.Number({ description: 'Hours after rotate-secret during which deliveries are signed with both the new and the previous secret.', default: 24, minimum: 0, maximum: 720 }),
  EVENTS_RETENTION_DAYS: Int('Days an event is kept once none of its deliveries is pending; then the maintenance task removes it with its deliveries. 0 keeps them forever.', 30, 0, 36500),
  EVENTS_POLL_INTERVAL_MS: Int('How often each instance looks for event deliveries that are due.', 1000, 10, 60000),
  EVENTS_CONCURRENCY: Int('Event deliveries one instance has in flight at once.', 16, 1, 256),
  METRICS_ENABLED: Type.Boolean({ description: 'Serve Prometheus metrics at /metrics (true or false).', default: true }),
  METRICS_CACHE_SECONDS: Type.Number({ description: 'How long the gauges read from the database (backlog, job queues) are reused by later scrapes; concurrent scrapes always share one read. 0: read at every scrape.', default: 5, minimum: 0, maximum: 300 }),
  BUILD_COMMIT: Type.Optional(Type.String({ description: 'Source commit of this build, shown in otn_build_info (the image build sets it). Unset: read from .git when there is one, else "unknown".', pattern: '^[0-9A-Za-z._-]{1,64}$' })),
  METRICS_TOKEN: Type.Optional(Type.String({ description: 'When set, /metrics requires "Authorization: Bearer <token>" (at least 8 characters, no spaces). Unset: /metrics is open, like /healthz (keep it on an internal network).', pattern: '^\\S{8,}$' })),
})

export type Config = Static<typeof EnvSchema> & { apiKeys: ApiKey[], encryptionKeys: EncryptionKey[] }

export class ConfigError extends Error {
  constructor (public readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`)
    this.name = 'ConfigError'
  }
}

type PropertySchema = { description?: string; default?: unknown; type?: string; anyOf?: Array<{ const: string }> }
const properties = EnvSchema.properties as unknown as Record<string, PropertySchema>
const checks = Object.fromEntries(Object.entries(EnvSchema.properties).map(([k, s]) => [k, Compile(s)]))
const required: readonly string[] = EnvSchema.required ?? []
const optional = new Set(Object.keys(properties).filter((k) => !required.includes(k)))

function describe (schema: PropertySchema, fallback: string): string {
  if (schema.anyOf) return `must be one of ${schema.anyOf.map((s) => s.const).join(', ')}`
  return fallback
}

/**
 * The shortest safe lease: an attempt waits at most GRAPH_API_TIMEOUT_MS for a connection, then
 * GRAPH_API_TIMEOUT_MS for Meta's answer, and the lease is renewed before each attempt; a second
 * covers the database steps around it. Shorter, and recovery could take a hold over while its
 * attempt is still in flight.
 */
export const minimumLeaseMs = (graphTimeoutMs: number): number => 2 * graphTimeoutMs + 1000

/** Validates the environment once; every bad value gets its own line. */
export function loadConfig (env: Record<string, string | undefined>): Config {
  const raw: Record<string, unknown> = {}
  const problems: string[] = []
  for (const [key, schema] of Object.entries(properties)) {
    const text = env[key]
    if (text === undefined || text === '') {
      if (schema.default !== undefined) raw[key] = schema.default
      else if (!optional.has(key)) problems.push(`${key}: is required. ${schema.description}`)
      continue
    }
    const numeric = (schema.type === 'integer' && /^-?\d+$/.test(text.trim())) || (schema.type === 'number' && /^-?\d+(\.\d+)?$/.test(text.trim()))
    const boolean = schema.type === 'boolean' && /^(true|false)$/.test(text.trim())
    const value = numeric ? Number(text) : boolean ? text.trim() === 'true' : text
    const [error] = checks[key].Errors(value)
    if (error) problems.push(`${key}: ${describe(schema, error.message)}. ${schema.description}`)
    raw[key] = value
  }
  if ((env.PAGE_ID ? 1 : 0) + (env.PAGE_ACCESS_TOKEN ? 1 : 0) === 1) {
    problems.push('PAGE_ID and PAGE_ACCESS_TOKEN: set both or neither')
  }
  if (typeof raw.HTTP_HEADERS_TIMEOUT_MS === 'number' && typeof raw.HTTP_REQUEST_TIMEOUT_MS === 'number' &&
    raw.HTTP_HEADERS_TIMEOUT_MS > raw.HTTP_REQUEST_TIMEOUT_MS) {
    problems.push('HTTP_HEADERS_TIMEOUT_MS: must not be above HTTP_REQUEST_TIMEOUT_MS (the headers are part of the request)')
  }
  if (typeof raw.TOKEN_LEASE_SECONDS === 'number' && typeof raw.GRAPH_API_TIMEOUT_MS === 'number' &&
    raw.TOKEN_LEASE_SECONDS * 1000 < minimumLeaseMs(raw.GRAPH_API_TIMEOUT_MS)) {
    problems.push(`TOKEN_LEASE_SECONDS: must be at least ${Math.ceil(minimumLeaseMs(raw.GRAPH_API_TIMEOUT_MS) / 1000)} with GRAPH_API_TIMEOUT_MS=${raw.GRAPH_API_TIMEOUT_MS}. ` +
      'One attempt may wait GRAPH_API_TIMEOUT_MS for a connection and GRAPH_API_TIMEOUT_MS for the answer; a shorter lease lets recovery take over a send still in flight')
  }
  if (typeof raw.EVENTS_ALLOWED_HOSTS === 'string') {
    try {
      parseAllowedHosts(raw.EVENTS_ALLOWED_HOSTS)
    } catch (err) {
      problems.push(`EVENTS_ALLOWED_HOSTS: ${(err as Error).message}`)
    }
  }
  // One line per bad entry, naming it by position (never quoting a secret).
  const keys = typeof raw.API_KEYS === 'string' ? parseApiKeys(raw.API_KEYS) : { keys: [], problems: [] }
  for (const p of keys.problems) problems.push(`API_KEYS: ${p}. ${properties.API_KEYS.description}`)
  // The same for the encryption keys: by position and id, never the key.
  const encryption = typeof raw.ENCRYPTION_KEYS === 'string' ? parseEncryptionKeys(raw.ENCRYPTION_KEYS) : { keys: [], problems: [] }
  for (const p of encryption.problems) problems.push(`ENCRYPTION_KEYS: ${p}. ${properties.ENCRYPTION_KEYS.description}`)
  if (typeof raw.DATABASE_URL === 'string' && checks.DATABASE_URL.Check(raw.DATABASE_URL) && raw.ENCRYPTION_KEYS === undefined && raw.ALLOW_PLAINTEXT_SECRETS !== true) {
    problems.push('ENCRYPTION_KEYS: is required with DATABASE_URL, so that Page access tokens and event signing secrets are not stored in plaintext ' +
      '(set ALLOW_PLAINTEXT_SECRETS=true to start without it, for development only). ' + properties.ENCRYPTION_KEYS.description)
  }
  if (problems.length > 0) throw new ConfigError(problems)
  const config = raw as Static<typeof EnvSchema>
  return { ...config, apiKeys: keys.keys, encryptionKeys: encryption.keys }
}
