import { startFromEnv } from './from-env.js'

async function main(): Promise<void> {
  const { emulator } = await startFromEnv(process.env)
  let stopping = false
  const stop = (signal: string) => {
    if (stopping) return
    stopping = true
    emulator.app.log.info({ signal }, 'closing')
    emulator.close().then(
      () => process.exit(0),
      (err: unknown) => {
        emulator.app.log.error(err)
        process.exit(1)
      },
    )
  }
  process.once('SIGINT', () => stop('SIGINT'))
  process.once('SIGTERM', () => stop('SIGTERM'))
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err)
  process.exit(1)
})
