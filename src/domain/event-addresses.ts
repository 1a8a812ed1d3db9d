/**
 * Where events may be sent (docs/EVENTS.md): https (http only with EVENTS_ALLOW_HTTP), no
 * credentials in the URL, and no loopback, private, link-local, metadata or otherwise
 * non-public destination unless EVENTS_ALLOW_PRIVATE_NETWORKS, or EVENTS_ALLOWED_HOSTS names its host
 * or a range holding its address. Checked when a subscription is
 * written (the name resolved then) and again at every delivery on the address actually connected
 * to (checkedLookup), so that a name re-pointed after the check (DNS rebinding) is still refused.
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns'
import { promises as dns } from 'node:dns'
import { BlockList, isIP } from 'node:net'
import { DomainError } from './errors.js'

export interface AddressPolicy {
  allowHttp: boolean
  allowPrivateNetworks: boolean
  /** EVENTS_ALLOWED_HOSTS: non-public destinations admitted by name or address range. */
  allowedHosts?: AllowedHosts
}

/** Host names and address ranges (CIDR) admitted although not public. */
export interface AllowedHosts { names: Set<string>, ranges: BlockList }

/** Parses EVENTS_ALLOWED_HOSTS ("hooks.internal, 10.1.0.0/16, 192.168.1.5"); throws on a malformed range. */
export function parseAllowedHosts (text: string | undefined): AllowedHosts {
  const names = new Set<string>()
  const ranges = new BlockList()
  for (const item of (text ?? '').split(',').map((x) => x.trim().toLowerCase()).filter(Boolean)) {
    const [address, prefix] = item.split('/')
    const family = isIP(address)
    if (family === 0) {
      if (prefix !== undefined) throw new Error(`${item}: not an address range`)
      names.add(item)
      continue
    }
    const bits = prefix === undefined ? (family === 4 ? 32 : 128) : Number(prefix)
    if (!Number.isInteger(bits) || bits < 0 || bits > (family === 4 ? 32 : 128)) throw new Error(`${item}: not an address range`)
    ranges.addSubnet(address, bits, family === 4 ? 'ipv4' : 'ipv6')
  }
  return { names, ranges }
}

/** Whether EVENTS_ALLOWED_HOSTS admits this host name or address. */
export function isAllowedHost (allowed: AllowedHosts | undefined, host: string, address?: string): boolean {
  if (!allowed) return false
  if (allowed.names.has(host.toLowerCase())) return true
  const a = address ?? host
  const family = isIP(a)
  return family !== 0 && allowed.ranges.check(a, family === 4 ? 'ipv4' : 'ipv6')
}

const blocked = new BlockList()
for (const [net, prefix] of [
  ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.0.0.0', 24], ['192.0.2.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15], ['198.51.100.0', 24], ['203.0.113.0', 24],
  ['224.0.0.0', 4], ['240.0.0.0', 4],
] as const) blocked.addSubnet(net, prefix, 'ipv4')
for (const [net, prefix] of [
  ['::', 128], ['::1', 128], ['fc00::', 7], ['fe80::', 10], ['ff00::', 8], ['2001:db8::', 32], ['64:ff9b::', 96], ['100::', 64],
] as const) blocked.addSubnet(net, prefix, 'ipv6')

/** True for an address no event may go to without EVENTS_ALLOW_PRIVATE_NETWORKS. */
export function isNonPublicAddress (address: string): boolean {
  const family = isIP(address)
  if (family === 4) return blocked.check(address, 'ipv4')
  if (family === 6) {
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)
    if (mapped) return blocked.check(mapped[1], 'ipv4')
    return blocked.check(address, 'ipv6')
  }
  return true
}

const hostOf = (url: URL): string => url.hostname.replace(/^\[|\]$/g, '')

/** The URL's form: parsed, https (or http when allowed), no user or password. */
export function checkUrlForm (raw: string, policy: AddressPolicy): URL {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    throw new DomainError('event_url_invalid', 'The url is not an absolute URL.')
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new DomainError('event_url_invalid', 'The url must be https.')
  if (url.username !== '' || url.password !== '') throw new DomainError('event_url_invalid', 'The url must not carry a user or password.')
  if (url.protocol === 'http:' && !policy.allowHttp) {
    throw new DomainError('event_url_not_https', 'The url must be https (http is admitted only with EVENTS_ALLOW_HTTP=true, for development).')
  }
  return url
}

function refusePrivate (host: string, address: string): never {
  throw new DomainError('event_url_private_address',
    `${host} is${host === address ? '' : ` (resolves to ${address})`} a loopback, private, link-local or otherwise non-public address; ` +
    'events go there only when EVENTS_ALLOWED_HOSTS names it (or with EVENTS_ALLOW_PRIVATE_NETWORKS=true).')
}

/**
 * Checks a subscription's URL when it is written: its form, and every address its host has now.
 * A name that does not resolve (yet) is accepted: each delivery checks again.
 */
export async function checkDestination (raw: string, policy: AddressPolicy): Promise<string> {
  const url = checkUrlForm(raw, policy)
  if (policy.allowPrivateNetworks) return url.toString()
  const host = hostOf(url)
  if (isAllowedHost(policy.allowedHosts, host)) return url.toString()
  if (isIP(host)) {
    if (isNonPublicAddress(host)) refusePrivate(host, host)
    return url.toString()
  }
  if (host === 'localhost' || host.endsWith('.localhost')) refusePrivate(host, '127.0.0.1')
  let addresses: LookupAddress[] = []
  try {
    addresses = await dns.lookup(host, { all: true, verbatim: true })
  } catch {}
  for (const a of addresses) if (isNonPublicAddress(a.address) && !isAllowedHost(policy.allowedHosts, host, a.address)) refusePrivate(host, a.address)
  return url.toString()
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void

/**
 * A `lookup` for net.connect that resolves as usual and fails the connection when an address is
 * not public (unless allowed): the check and the connection use the same answer.
 */
export function checkedLookup (allowPrivateNetworks: boolean, allowedHosts?: AllowedHosts) {
  return (hostname: string, options: { all?: boolean }, callback: LookupCallback): void => {
    dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, [])
      const list = addresses as LookupAddress[]
      const bad = allowPrivateNetworks ? undefined : list.find((a) => isNonPublicAddress(a.address) && !isAllowedHost(allowedHosts, hostname, a.address))
      if (bad) {
        const e = new Error(`${hostname} resolves to ${bad.address}, a non-public address`) as NodeJS.ErrnoException
        e.code = 'EVENT_ADDRESS_REFUSED'
        return callback(e, [])
      }
      if (options.all) return callback(null, list)
      callback(null, list[0].address, list[0].family)
    })
  }
}

/** An IP-literal URL is connected to without a lookup: checked here before each delivery. */
export function literalRefused (url: URL, allowPrivateNetworks: boolean, allowedHosts?: AllowedHosts): string | undefined {
  if (allowPrivateNetworks) return undefined
  const host = hostOf(url)
  if (isAllowedHost(allowedHosts, host)) return undefined
  if (isIP(host) && isNonPublicAddress(host)) return `${host} is a non-public address`
  if (host === 'localhost' || host.endsWith('.localhost')) return `${host} is a loopback name`
  return undefined
}
