// A client app's event endpoint, for the README demo (docs/EVENTS.md): verifies each event with the
// standardwebhooks library and prints one line per event. OTN_EVENTS_SECRET: the subscription's
// secret (whsec_…); PORT: where it listens (default 4000, on 127.0.0.1).
import http from 'node:http'
import { Webhook } from 'standardwebhooks'

const wh = new Webhook(process.env.OTN_EVENTS_SECRET ?? '')
const port = Number(process.env.PORT ?? 4000)
http.createServer((req, res) => {
  let body = ''
  req.on('data', (chunk) => { body += chunk })
  req.on('end', () => {
    try {
      const event = wh.verify(body, req.headers) // throws unless the service signed exactly this body
      console.log(JSON.stringify({ id: req.headers['webhook-id'], type: event.type, data: event.data }))
      res.writeHead(204).end()
    } catch (err) {
      console.error(`refused: ${err.message}`)
      res.writeHead(400).end()
    }
  })
}).listen(port, '127.0.0.1', () => console.log(`listening on http://127.0.0.1:${port}/`))
