import assert from 'node:assert/strict'
import { once } from 'node:events'
import { Duplex } from 'node:stream'
import { test } from 'node:test'

import { clientThroughForward } from './stream-remote.js'

const MIB = 1024 * 1024
/** What the forward may hold per direction: its bound (256 KiB) plus the socket reads of one poll phase. */
const BOUND = 256 * 1024 + 2 * 64 * 1024

/**
 * A remote stream shaped like an ssh2 channel (2 MiB highWaterMark) that is slower than a socket: it completes a
 * write a turn of the event loop later, while the socket may read many chunks in one poll phase.
 */
class SlowChannel extends Duplex {
  received = 0
  maxQueued = 0
  readonly #held: (() => void)[] = []
  #scheduled = false

  constructor() {
    super({ writableHighWaterMark: 2 * MIB, allowHalfOpen: true })
  }

  override _read(): void {
    // the remote end sends nothing
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.received += chunk.length
    // what the writer queued: this chunk and all it wrote behind it
    this.maxQueued = Math.max(this.maxQueued, this.writableLength)
    this.#held.push(() => cb())
    if (this.#scheduled) return
    this.#scheduled = true
    setImmediate(() => {
      this.#scheduled = false
      for (const done of this.#held.splice(0)) done()
    })
  }

  override _final(cb: () => void): void {
    this.push(null)
    cb()
  }
}

test('a forward reads from its client only as fast as the remote channel takes the data', async (t) => {
  const channel = new SlowChannel()
  const client = await clientThroughForward(t, channel)
  const total = 32 * MIB
  client.end(Buffer.alloc(total, 1))
  await once(channel, 'finish')
  assert.equal(channel.received, total)
  assert.ok(
    channel.maxQueued <= BOUND,
    `the forward queued ${channel.maxQueued} bytes on the channel; at most ${BOUND} expected`,
  )
  client.destroy()
})
