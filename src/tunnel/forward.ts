import { createServer, type Server, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'

import type { Endpoint } from '../connection-file/index.js'

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
  /** Connections that could not be carried (link down, remote refused). */
  readonly failed: number
}

/**
 * One loopback listener whose connections are carried to one remote endpoint.
 * The listener keeps its port for its whole life; the remote end can be changed with {@link Forward.retarget}.
 */
export class Forward {
  readonly channel: string
  readonly localPort: number
  #remote: Endpoint
  readonly #server: Server
  readonly #openRemote: OpenRemote
  readonly #onError: (channel: string, err: unknown) => void
  readonly #sockets = new Set<Socket>()
  #accepted = 0
  #failed = 0
  #closedBytesIn = 0
  #closedBytesOut = 0
  #closed = false

  private constructor(
    channel: string,
    remote: Endpoint,
    server: Server,
    openRemote: OpenRemote,
    onError: (channel: string, err: unknown) => void,
  ) {
    this.channel = channel
    this.#remote = remote
    this.#server = server
    this.#openRemote = openRemote
    this.#onError = onError
    const address = server.address()
    if (address === null || typeof address === 'string') throw new Error('listener has no TCP address')
    this.localPort = address.port
    server.on('connection', (socket) => this.#carry(socket))
  }

  /** Listens on 127.0.0.1 on a port the kernel picks, and carries each connection to `remote`. */
  static async listen(
    remote: Endpoint,
    openRemote: OpenRemote,
    onError: (channel: string, err: unknown) => void,
    localPort = 0,
  ): Promise<Forward> {
    const server = createServer({ pauseOnConnect: true, noDelay: true })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen({ host: '127.0.0.1', port: localPort, exclusive: true }, () => {
        server.off('error', reject)
        resolve()
      })
    })
    return new Forward(remote.channel, remote, server, openRemote, onError)
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

  #carry(socket: Socket): void {
    this.#accepted++
    this.#sockets.add(socket)
    socket.on('error', () => socket.destroy())
    socket.once('close', () => {
      this.#sockets.delete(socket)
      this.#closedBytesIn += socket.bytesWritten
      this.#closedBytesOut += socket.bytesRead
    })
    const { host, port } = this.#remote
    this.#openRemote(host, port).then(
      (stream) => {
        if (socket.destroyed) {
          stream.destroy()
          return
        }
        stream.on('error', () => socket.destroy())
        stream.once('close', () => socket.destroy())
        socket.once('close', () => stream.destroy())
        socket.pipe(stream)
        stream.pipe(socket)
        socket.resume()
      },
      (err: unknown) => {
        this.#failed++
        socket.destroy()
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
