import { writeFileSync, mkdirSync } from 'node:fs'
import { openApiDocument } from '../openapi.js'

mkdirSync('openapi', { recursive: true })
writeFileSync('openapi/openapi.json', await openApiDocument())
console.log('wrote openapi/openapi.json')
