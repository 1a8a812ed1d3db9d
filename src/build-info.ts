import { existsSync, readFileSync, statSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

export interface BuildInfo { version: string, commit: string }

/** The folder of the package.json that names this service (src/ runs from it, dist/src/ two below). */
function packageRoot (): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 4; i++, dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir
  }
  return undefined
}

/** The commit the checkout's HEAD points at, read without running git; undefined when there is none. */
function gitCommit (root: string): string | undefined {
  try {
    const dotGit = join(root, '.git')
    // A worktree's .git is a file naming its git directory; branches live in the common one.
    const gitDir = statSync(dotGit).isDirectory() ? dotGit : resolve(root, /^gitdir: (.+)$/m.exec(readFileSync(dotGit, 'utf8'))![1].trim())
    const common = existsSync(join(gitDir, 'commondir')) ? resolve(gitDir, readFileSync(join(gitDir, 'commondir'), 'utf8').trim()) : gitDir
    const head = readFileSync(join(gitDir, 'HEAD'), 'utf8').trim()
    const ref = /^ref: (.+)$/.exec(head)?.[1]
    if (!ref) return head
    for (const dir of [gitDir, common]) {
      if (existsSync(join(dir, ref))) return readFileSync(join(dir, ref), 'utf8').trim()
    }
    return readFileSync(join(common, 'packed-refs'), 'utf8').split('\n').find((line) => line.endsWith(` ${ref}`))?.slice(0, 40)
  } catch {
    return undefined
  }
}

/**
 * What otn_build_info says: package.json's version, and the commit given by BUILD_COMMIT, else read
 * from the checkout it runs in, else "unknown".
 */
export function buildInfo (commit: string | undefined): BuildInfo {
  const root = packageRoot()
  let version = 'unknown'
  try {
    if (root) version = String((JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version?: unknown }).version ?? 'unknown')
  } catch {}
  return { version, commit: commit ?? (root ? gitCommit(root) : undefined)?.slice(0, 12) ?? 'unknown' }
}
