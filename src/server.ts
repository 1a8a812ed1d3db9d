import closeWithGrace from 'close-with-grace'
import type { FastifyInstance } from 'fastify'
import { buildApp } from './app.js'
import { exitWith, explainDatabaseError, explainListenError, missingSettingsWarning, startupConfig } from './startup.js'

const program = 'otn-service'

async function main (): Promise<void> {
  const { config, envFile } = startupConfig(program)
  let app: FastifyInstance
  try {
    app = await buildApp(config)
  } catch (error) {
    exitWith(program, error, explainDatabaseError(error, config))
  }
  if (envFile) app.log.info({ env_file: envFile.path, variables: envFile.used, overridden_by_environment: envFile.overridden }, `read ${envFile.used.length} variable(s) from ${envFile.path}${envFile.overridden.length ? `; the environment sets ${envFile.overridden.join(', ')} instead` : ''}`)
  const missing = missingSettingsWarning(config)
  if (missing) app.log.warn(missing)
  closeWithGrace({ delay: config.SHUTDOWN_TIMEOUT_MS }, async ({ signal, err }) => {
    if (err) app.log.error({ err }, 'closing after an error')
    else app.log.info({ signal }, 'shutting down: finishing in-flight requests')
    await app.close()
    app.log.info('closed: in-flight requests answered, job queue and database closed')
  })
  let address: string
  try {
    address = await app.listen({ host: config.HOST, port: config.PORT })
  } catch (error) {
    await app.close()
    exitWith(program, error, explainListenError(error, config))
  }
  app.log.info({ docs: `${address}/docs` }, `listening on ${address}; API docs at ${address}/docs`)
}

main().catch((error) => exitWith(program, error, undefined))
