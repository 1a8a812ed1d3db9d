import type { FaultConfig } from './types.js'

export type Immediate = 'hang' | 'reset' | 'http_5xx' | 'error_rate' | null

export interface FaultDecision {
  /** A failure answered instead of processing the request. */
  before: Immediate
  /** The request is processed, then its answer is lost this way. */
  after: 'hang' | 'reset' | null
}

const RATE_FIELDS = ['errorRate', 'http5xxRate', 'hangRate', 'resetRate'] as const

function validateFaults(f: FaultConfig): void {
  for (const field of RATE_FIELDS) {
    const v = f[field]
    if (v !== undefined && !(v >= 0 && v <= 1)) throw new RangeError(`${field} must be between 0 and 1`)
  }
  if (f.latencyMs !== undefined && !(f.latencyMs >= 0)) throw new RangeError('latencyMs must be >= 0')
  if (f.maxRps !== undefined && !(f.maxRps >= 0)) throw new RangeError('maxRps must be >= 0')
  if (f.processThenFail != null && f.processThenFail !== 'hang' && f.processThenFail !== 'reset') {
    throw new RangeError("processThenFail must be 'hang', 'reset' or null")
  }
}

export class Faults {
  private global: FaultConfig = {}
  private readonly perPage = new Map<string, FaultConfig>()
  private readonly hits = new Map<string, number[]>()

  set(f: FaultConfig, pageId?: string): void {
    validateFaults(f)
    if (pageId === undefined) this.global = { ...f }
    else this.perPage.set(pageId, { ...f })
  }

  clear(): void {
    this.global = {}
    this.perPage.clear()
    this.hits.clear()
  }

  snapshot(): { global: FaultConfig; pages: Record<string, FaultConfig> } {
    return { global: { ...this.global }, pages: Object.fromEntries(this.perPage) }
  }

  /** A Page's own configuration replaces the global one as a whole, rate-limit counter included. */
  effective(pageId: string | undefined): { config: FaultConfig; scope: string } {
    const own = pageId === undefined ? undefined : this.perPage.get(pageId)
    return own ? { config: own, scope: `page:${pageId}` } : { config: this.global, scope: 'global' }
  }

  /** Sliding one-second window; refused requests do not count against the limit. */
  overRate(config: FaultConfig, scope: string, now: number): boolean {
    if (config.maxRps === undefined) return false
    const recent = (this.hits.get(scope) ?? []).filter((t) => now - t < 1000 && t <= now)
    if (recent.length >= config.maxRps) {
      this.hits.set(scope, recent)
      return true
    }
    recent.push(now)
    this.hits.set(scope, recent)
    return false
  }

  decide(config: FaultConfig, random: () => number): FaultDecision {
    const hit = (rate: number | undefined) => rate !== undefined && rate > 0 && random() < rate
    const later = config.processThenFail ?? null
    if (hit(config.hangRate)) return later === 'hang' ? { before: null, after: 'hang' } : { before: 'hang', after: null }
    if (hit(config.resetRate)) return later === 'reset' ? { before: null, after: 'reset' } : { before: 'reset', after: null }
    if (hit(config.http5xxRate)) return { before: 'http_5xx', after: null }
    if (hit(config.errorRate)) return { before: 'error_rate', after: null }
    return { before: null, after: null }
  }
}
