/**
 * Authenticated ZeroMQ sockets for one connection file: the sockets of an ipyparallel client or a Jupyter
 * kernel client, connected directly or through an ssh tunnel, with Curve when the file asks for it and a
 * Session that signs what is sent and drops what does not verify.
 */
import { EventEmitter } from 'node:events'

import * as zmq from 'zeromq'

import {
  destinationOf,
  endpoints,
  readConnectionFile,
  type ConnectionInfo,
  type Endpoint,
  type IppClientInfo,
  type KernelInfo,
} from '../connection-file/index.js'
import { IppTunnelError, isIppTunnelError } from '../errors/index.js'
import { openTunnel, type OpenTunnelOptions, type Tunnel } from '../tunnel/index.js'
import { refuseUnreachable } from './probe.js'
import { Session, type ContentFor, type JsonObject, type Message, type RefusalCode } from '../wire/index.js'
import { SendQueue } from './send-queue.js'
import { MessageStream } from './stream.js'

/** The kinds of connection file a client can connect with (an engine file is for engines). */
export type ClientKind = 'ipp-client' | 'kernel'

/** Channels of an ipyparallel client: `query` is the controller's `registration` port. */
export type IppChannel = 'query' | 'mux' | 'task' | 'control' | 'broadcast' | 'iopub' | 'notification'

/** Channels of a Jupyter kernel client. `hb` is raw bytes, not messages: use {@link Connection.heartbeat}. */
export type KernelChannel = 'shell' | 'control' | 'stdin' | 'iopub' | 'hb'

/** The channels of a connection of kind `K`. */
export type ChannelOf<K extends ClientKind> = K extends 'ipp-client' ? IppChannel : KernelChannel

/** The channels that carry signed messages (every channel but the kernel heartbeat). */
export type MessageChannelOf<K extends ClientKind> = Exclude<ChannelOf<K>, 'hb'>

/** The ZeroMQ address of an endpoint: `tcp://host:port` (IPv6 bracketed) or `ipc://path`. */
export function endpointUrl(endpoint: Endpoint): string {
  if (endpoint.kind === 'unix') return `ipc://${endpoint.path}`
  const host = endpoint.host.includes(':') ? `[${endpoint.host}]` : endpoint.host
  return `tcp://${host}:${endpoint.port}`
}

/** Options of {@link connect}: the ssh options of a tunnel, plus how long to wait for the peer. */
export interface ConnectOptions extends Omit<OpenTunnelOptions, 'out' | 'probe'> {
  /** How long each socket may take to complete its ZMTP (and Curve) handshake; default 10 000 ms. */
  readonly handshakeTimeoutMs?: number
  /** Default timeout of {@link Connection.request}; default 30 000 ms. */
  readonly requestTimeoutMs?: number
}

/** Options of {@link Connection.request}. */
export interface RequestOptions {
  /** Unsigned binary frames after the content. */
  readonly buffers?: Buffer[]
  /** Routing frames before `<IDS|MSG>`, e.g. an engine's identity on the mux channel. */
  readonly ident?: string | Buffer | readonly (string | Buffer)[]
  readonly metadata?: JsonObject
  /** Default: the connection's `requestTimeoutMs`. */
  readonly timeoutMs?: number
  readonly signal?: AbortSignal
}

/** Counters of a connection, for status and debugging. */
export interface ConnectionStats {
  /** Messages sent, by channel. */
  readonly sent: Readonly<Record<string, number>>
  /** Verified messages received, by channel. */
  readonly received: Readonly<Record<string, number>>
  /** Messages dropped because they failed verification, by reason. */
  readonly dropped: Readonly<Record<RefusalCode, number>>
  /** Messages dropped, by channel. */
  readonly droppedByChannel: Readonly<Record<string, number>>
}

/** Events of a {@link Connection}. */
export interface ConnectionEvents {
  /** A received message failed verification and was dropped. */
  'message:dropped': [{ channel: string; code: RefusalCode; reason: string }]
  closed: []
}

type SocketKind = 'dealer' | 'sub' | 'req'

interface ChannelSpec {
  /** Our name for the channel. */
  readonly channel: string
  /** The channel's name in the connection file's endpoints. */
  readonly endpoint: string
  readonly socket: SocketKind
}

const IPP_CHANNELS: readonly ChannelSpec[] = [
  { channel: 'query', endpoint: 'registration', socket: 'dealer' },
  { channel: 'mux', endpoint: 'mux', socket: 'dealer' },
  { channel: 'task', endpoint: 'task', socket: 'dealer' },
  { channel: 'control', endpoint: 'control', socket: 'dealer' },
  { channel: 'broadcast', endpoint: 'broadcast', socket: 'dealer' },
  { channel: 'iopub', endpoint: 'iopub', socket: 'sub' },
  { channel: 'notification', endpoint: 'notification', socket: 'sub' },
]

const KERNEL_CHANNELS: readonly ChannelSpec[] = [
  { channel: 'shell', endpoint: 'shell', socket: 'dealer' },
  { channel: 'control', endpoint: 'control', socket: 'dealer' },
  { channel: 'stdin', endpoint: 'stdin', socket: 'dealer' },
  { channel: 'iopub', endpoint: 'iopub', socket: 'sub' },
  { channel: 'hb', endpoint: 'hb', socket: 'req' },
]

const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000
const DEFAULT_REQUEST_TIMEOUT_MS = 30_000

type AnySocket = zmq.Dealer | zmq.Subscriber | zmq.Request

interface Curve {
  readonly curveServerKey: string
  readonly curvePublicKey: string
  readonly curveSecretKey: string
}

interface Pending {
  readonly channel: string
  readonly msgType: string
  resolve(reply: Message): void
  reject(err: Error): void
}

function curveOf(info: IppClientInfo | KernelInfo): Curve | undefined {
  if (info.kind === 'kernel') {
    const { curve_publickey: publicKey, curve_secretkey: secretKey } = info
    if (publicKey === undefined || publicKey === '') return undefined
    // As jupyter_client (>= 8.9) does: the file's pair on our side too, its public key as the server key.
    if (secretKey !== undefined && secretKey !== '') {
      return { curveServerKey: publicKey, curvePublicKey: publicKey, curveSecretKey: secretKey }
    }
    const fresh = zmq.curveKeyPair()
    return { curveServerKey: publicKey, curvePublicKey: fresh.publicKey, curveSecretKey: fresh.secretKey }
  }
  const serverKey = info.curve_serverkey
  if (serverKey === null || serverKey === '') return undefined
  // Client keys only encrypt; the server key authenticates the peer. A fresh pair per connection, on every socket.
  const { publicKey, secretKey } = zmq.curveKeyPair()
  return { curveServerKey: serverKey, curvePublicKey: publicKey, curveSecretKey: secretKey }
}

function makeSocket(kind: SocketKind, routingId: string, curve: Curve | undefined): AnySocket {
  const common = { linger: 0, ...curve }
  switch (kind) {
    case 'dealer':
      return new zmq.Dealer({ ...common, routingId })
    case 'sub':
      // Like ipyparallel's client: no receive high-water mark on iopub/notification.
      return new zmq.Subscriber({ ...common, receiveHighWaterMark: 0 })
    case 'req':
      // relaxed + correlate: a lost heartbeat does not wedge the REQ state machine.
      return new zmq.Request({ ...common, relaxed: true, correlate: true })
  }
}

function toBuffer(frame: string | Buffer): Buffer {
  return typeof frame === 'string' ? Buffer.from(frame, 'utf8') : frame
}

function identsOf(ident: RequestOptions['ident']): Buffer[] {
  if (ident === undefined) return []
  if (typeof ident === 'string' || Buffer.isBuffer(ident)) return [toBuffer(ident)]
  return ident.map(toBuffer)
}

const REFUSALS: readonly RefusalCode[] = [
  'E_SIGNATURE_MISSING',
  'E_SIGNATURE_MISMATCH',
  'E_SIGNATURE_REPLAY',
  'E_MESSAGE_FORMAT',
]

function isRefusal(err: unknown): err is IppTunnelError & { code: RefusalCode } {
  return isIppTunnelError(err) && (REFUSALS as readonly string[]).includes(err.code)
}

/**
 * Waits for the socket's first successful handshake. A handshake error while Curve is on is an
 * authentication failure (`E_CURVE`): with a wrong server key the server drops the connection mid-handshake.
 */
function handshake(
  socket: AnySocket,
  spec: ChannelSpec,
  address: string,
  curve: boolean,
  timeoutMs: number,
  where: string,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const events = socket.events
    const done = (err?: Error) => {
      clearTimeout(timer)
      events.off('handshake', onOk)
      events.off('handshake:error:auth', onError)
      events.off('handshake:error:protocol', onError)
      events.off('handshake:error:other', onError)
      if (err) reject(err)
      else resolve()
    }
    const onOk = () => done()
    const onError = (event: { type: string; error: Error }) => {
      const detail = `${event.type.slice('handshake:error:'.length)} error: ${event.error.message}`
      if (curve || event.type === 'handshake:error:auth') {
        done(
          new IppTunnelError(
            'E_CURVE',
            `${where}: Curve handshake on channel "${spec.channel}" (${address}) failed (${detail}); the curve key in the file does not match the server's — use the file the peer wrote last`,
            { cause: event.error },
          ),
        )
      } else if (event.type === 'handshake:error:protocol') {
        done(
          new IppTunnelError(
            'E_CURVE',
            `${where}: the peer on channel "${spec.channel}" (${address}) refused the ZMTP handshake (${detail}); it may require Curve keys the file does not have`,
            { cause: event.error },
          ),
        )
      }
      // Without Curve, other errors (a peer restarting) are retried by zeromq until the timeout.
    }
    const timer = setTimeout(
      () =>
        done(
          new IppTunnelError(
            'E_CONNECT',
            `${where}: no ZMTP handshake on channel "${spec.channel}" (${address}) within ${timeoutMs} ms; is the ${spec.endpoint} port open and the peer running?`,
          ),
        ),
      timeoutMs,
    )
    events.on('handshake', onOk)
    events.on('handshake:error:auth', onError)
    events.on('handshake:error:protocol', onError)
    events.on('handshake:error:other', onError)
  })
}

/**
 * One client's sockets to an ipyparallel controller or a Jupyter kernel, with a {@link Session} bound to
 * them. Made by {@link connect}; narrow on `kind`.
 *
 * @example
 * await using conn = await connect('ipcontroller-client.json')
 * if (conn.kind === 'ipp-client') {
 *   const reply = await conn.request('query', 'connection_request', {})
 *   console.log(reply.content)
 * }
 */
export class Connection<K extends ClientKind = ClientKind> extends EventEmitter<ConnectionEvents> {
  readonly kind: K
  /** The connection info the sockets connected to (the tunnel's loopback copy when tunnelled). */
  readonly info: ConnectionInfo
  /** Signs and verifies every message; its id is also the Dealers' shared routing id. */
  readonly session: Session
  /** The tunnel this connection opened and owns, if any. */
  readonly tunnel: Tunnel | undefined
  /** True when the sockets use CurveZMQ. */
  readonly curve: boolean
  /** Where messages name the peer: the file, or the destination. */
  readonly where: string

  readonly #sockets = new Map<string, AnySocket>()
  readonly #queues = new Map<string, SendQueue>()
  readonly #streams = new Map<string, Set<MessageStream<Message>>>()
  readonly #pending = new Map<string, Pending>()
  readonly #received: Record<string, number> = {}
  readonly #droppedByChannel: Record<string, number> = {}
  readonly #dropped: Record<RefusalCode, number> = {
    E_SIGNATURE_MISSING: 0,
    E_SIGNATURE_MISMATCH: 0,
    E_SIGNATURE_REPLAY: 0,
    E_MESSAGE_FORMAT: 0,
  }
  readonly #requestTimeoutMs: number
  readonly #specs: readonly ChannelSpec[]
  readonly #curveKeys: Curve | undefined
  readonly #addresses = new Map<string, string>()
  #closed = false
  #closing: Promise<void> | undefined

  /** @internal Use {@link connect}. */
  constructor(
    kind: K,
    info: ConnectionInfo,
    tunnel: Tunnel | undefined,
    options: { where: string; requestTimeoutMs: number; curve: Curve | undefined },
  ) {
    super()
    this.kind = kind
    this.info = info
    this.tunnel = tunnel
    this.where = options.where
    this.#requestTimeoutMs = options.requestTimeoutMs
    this.#curveKeys = options.curve
    this.curve = options.curve !== undefined
    if (info.kind === 'ipp-engine') throw new Error('unreachable: engine files are refused by connect()')
    this.session = new Session({ key: info.key, signatureScheme: info.signature_scheme })
    this.#specs = kind === 'ipp-client' ? IPP_CHANNELS : KERNEL_CHANNELS
  }

  /** True once {@link Connection.close} was called. */
  get closed(): boolean {
    return this.#closed
  }

  /** The channels this connection has. */
  get channels(): ChannelOf<K>[] {
    return this.#specs.map((s) => s.channel as ChannelOf<K>)
  }

  /** @internal Creates and connects every socket and waits for each handshake. */
  async open(handshakeTimeoutMs: number): Promise<void> {
    const ports = new Map(endpoints(this.info).map((e) => [e.channel, e]))
    const waits: Promise<void>[] = []
    for (const spec of this.#specs) {
      const endpoint = ports.get(spec.endpoint)
      if (endpoint === undefined) {
        throw new IppTunnelError(
          'E_CONNFILE_FIELD',
          `${this.where}: no "${spec.endpoint}" port in the connection file`,
        )
      }
      const address = endpointUrl(endpoint)
      const socket = makeSocket(spec.socket, this.session.session, this.#curveKeys)
      this.#sockets.set(spec.channel, socket)
      this.#addresses.set(spec.channel, address)
      if (spec.socket === 'sub') (socket as zmq.Subscriber).subscribe()
      waits.push(handshake(socket, spec, address, this.curve, handshakeTimeoutMs, this.where))
      socket.connect(address)
      if (spec.socket !== 'req') {
        if (spec.socket === 'dealer')
          this.#queues.set(spec.channel, new SendQueue(socket as zmq.Dealer, spec.channel))
        void this.#receiveLoop(spec.channel, socket as zmq.Dealer | zmq.Subscriber)
      }
    }
    const results = await Promise.allSettled(waits)
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failed) throw failed.reason
  }

  async #receiveLoop(channel: string, socket: zmq.Dealer | zmq.Subscriber): Promise<void> {
    try {
      for await (const frames of socket) this.#deliver(channel, frames)
    } catch (err) {
      if (!this.#closed) throw err
    }
  }

  #deliver(channel: string, frames: Buffer[]): void {
    let message: Message
    try {
      message = this.session.deserialize(frames)
    } catch (err) {
      if (!isRefusal(err)) throw err
      this.#dropped[err.code]++
      this.#droppedByChannel[channel] = (this.#droppedByChannel[channel] ?? 0) + 1
      this.emit('message:dropped', { channel, code: err.code, reason: err.message })
      return
    }
    this.#received[channel] = (this.#received[channel] ?? 0) + 1
    const parentId = (message.parent_header as { msg_id?: unknown }).msg_id
    if (typeof parentId === 'string') {
      const pending = this.#pending.get(parentId)
      if (pending !== undefined && pending.channel === channel) {
        this.#pending.delete(parentId)
        pending.resolve(message)
        return
      }
    }
    for (const stream of this.#streams.get(channel) ?? []) stream.push(message)
  }

  #queue(channel: string): SendQueue {
    const queue = this.#queues.get(channel)
    if (queue === undefined) {
      if (this.#closed) throw new IppTunnelError('E_CLOSED', `${this.where}: the connection is closed`)
      throw new IppTunnelError(
        'E_USAGE',
        `${this.where}: channel "${channel}" does not send messages (${this.kind})`,
      )
    }
    return queue
  }

  /**
   * Signs and sends `msg` on a Dealer channel; `ident` frames go before `<IDS|MSG>`.
   *
   * @example
   * await conn.send('shell', conn.session.msg('kernel_info_request', {}))
   */
  async send(channel: MessageChannelOf<K>, msg: Message, options: { ident?: RequestOptions['ident'] } = {}) {
    if (this.#closed) throw new IppTunnelError('E_CLOSED', `${this.where}: the connection is closed`)
    await this.#queue(channel).send(this.session.serialize(msg, identsOf(options.ident)))
  }

  /**
   * Sends `msgType` with `content` on `channel` and resolves with the reply whose parent `msg_id` is the
   * request's. Rejects with `E_TIMEOUT` after `timeoutMs`, `E_CLOSED` when the connection closes.
   *
   * @example
   * const reply = await conn.request('mux', 'execute_request', content, { ident: engineUuid })
   */
  request<T extends string>(
    channel: MessageChannelOf<K>,
    msgType: T,
    content: ContentFor<T>,
    options: RequestOptions = {},
  ): Promise<Message> {
    const msg = this.session.msg(msgType, content, {
      ...(options.buffers !== undefined && { buffers: options.buffers }),
      ...(options.metadata !== undefined && { metadata: options.metadata }),
    })
    return this.requestMessage(channel, msg, options)
  }

  /**
   * Like {@link Connection.request} for a message made beforehand (so its `msg_id` is known before the reply,
   * e.g. to follow its output on iopub).
   *
   * @example
   * const msg = conn.session.msg('execute_request', content)
   * const reply = await conn.requestMessage('shell', msg)
   */
  requestMessage(
    channel: MessageChannelOf<K>,
    msg: Message,
    options: Pick<RequestOptions, 'ident' | 'timeoutMs' | 'signal'> = {},
  ): Promise<Message> {
    if (this.#closed)
      return Promise.reject(new IppTunnelError('E_CLOSED', `${this.where}: the connection is closed`))
    const msgId = msg.header.msg_id
    const timeoutMs = options.timeoutMs ?? this.#requestTimeoutMs
    const { signal } = options
    return new Promise<Message>((resolve, reject) => {
      const cleanup = () => {
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        this.#pending.delete(msgId)
      }
      const timer = setTimeout(() => {
        cleanup()
        reject(
          new IppTunnelError(
            'E_TIMEOUT',
            `${this.where}: no reply to ${msg.header.msg_type} on channel "${channel}" within ${timeoutMs} ms: the key or the controller may not match this file`,
          ),
        )
      }, timeoutMs)
      const onAbort = () => {
        cleanup()
        reject(signal?.reason instanceof Error ? signal.reason : new Error('aborted'))
      }
      if (signal?.aborted) {
        onAbort()
        return
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      this.#pending.set(msgId, {
        channel,
        msgType: msg.header.msg_type,
        resolve: (reply) => {
          cleanup()
          resolve(reply)
        },
        reject: (err) => {
          cleanup()
          reject(err)
        },
      })
      this.send(channel, msg, options.ident === undefined ? {} : { ident: options.ident }).catch(
        (err: unknown) => {
          this.#pending.get(msgId)?.reject(err instanceof Error ? err : new Error(String(err)))
        },
      )
    })
  }

  /**
   * The verified messages arriving on `channel` from now on (replies claimed by a pending
   * {@link Connection.request} excepted), until the connection closes, the loop breaks, or `signal` aborts.
   *
   * @example
   * for await (const m of conn.messages('iopub')) if (isStream(m)) process.stdout.write(m.content.text)
   */
  messages(
    channel: MessageChannelOf<K>,
    options: { signal?: AbortSignal } = {},
  ): AsyncIterableIterator<Message> {
    let set = this.#streams.get(channel)
    if (set === undefined) {
      set = new Set()
      this.#streams.set(channel, set)
    }
    const streams = set
    const { signal } = options
    const onAbort = () => stream.end()
    const stream: MessageStream<Message> = new MessageStream(() => {
      streams.delete(stream)
      signal?.removeEventListener('abort', onAbort)
    })
    if (this.#closed || signal?.aborted) {
      stream.end()
      return stream
    }
    streams.add(stream)
    signal?.addEventListener('abort', onAbort, { once: true })
    return stream
  }

  /**
   * Kernel heartbeat: sends a ping on `hb` and resolves with the round trip in ms; `E_TIMEOUT` when no echo.
   *
   * @example
   * if (conn.kind === 'kernel') console.log(await conn.heartbeat(), 'ms')
   */
  async heartbeat(timeoutMs = 5000): Promise<number> {
    const socket = this.#sockets.get('hb')
    if (!(socket instanceof zmq.Request)) {
      throw new IppTunnelError('E_USAGE', `${this.where}: ${this.kind} connections have no heartbeat channel`)
    }
    if (this.#closed) throw new IppTunnelError('E_CLOSED', `${this.where}: the connection is closed`)
    const ping = Buffer.from(this.session.header('ping').msg_id, 'ascii')
    const started = performance.now()
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new IppTunnelError(
              'E_TIMEOUT',
              `${this.where}: no heartbeat echo within ${timeoutMs} ms; the kernel is not responding`,
            ),
          ),
        timeoutMs,
      )
    })
    try {
      await Promise.race([socket.send(ping), timeout])
      for (;;) {
        const [echo] = await Promise.race([socket.receive(), timeout])
        if (echo?.equals(ping)) return performance.now() - started
      }
    } catch (err) {
      // A REQ socket with a receive in flight cannot be reused: replace it, as jupyter_client's HBChannel does.
      if (!this.closed) this.#replaceHeartbeat(socket)
      throw err
    } finally {
      clearTimeout(timer)
    }
  }

  #replaceHeartbeat(old: zmq.Request): void {
    old.close()
    const fresh = makeSocket('req', this.session.session, this.#curveKeys)
    fresh.connect(this.#addresses.get('hb') ?? '')
    this.#sockets.set('hb', fresh)
  }

  /**
   * The raw zeromq socket of a channel, for what this class does not cover. Do not `send()` on Dealers
   * directly while the connection sends too: go through {@link Connection.send}.
   *
   * @example
   * const iopub = conn.socket('iopub') as zmq.Subscriber
   */
  socket(channel: ChannelOf<K>): AnySocket {
    const socket = this.#sockets.get(channel)
    if (socket === undefined) throw new IppTunnelError('E_CLOSED', `${this.where}: the connection is closed`)
    return socket
  }

  /** Counters of sent, received and dropped messages. */
  stats(): ConnectionStats {
    const sent: Record<string, number> = {}
    for (const [channel, queue] of this.#queues) sent[channel] = queue.sent
    return {
      sent,
      received: { ...this.#received },
      dropped: { ...this.#dropped },
      droppedByChannel: { ...this.#droppedByChannel },
    }
  }

  /** Closes every socket (linger 0), fails pending requests with `E_CLOSED`, ends streams, closes the tunnel. */
  close(): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close(): Promise<void> {
    this.#closed = true
    const closedError = new IppTunnelError('E_CLOSED', `${this.where}: the connection was closed`)
    for (const pending of [...this.#pending.values()]) pending.reject(closedError)
    for (const set of this.#streams.values()) for (const stream of [...set]) stream.end()
    for (const queue of this.#queues.values()) queue.close()
    for (const socket of this.#sockets.values()) socket.close()
    this.#sockets.clear()
    this.#queues.clear()
    try {
      await this.tunnel?.close()
    } finally {
      this.emit('closed')
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}

/** A connection to either kind of peer; narrow on `kind`. */
export type AnyConnection = Connection<'ipp-client'> | Connection<'kernel'>

/**
 * Connects to the peer a connection file describes: through an ssh tunnel when the file names an ssh
 * server (or `options.ssh` does), else directly. Resolves once every socket completed its handshake.
 *
 * Throws `IppTunnelError`: `E_CONNFILE_*` for a bad file, `E_CONNFILE_KIND` for an engine file, ssh errors
 * from the tunnel, `E_CURVE` when the Curve handshake fails, `E_CONNECT` when a channel does not answer.
 *
 * @example
 * await using conn = await connect('~/.ipython/profile_default/security/ipcontroller-client.json')
 * console.log(conn.kind, conn.channels)
 */
export async function connect(
  source: string | ConnectionInfo,
  options: ConnectOptions = {},
): Promise<AnyConnection> {
  const file = typeof source === 'string' ? source : undefined
  const info = typeof source === 'string' ? (await readConnectionFile(source)).info : source
  const where = file ?? (info.kind === 'kernel' ? 'kernel connection info' : 'ipyparallel connection info')
  if (info.kind === 'ipp-engine') {
    throw new IppTunnelError(
      'E_CONNFILE_KIND',
      `${where}: this is an engine connection file; clients connect with ipcontroller-client.json`,
    )
  }
  const { handshakeTimeoutMs, requestTimeoutMs, ...tunnelOptions } = options
  const destination = options.ssh ?? destinationOf(info)
  let tunnel: Tunnel | undefined
  if (destination !== undefined) tunnel = await openTunnel(info, { ...tunnelOptions, ssh: destination })
  else await refuseUnreachable(info, where)
  const target = tunnel?.loopback ?? info
  if (target.kind === 'ipp-engine') throw new Error('unreachable: a tunnel keeps the file kind')
  const connectionOptions = {
    where,
    requestTimeoutMs: requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
    curve: curveOf(target),
  }
  const connection: AnyConnection =
    target.kind === 'kernel'
      ? new Connection('kernel', target, tunnel, connectionOptions)
      : new Connection('ipp-client', target, tunnel, connectionOptions)
  try {
    await connection.open(handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS)
  } catch (err) {
    await connection.close()
    throw err
  }
  return connection
}
