import { buildApp } from './app.js'
import { loadConfig } from './config.js'

/** The OpenAPI document exactly as the app serves it, as stable JSON text. */
export async function openApiDocument (): Promise<string> {
  const config = loadConfig({ API_KEYS: 'openapi-writer', LOG_LEVEL: 'silent', PGLITE_DATA_DIR: 'memory://' })
  const app = await buildApp(config)
  try {
    await app.ready()
    return `${JSON.stringify(app.swagger(), null, 2)}\n`
  } finally {
    await app.close()
  }
}
