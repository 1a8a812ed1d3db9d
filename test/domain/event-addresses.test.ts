import t from 'tap'
import { checkDestination, checkedLookup, isAllowedHost, isNonPublicAddress, parseAllowedHosts } from '../../src/domain/event-addresses.js'

t.test('non-public addresses: loopback, private, link-local (metadata), CGNAT, multicast, IPv6 local and mapped forms', async (t) => {
  for (const a of ['127.0.0.1', '10.0.0.5', '172.16.3.4', '192.168.1.1', '169.254.169.254', '100.64.0.1', '0.0.0.0', '224.0.0.1',
    '::1', '::', 'fe80::1', 'fd00:ec2::254', '::ffff:127.0.0.1', '::ffff:10.0.0.1']) t.ok(isNonPublicAddress(a), a)
  for (const a of ['93.184.215.14', '8.8.8.8', '2606:4700:4700::1111', '::ffff:8.8.8.8']) t.notOk(isNonPublicAddress(a), a)
})

t.test('a subscription URL: its form and scheme, then its address, each refused with its own code', async (t) => {
  const strict = { allowHttp: false, allowPrivateNetworks: false }
  await t.rejects(checkDestination('ftp://example.com/', strict), { code: 'event_url_invalid' })
  await t.rejects(checkDestination('https://user:pw@example.com/', strict), { code: 'event_url_invalid' })
  await t.rejects(checkDestination('http://example.com/', strict), { code: 'event_url_not_https' })
  await t.rejects(checkDestination('https://127.0.0.1/', strict), { code: 'event_url_private_address' })
  await t.rejects(checkDestination('https://app.localhost/', strict), { code: 'event_url_private_address' })
  t.equal(await checkDestination('https://93.184.215.14/hook', strict), 'https://93.184.215.14/hook')
  t.equal(await checkDestination('http://127.0.0.1:8080/x', { allowHttp: true, allowPrivateNetworks: true }), 'http://127.0.0.1:8080/x')
})

t.test('at delivery the resolved address is checked: a name that resolves to loopback fails the connection', async (t) => {
  const lookup = (allow: boolean) => new Promise<{ err: NodeJS.ErrnoException | null, address: unknown }>((resolve) =>
    checkedLookup(allow)('localhost', {}, (err, address) => resolve({ err, address })))
  const refused = await lookup(false)
  t.equal(refused.err?.code, 'EVENT_ADDRESS_REFUSED')
  const allowed = await lookup(true)
  t.equal(allowed.err, null)
  t.ok(isNonPublicAddress(String(allowed.address)))
})

t.test('EVENTS_ALLOWED_HOSTS admits the non-public hosts and ranges it names, and only those', async (t) => {
  const allowedHosts = parseAllowedHosts(' hooks.localhost , 10.20.0.0/16,127.0.0.1 ')
  const policy = { allowHttp: false, allowPrivateNetworks: false, allowedHosts }
  t.equal(await checkDestination('https://10.20.3.4/x', policy), 'https://10.20.3.4/x', 'in a named range')
  t.equal(await checkDestination('https://127.0.0.1:8443/x', policy), 'https://127.0.0.1:8443/x', 'a named address')
  t.equal(await checkDestination('https://hooks.localhost/x', policy), 'https://hooks.localhost/x', 'a named host')
  await t.rejects(checkDestination('https://10.21.0.1/x', policy), { code: 'event_url_private_address' }, 'outside the range')
  await t.rejects(checkDestination('https://other.localhost/x', policy), { code: 'event_url_private_address' })
  t.ok(isAllowedHost(allowedHosts, 'anything', '10.20.255.1'), 'a name that resolves into a range, at delivery')
  t.notOk(isAllowedHost(allowedHosts, 'anything', '10.21.0.1'))
  t.throws(() => parseAllowedHosts('10.0.0.0/33'), /not an address range/)
  t.throws(() => parseAllowedHosts('hooks.internal/8'), /not an address range/)
})
