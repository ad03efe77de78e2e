import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { Writable } from 'node:stream'
import { after, before, describe, test } from 'node:test'

import { hasNativeBinding } from '../../src/native/index.js'
import { Link } from '../../src/ssh/index.js'
import {
  gateOnTransport,
  paddingPoolRefills,
  quickAcksSetCount,
  TRANSPORT_QUEUE_LIMIT,
} from '../../src/ssh/transport/ssh2-socket.js'
import { hopOf, startEchoServer, startSshd, type EchoServer, type Sshd } from '../support/index.js'

const KIB = 1024

describe("ssh2's packet layer as the link tunes it, against a real sshd", () => {
  let sshd: Sshd
  let echo: EchoServer

  before(async () => {
    ;[sshd, echo] = await Promise.all([startSshd(), startEchoServer()])
  })
  after(async () => {
    await echo.close()
    await sshd.close()
  })

  test('packets take their padding from the pool, and what they carry arrives intact', async (t) => {
    const link = new Link({ hops: [hopOf(sshd)] }, { agent: false })
    t.after(() => link.close())
    await link.connect()
    const stream = await link.forwardOut(echo.host, echo.port)
    const refills = paddingPoolRefills()
    // one packet per write, each with 4 to 19 bytes of padding: more than the pool's 4 KiB, so it is refilled
    const pieces = Array.from({ length: 3000 }, (_, i) => Buffer.from(`${String(i).padStart(6, '0')};`))
    // then writes of several packets each
    const bulk = randomBytes(1024 * KIB)
    for (let at = 0; at < bulk.length; at += 64 * KIB) pieces.push(bulk.subarray(at, at + 64 * KIB))
    const sent = Buffer.concat(pieces)
    const got: Buffer[] = []
    let gotBytes = 0
    const echoed = new Promise<void>((resolve) => {
      stream.on('data', (chunk: Buffer) => {
        got.push(chunk)
        gotBytes += chunk.length
        if (gotBytes >= sent.length) resolve()
      })
    })
    for (const piece of pieces) stream.write(piece)
    await echoed
    stream.destroy()
    assert.ok(Buffer.concat(got).equals(sent), 'the echo differs from what was sent')
    // an ssh2 whose cipher no longer has the shape poolPadding expects leaves the pool unused
    assert.ok(
      paddingPoolRefills() - refills >= 2,
      `the pool was refilled ${paddingPoolRefills() - refills} times`,
    )
  })

  test("while channels open, the ssh socket acknowledges the server's packets at once (TCP_QUICKACK)", async (t) => {
    assert.ok(hasNativeBinding(), 'the native binding did not load')
    const link = new Link({ hops: [hopOf(sshd)] }, { agent: false })
    t.after(() => link.close())
    await link.connect()
    const before = quickAcksSetCount()
    const streams = await Promise.all(Array.from({ length: 7 }, () => link.forwardOut(echo.host, echo.port)))
    // set on the link's real TCP socket (the count moves only when setsockopt succeeded): once as each open is
    // sent, and again for packets read while any is unanswered
    const whileOpening = quickAcksSetCount() - before
    assert.ok(whileOpening >= 7, `TCP_QUICKACK was set ${whileOpening} times for 7 channel opens`)
    // once every open is answered, reads no longer set it
    const [stream] = streams
    assert.ok(stream !== undefined)
    const echoed = once(stream, 'data')
    stream.write('ping')
    await echoed
    assert.equal(quickAcksSetCount() - before, whileOpening)
    for (const s of streams) s.destroy()
  })
})

test('channel writes wait for the ssh socket: its queue stays within the limit and one chunk, however many channels write', async () => {
  // stands in for ssh2's socket: the kernel takes one chunk per turn of the event loop
  const received = { bytes: 0 }
  const sock = new Writable({
    write(chunk: Buffer, _encoding, cb) {
      received.bytes += chunk.length
      setImmediate(cb)
    },
  })
  const chunk = Buffer.alloc(64 * KIB, 1)
  let maxQueued = 0
  // each stands in for an ssh2 channel (2 MiB highWaterMark) whose write puts a packet on the socket at once
  const channels = Array.from({ length: 40 }, () => {
    const channel = new Writable({
      highWaterMark: 2 * 1024 * KIB,
      write(data: Buffer, _encoding, cb) {
        sock.write(data)
        maxQueued = Math.max(maxQueued, sock.writableLength)
        cb()
      },
    })
    gateOnTransport({ _sock: sock } as never, channel as never)
    return channel
  })
  const finished = channels.map((channel) => once(channel, 'finish'))
  for (const channel of channels) {
    for (let i = 0; i < 16; i++) channel.write(chunk)
    channel.end()
  }
  await Promise.all(finished)
  sock.end()
  await once(sock, 'finish')
  assert.equal(received.bytes, 40 * 16 * chunk.length)
  assert.ok(
    maxQueued <= TRANSPORT_QUEUE_LIMIT + chunk.length,
    `the socket queued ${maxQueued} bytes (limit ${TRANSPORT_QUEUE_LIMIT} + one chunk)`,
  )
})
