import { once } from 'node:events'
import { connect, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { TestContext } from 'node:test'

import type { Endpoint } from '../../src/connection-file/index.js'
import { Forward } from '../../src/tunnel/index.js'

/**
 * A forward whose every connection is carried to `channel`, an in-process stream standing in for an ssh2
 * channel, and a client connected to it; the forward is closed after the test.
 */
export async function clientThroughForward(t: TestContext, channel: Duplex): Promise<Socket> {
  const remote: Endpoint = { kind: 'tcp', channel: 'shell', host: '127.0.0.1', port: 9 }
  const forward = await Forward.listen(
    remote,
    () => Promise.resolve(channel),
    () => undefined,
  )
  t.after(() => forward.close())
  const client = connect({ host: '127.0.0.1', port: forward.localPort })
  await once(client, 'connect')
  return client
}
