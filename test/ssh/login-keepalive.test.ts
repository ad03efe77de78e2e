import assert from 'node:assert/strict'
import { once } from 'node:events'
import type { Duplex } from 'node:stream'
import { after, before, test } from 'node:test'

import { Link, type LinkEvents, type LinkOptions, type PromptProvider } from '../../src/ssh/index.js'
import {
  createNetns,
  hopOf,
  startEchoServer,
  startSshd,
  type EchoServer,
  type Netns,
  type Sshd,
  silence,
} from '../support/index.js'
import { setUpOtpPam, type OtpPam } from '../support/otp.js'

let ns: Netns
let otp: OtpPam
/** Wants a key and then a one-time code. */
let both: Sshd
/** Takes the key alone. */
let keyOnly: Sshd
let echo: EchoServer

before(async () => {
  ns = await createNetns()
  otp = await setUpOtpPam()
  ;[both, keyOnly, echo] = await Promise.all([
    startSshd({
      netns: ns,
      pamService: otp.service,
      extraConfig: 'AuthenticationMethods publickey,keyboard-interactive',
    }),
    startSshd({ netns: ns }),
    startEchoServer(ns),
  ])
})
after(async () => {
  await echo.close()
  await Promise.all([both.close(), keyOnly.close()])
  await otp.close()
  await ns.close()
})

/** Silently drops everything between host and namespace: no FIN, no RST, only keepalives can tell. */
async function setWire(up: boolean): Promise<void> {
  await silence(ns, !up)
}

async function roundTrip(stream: Duplex, text: string): Promise<string> {
  stream.write(text)
  const [chunk] = (await once(stream, 'data')) as [Buffer]
  stream.destroy()
  return chunk.toString()
}

test('a link whose login asked for a code outlives a silence that ends a key-only link; an explicit count wins', async (t) => {
  let asked = 0
  const prompt: PromptProvider = async () => {
    asked++
    return [await otp.code(await otp.counter())]
  }
  // small intervals so the test is quick; no ServerAliveCountMax anywhere, so the defaults apply
  const options: LinkOptions = {
    agent: false,
    prompt,
    keepaliveIntervalMs: 200,
    backoff: { initialMs: 100, maxMs: 400 },
  }
  const precious = new Link({ hops: [hopOf(both)] }, options)
  const plain = new Link({ hops: [hopOf(keyOnly)] }, options)
  // behind a jump host that takes the key alone: the code makes the whole chain precious
  const jumped = new Link({ hops: [hopOf(keyOnly), hopOf(both)] }, options)
  const counted = new Link({ hops: [hopOf(both)] }, { ...options, keepaliveCountMax: 3 })
  t.after(() => Promise.all([precious.close(), plain.close(), jumped.close(), counted.close()]))
  t.after(() => setWire(true))
  await precious.connect()
  await plain.connect()
  await jumped.connect()
  await counted.connect()
  assert.equal(asked, 3)
  let preciousDown = false
  precious.on('reconnecting', () => (preciousDown = true))
  jumped.on('reconnecting', () => (preciousDown = true))

  const plainDown = once(plain, 'reconnecting') as Promise<LinkEvents['reconnecting']>
  const countedDown = once(counted, 'reconnecting') as Promise<LinkEvents['reconnecting']>
  await setWire(false)
  const [[down], [explicit]] = await Promise.all([plainDown, countedDown])
  assert.equal(down.error.code, 'E_LINK_DOWN')
  assert.match(down.error.message, /no answer to 3 keepalives .*ServerAliveCountMax 3, the default/)
  assert.equal(explicit.error.code, 'E_LINK_DOWN')
  assert.match(explicit.error.message, /ServerAliveCountMax 3\)/)

  const back = once(plain, 'reconnected')
  const countedBack = once(counted, 'reconnected')
  await setWire(true)
  await Promise.all([back, countedBack])
  // the key-only link came back by itself; the one with an explicit count had to ask for a new code
  assert.equal(asked, 4)
  // the links that asked for a code never went down, and carry forwards with no new login
  assert.equal(preciousDown, false)
  assert.equal(precious.state, 'up')
  assert.equal(jumped.state, 'up')
  assert.equal(await roundTrip(await precious.forwardOut(echo.host, echo.port), 'held'), 'held')
  assert.equal(await roundTrip(await jumped.forwardOut(echo.host, echo.port), 'jumped'), 'jumped')
  assert.equal(asked, 4)
})
