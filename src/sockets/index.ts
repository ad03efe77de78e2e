/**
 * Ready-to-use authenticated ZeroMQ sockets for a connection file: {@link connect} opens an ssh tunnel when
 * the file (or `options.ssh`) names a server, creates one socket per channel of the right type (Curve when
 * the file has a key), waits for every handshake, and binds a Session that signs what is sent and drops
 * what does not verify.
 *
 * @example
 * import { connect } from '../sockets/index.js'
 * await using conn = await connect('kernel-1234.json')
 * if (conn.kind === 'kernel') {
 *   const reply = await conn.request('shell', 'kernel_info_request', {})
 *   console.log(reply.content, conn.stats().dropped)
 * }
 */

/**
 * `connect(fileOrInfo, options)`: the sockets of an ipyparallel client (`query`, `mux`, `task`, `control`,
 * `broadcast` Dealers sharing one routing id; `iopub`, `notification` Subscribers) or of a kernel client
 * (`shell`, `control`, `stdin` Dealers; `iopub` Subscriber; `hb` Request), connected and handshaken.
 *
 * @example
 * const conn = await connect(file, { ssh: 'me@login.example.org', handshakeTimeoutMs: 5000 })
 * try { … } finally { await conn.close() }
 *
 * `Connection`: `request(channel, msgType, content, {buffers, ident, timeoutMs})` resolves with the reply
 * whose parent is the request; `messages(channel)` iterates verified messages; `stats().dropped` counts
 * refused ones by reason; `heartbeat()` pings a kernel; `close()` / `Symbol.asyncDispose` release it all.
 *
 * @example
 * const reply = await conn.request('query', 'queue_request', { targets: null, verbose: false })
 */
export {
  Connection,
  connect,
  endpointUrl,
  type AnyConnection,
  type ChannelOf,
  type ClientKind,
  type ConnectOptions,
  type ConnectionEvents,
  type ConnectionStats,
  type IppChannel,
  type KernelChannel,
  type MessageChannelOf,
  type RequestOptions,
} from './connection.js'

/**
 * `SendQueue`: one send at a time on a zeromq socket, in call order (zeromq.js allows one pending send).
 *
 * @example
 * const queue = new SendQueue(dealer, 'mux')
 * await Promise.all(messages.map((frames) => queue.send(frames)))
 */
export { SendQueue, type Sendable } from './send-queue.js'

/**
 * `refuseUnreachable(info, where)`: before a direct (untunnelled) connection, fails at once with `E_CONNECT` when a
 * port is refused outright.
 *
 * @example
 * await refuseUnreachable(info, file)
 */
export { refuseUnreachable } from './probe.js'

/**
 * `MessageStream`: the buffered async iterator behind `Connection.messages`.
 *
 * @example
 * const stream = new MessageStream<string>(() => undefined)
 * stream.push('a'); stream.end()
 */
export { MessageStream } from './stream.js'
