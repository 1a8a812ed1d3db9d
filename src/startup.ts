import { existsSync, readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import util from 'node:util'
import { ConfigError, loadConfig, type Config } from './config.js'
import { DataDirInUseError } from './db/data-dir-lock.js'

// What the entry points (server.ts, the CLIs) do around buildApp: read the environment and `.env`,
// refuse a bad one, say what will not work, and turn the failures an operator can fix into one line
// and an exit code. Anything else is a bug and keeps its stack trace.

/** Exit codes (sysexits.h): the configuration is wrong; something the service needs is not available. */
export const EXIT_CONFIG = 78
export const EXIT_UNAVAILABLE = 69

type Env = Record<string, string | undefined>

export interface Environment {
  env: Env
  /** The `.env` file that was read, if any: how many variables it set, and which it named that the environment set instead. */
  file?: { path: string, used: string[], overridden: string[] }
}

/**
 * The process environment over the variables of `.env` in the working directory (dotenv's
 * convention, read with Node's own parser): a variable the environment sets, even to an empty value,
 * wins over the file. Without a `.env` the environment is used as it is.
 */
export function readEnvironment (env: Env = process.env, path = '.env'): Environment {
  if (!existsSync(path)) return { env }
  const parseEnv = (util as { parseEnv?: (content: string) => Env }).parseEnv
  if (!parseEnv) {
    throw new ConfigError([`${resolve(path)}: this Node.js (${process.version}) cannot read .env files; use Node.js 20.12 or newer, or export the variables instead`])
  }
  const fromFile = parseEnv(readFileSync(path, 'utf8'))
  const names = Object.keys(fromFile).sort()
  const overridden = names.filter((name) => env[name] !== undefined)
  return {
    env: { ...fromFile, ...env },
    file: { path: resolve(path), used: names.filter((name) => env[name] === undefined), overridden },
  }
}

/**
 * The validated configuration from the environment and `.env` (with `defaults` under both), or the
 * process ends with one line per bad variable and exit 78.
 */
export function startupConfig (program: string, defaults: Env = {}): { config: Config, envFile?: Environment['file'] } {
  try {
    const { env, file } = readEnvironment()
    return { config: loadConfig({ ...defaults, ...env }), envFile: file }
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error
    process.stderr.write(`${program}: ${error.message}\nSee .env.example for every variable and its default.\n`)
    process.exit(EXIT_CONFIG)
  }
}

/** One warning naming what will not work with this configuration, or undefined when everything will. */
export function missingSettingsWarning (config: Config): string | undefined {
  const missing: string[] = []
  if (!config.META_APP_SECRET) missing.push('META_APP_SECRET is unset: webhook deliveries from Meta are refused (503), so no opt-in is recorded, and Graph API calls carry no appsecret_proof')
  if (!config.META_VERIFY_TOKEN) missing.push("META_VERIFY_TOKEN is unset: Meta's webhook verification handshake is refused (403), so the webhook cannot be subscribed")
  if (missing.length === 0) return undefined
  return `webhooks will not work: ${missing.join('; ')}. Set ${missing.length === 2 ? 'them' : 'it'} (see .env.example).`
}

/** A Postgres URL without its password, as the logs show it. */
function safeUrl (url: string): string {
  try {
    const parsed = new URL(url)
    if (parsed.password) parsed.password = '***'
    return parsed.toString()
  } catch {
    return '(DATABASE_URL)'
  }
}

const CANNOT_CONNECT: Record<string, string> = {
  ECONNREFUSED: 'connection refused: is it running, and listening on that host and port?',
  ENOTFOUND: 'its host name does not resolve',
  EAI_AGAIN: 'its host name could not be resolved (DNS did not answer)',
  ETIMEDOUT: 'the connection timed out',
  EHOSTUNREACH: 'its host is unreachable',
  ENETUNREACH: 'its network is unreachable',
  ECONNRESET: 'the connection was closed by the other side',
}

const CANNOT_USE_FOLDER = new Set(['EACCES', 'EPERM', 'EROFS', 'ENOTDIR', 'ENOSPC'])

/**
 * Opening and migrating the database failed: one line for what an operator can fix (the server
 * refused or is missing, the database or role does not exist, the embedded folder is held by
 * another process or cannot be written), undefined for anything else.
 */
export function explainDatabaseError (error: unknown, config: Pick<Config, 'DATABASE_URL' | 'PGLITE_DATA_DIR'>): string | undefined {
  if (error instanceof DataDirInUseError) return error.message
  if (error instanceof ConfigError) return error.message
  const { code, message, path } = (error ?? {}) as { code?: unknown, message?: string, path?: string }
  if (typeof code !== 'string') return undefined
  if (config.DATABASE_URL) {
    const at = `Postgres at ${safeUrl(config.DATABASE_URL)}`
    if (CANNOT_CONNECT[code]) return `cannot reach ${at}: ${CANNOT_CONNECT[code]}`
    if (code === '3D000') {
      const name = decodeURIComponent(new URL(config.DATABASE_URL).pathname.slice(1))
      return `${at}: ${message}; create it (CREATE DATABASE "${name}") or correct DATABASE_URL`
    }
    if (code === '28000' || code === '28P01') return `${at} refused the login: ${message}; correct the user or password in DATABASE_URL`
    if (code === '57P03' || code === '53300') return `${at} is not accepting connections now: ${message}`
    return undefined
  }
  if (CANNOT_USE_FOLDER.has(code)) return `cannot use the embedded database folder ${resolve(config.PGLITE_DATA_DIR)}: ${code} on ${path ?? 'it'}; set PGLITE_DATA_DIR to a folder this user can write`
  return undefined
}

/** Listening failed: one line for a port in use, a port that needs privileges, or a HOST that is not this machine's. */
export function explainListenError (error: unknown, config: Pick<Config, 'HOST' | 'PORT'>): string | undefined {
  const { code } = (error ?? {}) as { code?: unknown }
  const where = `${config.HOST}:${config.PORT}`
  switch (code) {
    case 'EADDRINUSE': return `cannot listen on ${where}: port ${config.PORT} is already in use by another process; stop it or set PORT to a free one`
    case 'EACCES': return `cannot listen on ${where}: not permitted (ports below 1024 need privileges); set PORT to 1024 or above`
    case 'EADDRNOTAVAIL': return `cannot listen on ${where}: HOST ${config.HOST} is not an address of this machine; set HOST to one of its addresses, or 0.0.0.0 for all`
    case 'ENOTFOUND':
    case 'EAI_AGAIN': return `cannot listen on ${where}: HOST ${config.HOST} does not resolve`
    default: return undefined
  }
}

/** Ends the process: the explained line and exit 69, or the error's stack and exit 1 when it is not one an operator can fix. */
export function exitWith (program: string, error: unknown, explained: string | undefined): never {
  if (explained) {
    process.stderr.write(`${program}: ${explained}\n`)
    process.exit(EXIT_UNAVAILABLE)
  }
  process.stderr.write(`${program}: ${error instanceof Error ? error.stack : String(error)}\n`)
  process.exit(1)
}
