import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { after, before, test } from 'node:test'
import { promisify } from 'node:util'

import type { Duplex } from 'node:stream'

import { Link, type LinkEvents } from '../../src/ssh/index.js'
import {
  createNetns,
  hopOf,
  startEchoServer,
  startSshd,
  type EchoServer,
  type Netns,
  type Sshd,
} from '../support/index.js'

const run = promisify(execFile)

let ns: Netns
let sshd: Sshd
let echo: EchoServer

before(async () => {
  ns = await createNetns()
  sshd = await startSshd({ netns: ns })
  echo = await startEchoServer(ns)
})
after(async () => {
  await echo.close()
  await sshd.close()
  await ns.close()
})

async function roundTrip(stream: Duplex, text: string): Promise<string> {
  stream.write(text)
  const [chunk] = (await once(stream, 'data')) as [Buffer]
  stream.destroy()
  return chunk.toString()
}

/** Silently drops everything between host and namespace: no FIN, no RST, only keepalives can tell. */
async function setWire(up: boolean): Promise<void> {
  await run('ip', ['netns', 'exec', ns.name, 'ip', 'link', 'set', ns.nsInterface, up ? 'up' : 'down'])
}

test('keepalives notice a link that went silent, and the link comes back when the wire does', async (t) => {
  const link = new Link(
    { hops: [hopOf(sshd)] },
    { agent: false, keepaliveIntervalMs: 300, keepaliveCountMax: 2, backoff: { initialMs: 100, maxMs: 400 } },
  )
  t.after(() => link.close())
  t.after(() => setWire(true))
  await link.connect()
  const open = await link.forwardOut(echo.host, echo.port)
  const openClosed = once(open, 'close')

  const reconnecting = once(link, 'reconnecting') as Promise<LinkEvents['reconnecting']>
  await setWire(false)
  const [down] = await reconnecting
  assert.equal(down.error.code, 'E_LINK_DOWN')
  await openClosed // the channel of the dead connection is closed, so its user sees the drop

  const reconnected = once(link, 'reconnected') as Promise<LinkEvents['reconnected']>
  await setWire(true)
  await reconnected
  assert.equal(link.state, 'up')
  assert.equal(await roundTrip(await link.forwardOut(echo.host, echo.port), 'back'), 'back')
})
