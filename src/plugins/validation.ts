import { Ajv, type Options } from 'ajv'
import addFormatsModule from 'ajv-formats'
import type { FastifySchemaCompiler } from 'fastify'

const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv

function ajv (options: Options): Ajv {
  return addFormats(new Ajv({ useDefaults: true, allErrors: true, removeAdditional: false, strict: false, ...options }))
}

// Query strings, params and headers arrive as text and are coerced ("5" → 5); a JSON body is
// taken as sent, so {"name": 5} is an error rather than the string "5".
const coercing = ajv({ coerceTypes: 'array' })
const exact = ajv({ coerceTypes: false })

export const validatorCompiler: FastifySchemaCompiler<unknown> = ({ schema, httpPart }) =>
  (httpPart === 'body' ? exact : coercing).compile(schema as object)
