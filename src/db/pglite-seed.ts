import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

// A new embedded database starts as a copy of an empty one made at build time, as Postgres copies
// template1, instead of running initdb on every new folder: `node scripts/start-time.mjs 3` (npm
// start to the first healthy answer, fresh folder) took 17.8–24.8 s with initdb, which alone
// measured 9.1–12.1 s against 1.4–3.5 s for unpacking this 4 MB file, and 9.1–11.1 s with it, on the
// shared 2-vCPU machine at a load of 6 to 7. The seed holds no schema: a new database is still empty
// until migrated (the migration tests count on that).

/** The installed PGlite's version: a seed is used only by the version that wrote it. */
export function pgliteVersion (): string {
  const entry = fileURLToPath(import.meta.resolve('@electric-sql/pglite'))
  return JSON.parse(readFileSync(join(dirname(entry), '..', 'package.json'), 'utf8')).version
}

/**
 * Where the build writes the seed: dist/, beside the compiled code (so the Docker image has it too).
 * Run from the sources (tsx: tests, npm run dev), this module finds the one in dist/ when the
 * project has been built.
 */
export function defaultSeedPath (): string {
  const name = `pglite-seed-${pgliteVersion()}.tar.gz`
  const built = fileURLToPath(new URL(`../../${name}`, import.meta.url))
  const fromSources = fileURLToPath(new URL(`../../dist/${name}`, import.meta.url))
  return import.meta.url.endsWith('.ts') ? fromSources : built
}

/** The seed to start `dataDir` from, or undefined when the folder already holds a database or there is no seed. */
export function seedFor (dataDir: string, seedPath: string | undefined): Blob | undefined {
  if (!seedPath || !existsSync(seedPath)) return undefined
  if (!dataDir.startsWith('memory://') && existsSync(join(dataDir, 'PG_VERSION'))) return undefined
  return new Blob([readFileSync(seedPath)])
}

/** Writes the seed (an initdb'd, empty database) unless one for this PGlite version is there. */
export async function writeSeed (seedPath: string): Promise<boolean> {
  if (existsSync(seedPath)) return false
  // Imported here: the check above runs before every `npm start`, and PGlite takes a while to load.
  const { PGlite } = await import('@electric-sql/pglite')
  const pglite = await PGlite.create('memory://')
  try {
    const tarball = await pglite.dumpDataDir('gzip')
    mkdirSync(dirname(seedPath), { recursive: true })
    // Renamed into place, so that an interrupted build leaves no half a seed behind.
    writeFileSync(`${seedPath}.partial`, Buffer.from(await tarball.arrayBuffer()))
    renameSync(`${seedPath}.partial`, seedPath)
    return true
  } finally {
    await pglite.close()
  }
}
