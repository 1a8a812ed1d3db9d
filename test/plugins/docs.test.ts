import t from 'tap'
import { build } from '../helper.js'

// The docs page is the service's: its title and mark, the published /openapi.json, the API key kept
// across reloads, and nothing loaded from another origin (it works offline).
t.test('/docs: the service title and icon, every asset served here', async (t) => {
  const app = await build(t)
  const page = await app.inject({ url: '/docs/' })
  t.equal(page.statusCode, 200)
  t.match(page.body, /<title>OTN service: API reference<\/title>/)
  t.notMatch(page.body, /Swagger UI<\/title>|favicon-32x32\.png/, "not Swagger's title or icon")
  const assets = [...page.body.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1])
  t.ok(assets.length >= 5)
  for (const asset of assets) {
    t.notMatch(asset, /^(https?:)?\/\//, `${asset} is served by the service`)
    const res = await app.inject({ url: new URL(asset, 'http://x/docs/').pathname })
    t.equal(res.statusCode, 200, asset)
  }
  t.match(page.body, /href="\.\/static\/theme\/theme\.css"/)
  const icon = await app.inject({ url: '/docs/static/theme/favicon.svg' })
  t.equal(icon.headers['content-type'], 'image/svg+xml')
  t.match(icon.body, /^<svg /)
})

t.test('/docs loads /openapi.json and keeps the key entered in Authorize across reloads', async (t) => {
  const app = await build(t)
  const script = (await app.inject({ url: '/docs/static/swagger-initializer.js' })).body
  const config = JSON.parse(/const config = (\{.*?\})\n/s.exec(script)![1])
  t.same(config.urls, [{ url: '/openapi.json', name: 'OTN service 1.0.0' }])
  t.equal(config.persistAuthorization, true)
  t.match(script, /data:image\/svg\+xml;base64,/, "the top bar shows the service's mark")
  t.notMatch(Buffer.from(/data:image\/svg\+xml;base64,([A-Za-z0-9+/=]+)/.exec(script)![1], 'base64').toString(), /fastify/i)

  const spec = await app.inject({ url: '/openapi.json' })
  t.equal(spec.statusCode, 200)
  t.same(spec.json(), app.swagger())
  t.equal(spec.json().info.title, 'OTN service')
})
