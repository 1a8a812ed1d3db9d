import { defaultSeedPath, writeSeed } from '../db/pglite-seed.js'

// Part of `npm run build`: a no-op once the seed for the installed PGlite exists.
const path = defaultSeedPath()
if (await writeSeed(path)) console.log(`wrote ${path}`)
