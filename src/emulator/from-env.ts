import { createEmulator, type Emulator } from './emulator.js'

export interface EmulatorEnvConfig {
  port: number
  host: string
  appSecret?: string
  requireProof: boolean
  webhookUrl: string
  pages: { id: string; accessToken: string }[]
}

function parsePages(spec: string): { id: string; accessToken: string }[] {
  return spec
    .split(',')
    .map((entry) => entry.trim())
    .filter((entry) => entry !== '')
    .map((entry) => {
      const at = entry.indexOf(':')
      if (at <= 0 || at === entry.length - 1) {
        throw new Error(`EMULATOR_PAGES: expected pageId:accessToken, got "${entry}"`)
      }
      return { id: entry.slice(0, at), accessToken: entry.slice(at + 1) }
    })
}

function parsePort(value: string): number {
  const port = Number(value)
  if (value.trim() === '' || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`EMULATOR_PORT: not a port number: "${value}"`)
  }
  return port
}

export function configFromEnv(env: NodeJS.ProcessEnv): EmulatorEnvConfig {
  const requireProof = env.EMULATOR_REQUIRE_PROOF ?? ''
  if (!['', '0', '1', 'false', 'true'].includes(requireProof)) {
    throw new Error(`EMULATOR_REQUIRE_PROOF: expected true or false, got "${requireProof}"`)
  }
  return {
    port: parsePort(env.EMULATOR_PORT ?? '3999'),
    host: env.EMULATOR_HOST || '127.0.0.1',
    appSecret: env.META_APP_SECRET || undefined,
    requireProof: requireProof === '1' || requireProof === 'true',
    webhookUrl: env.EMULATOR_WEBHOOK_URL || 'http://127.0.0.1:3000/webhooks/messenger',
    pages: parsePages(env.EMULATOR_PAGES ?? '1000001:demo-page-token'),
  }
}

export async function startFromEnv(
  env: NodeJS.ProcessEnv,
  opts: { logger?: boolean } = {},
): Promise<{ emulator: Emulator; url: string; config: EmulatorEnvConfig }> {
  const config = configFromEnv(env)
  const emulator = createEmulator({
    appSecret: config.appSecret,
    requireProof: config.requireProof,
    webhookUrl: config.webhookUrl,
    logger: opts.logger ?? true,
  })
  for (const page of config.pages) emulator.addPage(page)
  const url = await emulator.listen(config.port, config.host)
  emulator.app.log.info(
    {
      url,
      webhookUrl: config.webhookUrl,
      pages: config.pages.map((p) => p.id),
      signsWebhooks: config.appSecret !== undefined,
      requireProof: config.requireProof,
    },
    `Graph API emulator listening: send to ${url}/v21.0/me/messages, control API at ${url}/_emulator`,
  )
  if (config.appSecret === undefined) {
    emulator.app.log.warn('META_APP_SECRET is not set: webhooks go out unsigned and the service will refuse them')
  }
  return { emulator, url, config }
}
