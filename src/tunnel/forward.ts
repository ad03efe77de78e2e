import { createServer, type Server, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'

import type { Endpoint } from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'
import { ChannelBudget } from './budget.js'

/** Opens a stream to a host and port as seen from the ssh server (a Link does this over SSH). */
export type OpenRemote = (host: string, port: number) => Promise<Duplex>

/** Counters of one forward; bytes are counted at the loopback side. */
export interface ForwardStats {
  /** Connections open now. */
  readonly open: number
  /** Connections accepted since the forward started. */
  readonly accepted: number
  /** Bytes from local clients towards the remote endpoint. */
  readonly bytesOut: number
  /** Bytes from the remote endpoint towards local clients. */
  readonly bytesIn: number
  /** Connections that could not be carried (link down, remote refused, too many open). */
  readonly failed: number
}

/** How long a refused connection may stay half-closed (our FIN sent) waiting for the client's. */
const REFUSE_LINGER_MS = 2000

/**
 * Closes a connection that cannot be carried with a FIN, not a RST: what the client sent is read and dropped
 * (unread data at close() makes the kernel send RST), our side is ended, and the socket is destroyed when the
 * client closes too, or after a short linger.
 */
function refuse(socket: Socket): void {
  if (socket.destroyed) return
  const timer = setTimeout(() => socket.destroy(), REFUSE_LINGER_MS)
  timer.unref()
  socket.once('close', () => clearTimeout(timer))
  socket.on('data', () => undefined)
  socket.resume()
  socket.end()
}

function isFdExhaustion(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code
  return code === 'EMFILE' || code === 'ENFILE'
}

/**
 * One loopback listener whose connections are carried to one remote endpoint.
 * The listener keeps its port for its whole life; the remote end can be changed with {@link Forward.retarget}.
 *
 * Streams are half-open, as with `ssh -L`: a client that shuts down its write side still gets the reply; the
 * EOF travels as CHANNEL_EOF, and the server's EOF as a FIN. Connections beyond `budget` are refused cleanly.
 */
export class Forward {
  readonly channel: string
  readonly localPort: number
  #remote: Endpoint
  readonly #server: Server
  readonly #openRemote: OpenRemote
  readonly #onError: (channel: string, err: unknown) => void
  readonly #budget: ChannelBudget
  readonly #sockets = new Set<Socket>()
  #accepted = 0
  #failed = 0
  #closedBytesIn = 0
  #closedBytesOut = 0
  #closed = false
  /** Set while connections are being refused, so that a flood gives one report, not one per connection. */
  #refusing = false

  private constructor(
    channel: string,
    remote: Endpoint,
    server: Server,
    openRemote: OpenRemote,
    onError: (channel: string, err: unknown) => void,
    budget: ChannelBudget,
  ) {
    this.channel = channel
    this.#remote = remote
    this.#server = server
    this.#openRemote = openRemote
    this.#onError = onError
    this.#budget = budget
    const address = server.address()
    if (address === null || typeof address === 'string') throw new Error('listener has no TCP address')
    this.localPort = address.port
    server.on('connection', (socket) => this.#carry(socket))
    // accept() failing (EMFILE, ENFILE) is reported; the listener stays up and libuv sheds the connection
    server.on('error', (err) => {
      this.#failed++
      this.#report(
        new IppTunnelError(
          'E_FORWARD',
          isFdExhaustion(err)
            ? `cannot accept on 127.0.0.1:${this.localPort}: out of file descriptors (${(err as NodeJS.ErrnoException).code ?? ''}); the connection was dropped`
            : `cannot accept on 127.0.0.1:${this.localPort}: ${err.message}`,
          { cause: err },
        ),
      )
    })
  }

  /**
   * Listens on 127.0.0.1 on a port the kernel picks, and carries each connection to `remote`.
   * `budget` bounds the connections carried at once (default: no bound).
   */
  static async listen(
    remote: Endpoint,
    openRemote: OpenRemote,
    onError: (channel: string, err: unknown) => void,
    localPort = 0,
    budget: ChannelBudget = new ChannelBudget(Infinity),
  ): Promise<Forward> {
    const server = createServer({ pauseOnConnect: true, noDelay: true, allowHalfOpen: true })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen({ host: '127.0.0.1', port: localPort, exclusive: true }, () => {
        server.off('error', reject)
        resolve()
      })
    }).catch((err: unknown) => {
      server.close()
      if (!isFdExhaustion(err)) throw err
      throw new IppTunnelError(
        'E_FORWARD',
        `channel "${remote.channel}": cannot listen on 127.0.0.1: out of file descriptors (${(err as NodeJS.ErrnoException).code ?? ''})`,
        { cause: err },
      )
    })
    return new Forward(remote.channel, remote, server, openRemote, onError, budget)
  }

  get remote(): Endpoint {
    return this.#remote
  }

  get closed(): boolean {
    return this.#closed
  }

  /** Points new connections at another remote endpoint (a restarted controller); open ones are closed. */
  retarget(remote: Endpoint): void {
    if (remote.host === this.#remote.host && remote.port === this.#remote.port) return
    this.#remote = remote
    for (const socket of this.#sockets) socket.destroy()
  }

  stats(): ForwardStats {
    let bytesIn = this.#closedBytesIn
    let bytesOut = this.#closedBytesOut
    for (const s of this.#sockets) {
      bytesIn += s.bytesWritten
      bytesOut += s.bytesRead
    }
    return { open: this.#sockets.size, accepted: this.#accepted, bytesIn, bytesOut, failed: this.#failed }
  }

  #report(err: IppTunnelError): void {
    if (this.#refusing || this.#closed) return
    this.#refusing = true
    this.#onError(this.channel, err)
  }

  #carry(socket: Socket): void {
    this.#accepted++
    if (this.#closed) {
      socket.destroy()
      return
    }
    this.#sockets.add(socket)
    socket.on('error', () => socket.destroy())
    socket.once('close', () => {
      this.#sockets.delete(socket)
      this.#closedBytesIn += socket.bytesWritten
      this.#closedBytesOut += socket.bytesRead
    })
    if (!this.#budget.take()) {
      this.#failed++
      this.#report(
        new IppTunnelError(
          'E_FORWARD',
          `too many connections open at once (limit ${this.#budget.describe()}); new ones are refused until some close`,
        ),
      )
      refuse(socket)
      return
    }
    socket.once('close', () => this.#budget.give())
    const { host, port } = this.#remote
    this.#openRemote(host, port).then(
      (stream) => {
        if (socket.destroyed) {
          stream.destroy()
          return
        }
        this.#refusing = false
        stream.on('error', () => socket.destroy())
        // the channel is gone: deliver what it sent, then close (what the client still sends has nowhere to go)
        stream.once('close', () => {
          if (socket.writableFinished) socket.destroy()
          else socket.end(() => socket.destroy())
        })
        socket.once('close', () => stream.destroy())
        // pipe() ends the other side on 'end': EOF travels each way and the streams stay half-open
        socket.pipe(stream)
        stream.pipe(socket)
        socket.resume()
      },
      (err: unknown) => {
        this.#failed++
        refuse(socket)
        if (!this.#closed) this.#onError(this.channel, err)
      },
    )
  }

  /** Stops listening and closes every connection. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    for (const socket of this.#sockets) socket.destroy()
    await new Promise<void>((resolve) => this.#server.close(() => resolve()))
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}
