import { createConnection } from 'node:net'

import { endpoints, type ConnectionInfo, type TcpEndpoint } from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'

/** How long one probe waits for an answer before leaving the verdict to the ZeroMQ handshake. */
const PROBE_MS = 2000

type Verdict = 'open' | 'refused' | 'closed' | 'unknown'

/**
 * Resolves 'refused' when the host answers that nothing listens on the port; 'closed' when the port accepts and
 * closes the connection before a word (a ZeroMQ peer sends its greeting at once: what closes in silence is a
 * tunnel whose far end is gone); 'open' once the peer speaks; else 'unknown'.
 */
function probe(endpoint: TcpEndpoint): Promise<Verdict> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: endpoint.host, port: endpoint.port })
    const done = (verdict: Verdict): void => {
      clearTimeout(timer)
      socket.destroy()
      resolve(verdict)
    }
    const timer = setTimeout(() => done('unknown'), PROBE_MS)
    socket.once('data', () => done('open'))
    socket.once('end', () => done('closed'))
    socket.once('error', (err: NodeJS.ErrnoException) =>
      done(err.code === 'ECONNREFUSED' ? 'refused' : err.code === 'ECONNRESET' ? 'closed' : 'unknown'),
    )
  })
}

/**
 * Before a direct (untunnelled) connection: a port that is refused outright means the peer is not there, or not
 * reachable from here without ssh. ZeroMQ would retry such a port silently until the handshake timeout; this says
 * so at once, as does a port that accepts and closes in silence (a loopback copy whose tunnel has nothing behind
 * it). Ports that do not answer within a moment are left to the handshake (a firewall that drops).
 *
 * @throws IppTunnelError `E_CONNECT` naming the channel, the address and how to reach it through ssh.
 */
export async function refuseUnreachable(info: ConnectionInfo, where: string): Promise<void> {
  // unix sockets need no probe: connecting to a missing one fails at once
  const all = endpoints(info).filter((e): e is TcpEndpoint => e.kind !== 'unix')
  const verdicts = await Promise.all(all.map((e) => probe(e)))
  const refused = all.filter((_, i) => verdicts[i] === 'refused')
  const first = refused[0]
  const closed = all.find((_, i) => verdicts[i] === 'closed')
  if (first === undefined && closed !== undefined) {
    throw new IppTunnelError(
      'E_CONNECT',
      `${where}: channel ${closed.channel} at ${closed.host}:${closed.port} closed the connection without a word; if this is a tunnel's loopback copy, the controller or kernel behind it is gone (ipp-tunnel status tells)`,
    )
  }
  if (first === undefined) return
  throw new IppTunnelError(
    'E_CONNECT',
    `${where}: nothing listens at ${first.host}:${first.port} (channel ${first.channel}${refused.length > 1 ? ` and ${String(refused.length - 1)} more` : ''}); if the controller or kernel runs on another host, reach it through ssh: --ssh user@host (or set the file's "ssh" field)`,
  )
}
