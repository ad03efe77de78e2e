import assert from 'node:assert/strict'
import { subscribe } from 'node:diagnostics_channel'
import { once } from 'node:events'
import { Duplex } from 'node:stream'
import { test } from 'node:test'

import { hasNativeBinding } from '../../src/native/index.js'
import { heapReleaseChannel, releaseHeapAfterBursts } from '../../src/tunnel/heap-release.js'
import { clientThroughForward } from './stream-remote.js'

const MIB = 1024 * 1024

test('the native binding is built at install and loads', () => {
  assert.ok(
    hasNativeBinding(),
    'src/native/build/Release/ipp_tunnel_native.node did not load: did `npm install` build it (node-gyp, a C compiler)?',
  )
})

test('once a burst through a forward has been quiet for the set time, the heap is collected and its free pages handed back', async (t) => {
  // two seconds of quiet instead of the default ten, to keep the test short
  const quietSeconds = 2
  releaseHeapAfterBursts({ quietSeconds })
  const released = new Promise<{ pagesReturned: boolean; at: number }>((resolve) =>
    subscribe(heapReleaseChannel.name, (message) =>
      resolve({
        pagesReturned: (message as { pagesReturned: boolean }).pagesReturned,
        at: performance.now(),
      }),
    ),
  )
  // the remote end drops what it is sent and sends nothing back
  const channel = new Duplex({
    allowHalfOpen: true,
    read: () => undefined,
    write: (_chunk, _encoding, done) => done(),
    final(done) {
      this.push(null)
      done()
    },
  })
  const client = await clientThroughForward(t, channel)
  client.end(Buffer.alloc(16 * MIB, 1))
  await once(channel, 'finish')
  const lastByte = performance.now()
  const release = await released
  // glibc's malloc_trim says whether it returned any pages: after 16 MiB of freed buffers it has some
  assert.equal(release.pagesReturned, true)
  // not before the forwards were quiet that long (the timers count whole milliseconds, hence the 5 ms)
  assert.ok(
    release.at - lastByte >= quietSeconds * 1000 - 5,
    `released ${(release.at - lastByte).toFixed(0)} ms after the last byte`,
  )
  client.destroy()
})
