import { DataDirInUseError } from './db/data-dir-lock.js'

/** Exit codes (sysexits.h): the environment is wrong, or something the service needs is not there. */
export const EXIT_CONFIG = 78
export const EXIT_UNAVAILABLE = 69

/** A start-up failure an operator can fix, as one line and an exit code; undefined for anything else (a bug: keep its stack). */
export function explainStartupError (error: unknown): { line: string, exitCode: number } | undefined {
  if (error instanceof DataDirInUseError) return { line: error.message, exitCode: EXIT_UNAVAILABLE }
  return undefined
}
