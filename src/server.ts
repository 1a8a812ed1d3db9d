import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'
import { ConfigError, loadConfig } from './config.js'
import { explainStartupError } from './startup-errors.js'

async function main (): Promise<void> {
  let config
  try {
    config = loadConfig(process.env)
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`${error.message}\nSee .env.example for every variable and its default.\n`)
      process.exit(78)
    }
    throw error
  }
  const app = await buildApp(config)
  closeWithGrace({ delay: config.SHUTDOWN_TIMEOUT_MS }, async ({ signal, err }) => {
    if (err) app.log.error({ err }, 'closing after an error')
    else app.log.info({ signal }, 'shutting down: finishing in-flight requests')
    await app.close()
  })
  const address = await app.listen({ host: config.HOST, port: config.PORT })
  app.log.info({ docs: `${address}/docs` }, `listening on ${address}; API docs at ${address}/docs`)
}

main().catch((error) => {
  const known = explainStartupError(error)
  if (known) {
    process.stderr.write(`cannot start: ${known.line}\n`)
    process.exit(known.exitCode)
  }
  process.stderr.write(`failed to start: ${error instanceof Error ? error.stack : String(error)}\n`)
  process.exit(1)
})
