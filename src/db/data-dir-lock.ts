import { closeSync, constants, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs'
import { hostname } from 'node:os'
import { join, resolve } from 'node:path'
import { tryLock } from 'fs-native-extensions'

/** The file inside the embedded database's folder that its holder locks; it holds the holder's pid. */
export const LOCK_FILE = 'otn-service.lock'

/**
 * A second process on the same embedded folder would run a second Postgres over the same files:
 * both answer, each sees its own writes, and one side's are lost at the next start.
 */
export class DataDirInUseError extends Error {
  constructor (readonly dataDir: string, readonly holder: Holder | undefined) {
    const who = holder ? `pid ${holder.pid}${holder.host === hostname() ? '' : ` on host ${holder.host}`}` : 'a process that has not written its pid yet'
    super(`the embedded database folder ${resolve(dataDir)} is in use by another process (${who}): stop that one, or give this one its own PGLITE_DATA_DIR (several instances share one database through DATABASE_URL)`)
    this.name = 'DataDirInUseError'
  }
}

export interface Holder { pid: number, host: string, since: string }

export interface DataDirLock {
  /** The process that held the folder before and stopped without releasing it (killed), if any. */
  previous?: Holder
  release (): void
}

function parseHolder (text: string): Holder | undefined {
  try {
    const holder = JSON.parse(text) as Holder
    return Number.isInteger(holder.pid) ? holder : undefined
  } catch {
    return undefined
  }
}

/**
 * Takes the folder's lock: an OS lock on LOCK_FILE (an open-file-description lock on Linux, flock on
 * macOS, LockFileEx on Windows), held while the descriptor stays open. The kernel drops it when the
 * process ends in any way, SIGKILL included, so a lock left by a killed process is free again at
 * once and no pid or age has to be guessed. The file itself is never deleted: a deleted lock file
 * lets a third process lock a new file of the same name while the second still holds the old one.
 */
export function lockDataDir (dataDir: string): DataDirLock {
  const path = join(dataDir, LOCK_FILE)
  const fd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o600)
  let locked = false
  try {
    locked = tryLock(fd)
  } finally {
    if (!locked) closeSync(fd)
  }
  if (!locked) throw new DataDirInUseError(dataDir, parseHolder(readFileSync(path, 'utf8')))
  // A clean release empties the file, so a pid found here is a holder that was killed.
  const previous = parseHolder(readFileSync(path, 'utf8'))
  const me: Holder = { pid: process.pid, host: hostname(), since: new Date().toISOString() }
  ftruncateSync(fd, 0)
  writeSync(fd, `${JSON.stringify(me)}\n`, 0)
  let released = false
  return {
    previous,
    release () {
      if (released) return
      released = true
      ftruncateSync(fd, 0)
      closeSync(fd)
    },
  }
}
