import { ProblemSchema } from './common.js'

/** Schemas with an $id, registered once and referenced by name from routes and the OpenAPI document. */
export const sharedSchemas = [ProblemSchema]
