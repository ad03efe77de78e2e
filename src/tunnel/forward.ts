import { chmod, link, lstat, unlink } from 'node:fs/promises'
import { createServer, type Server, type Socket } from 'node:net'
import type { Duplex, Readable, Writable } from 'node:stream'

import type { Endpoint } from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'
import { currentUid, kindOf } from '../safe-fs/index.js'
import { ChannelBudget } from './budget.js'
import { noteCarried } from './heap-release.js'

/** Opens a stream to an endpoint as seen from the ssh server (a Link does this over SSH). */
export type OpenRemote = (remote: Endpoint) => Promise<Duplex>

/**
 * Where a forward listens: a TCP port on 127.0.0.1, or a unix socket (mode 0600) at `path`; `port` is the number
 * the loopback file gives the channel (for a unix socket, the suffix of its path).
 */
export type LocalAddress =
  | { readonly kind: 'tcp'; readonly host: '127.0.0.1'; readonly port: number }
  | { readonly kind: 'unix'; readonly path: string; readonly port: number }

/**
 * What to listen on: a TCP port (0: the kernel picks), or a unix socket path with the channel's number, and other
 * names (hard links) the same socket answers at.
 */
export type ListenOn =
  | number
  | {
      readonly kind: 'unix'
      readonly path: string
      readonly port: number
      readonly aliases?: readonly string[]
    }

/** `127.0.0.1:port` or the socket path, for messages and reports. */
export function addressText(address: LocalAddress | Endpoint): string {
  return address.kind === 'unix' ? address.path : `${address.host}:${address.port}`
}

function sameEndpoint(a: Endpoint, b: Endpoint): boolean {
  if (a.kind === 'unix') return b.kind === 'unix' && a.path === b.path
  if (b.kind === 'unix') return false
  return a.host === b.host && a.port === b.port
}

/**
 * Clears the way for a unix listener at `path`: a socket of ours left there (a run that was killed) is removed;
 * anything else — another user's socket, a file, a symlink — is refused. lstat, so a symlink is never followed.
 */
async function removeStaleSocket(path: string): Promise<void> {
  let s
  try {
    s = await lstat(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
    throw err
  }
  const uid = currentUid()
  if (!s.isSocket() || s.uid !== uid) {
    const what = s.isSocket() ? `a socket owned by uid ${s.uid}, not you (${uid})` : kindOf(s)
    throw new IppTunnelError(
      'E_UNSAFE_PATH',
      `${path}: is ${what}, not a socket of ours; remove it and try again`,
    )
  }
  await unlink(path)
}

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

/** The cause of a refusal for local load (the connection budget), told apart from a peer that went away. */
const OVER_BUDGET = new Error('the connection budget is spent')

/** True for a forward error that is local load (too many connections at once), not a failure of the far end. */
export function isOverBudget(err: unknown): boolean {
  return err instanceof Error && err.cause === OVER_BUDGET
}

function isFdExhaustion(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code
  return code === 'EMFILE' || code === 'ENFILE'
}

/** Bytes written on and not yet taken by the other side, per direction of a connection, before reading pauses. */
export const PUMP_LIMIT = 256 * 1024

/**
 * Copies `from` into `to` as pipe() does (ending `to` at `from`'s end), but pauses `from` once {@link PUMP_LIMIT}
 * bytes wait for their write callbacks, rather than at `to`'s highWaterMark: an ssh2 channel's is 2 MiB, which
 * let each streaming connection hold megabytes.
 */
function pump(from: Readable, to: Writable): void {
  let pending = 0
  let paused = false
  const written = (bytes: number) => (): void => {
    pending -= bytes
    if (paused && pending < PUMP_LIMIT) {
      paused = false
      from.resume()
    }
  }
  from.on('data', (chunk: Buffer) => {
    pending += chunk.length
    noteCarried(chunk.length)
    to.write(chunk, written(chunk.length))
    if (pending >= PUMP_LIMIT && !paused) {
      paused = true
      from.pause()
    }
  })
  from.once('end', () => to.end())
  from.resume()
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
  /** The TCP port, or for a unix listener the number the loopback file gives the channel. */
  readonly localPort: number
  readonly local: LocalAddress
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
  readonly #aliases: readonly string[]
  /** Set while connections are being refused, so that a flood gives one report, not one per connection. */
  #refusing = false

  private constructor(
    channel: string,
    remote: Endpoint,
    server: Server,
    openRemote: OpenRemote,
    onError: (channel: string, err: unknown) => void,
    budget: ChannelBudget,
    unix: { readonly path: string; readonly port: number; readonly aliases: readonly string[] } | undefined,
  ) {
    this.#aliases = unix?.aliases ?? []
    this.channel = channel
    this.#remote = remote
    this.#server = server
    this.#openRemote = openRemote
    this.#onError = onError
    this.#budget = budget
    if (unix !== undefined) {
      this.local = { kind: 'unix', path: unix.path, port: unix.port }
    } else {
      const address = server.address()
      if (address === null || typeof address === 'string') throw new Error('listener has no TCP address')
      this.local = { kind: 'tcp', host: '127.0.0.1', port: address.port }
    }
    this.localPort = this.local.port
    const where = addressText(this.local)
    server.on('connection', (socket) => this.#carry(socket))
    // accept() failing (EMFILE, ENFILE) is reported; the listener stays up and libuv sheds the connection
    server.on('error', (err) => {
      this.#failed++
      this.#report(
        new IppTunnelError(
          'E_FORWARD',
          isFdExhaustion(err)
            ? `cannot accept on ${where}: out of file descriptors (${(err as NodeJS.ErrnoException).code ?? ''}); the connection was dropped`
            : `cannot accept on ${where}: ${err.message}`,
          { cause: err },
        ),
      )
    })
  }

  /**
   * Listens on 127.0.0.1 on a port the kernel picks (or `on`, a port or a unix socket), and carries each
   * connection to `remote`. A unix socket gets mode 0600; a stale socket of ours at its path is removed first.
   * `budget` bounds the connections carried at once (default: no bound).
   */
  static async listen(
    remote: Endpoint,
    openRemote: OpenRemote,
    onError: (channel: string, err: unknown) => void,
    on: ListenOn = 0,
    budget: ChannelBudget = new ChannelBudget(Infinity),
  ): Promise<Forward> {
    const unix = typeof on === 'number' ? undefined : on
    const where = unix === undefined ? '127.0.0.1' : unix.path
    const aliases = unix?.aliases ?? []
    if (unix !== undefined) for (const path of [unix.path, ...aliases]) await removeStaleSocket(path)
    const server = createServer({ pauseOnConnect: true, noDelay: true, allowHalfOpen: true })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      const options =
        unix === undefined
          ? { host: '127.0.0.1', port: on as number, exclusive: true }
          : { path: unix.path, exclusive: true }
      server.listen(options, () => {
        server.off('error', reject)
        resolve()
      })
    })
      .then(async () => {
        // the directory (0700) is what keeps others out; the mode is a second fence
        if (unix !== undefined) await chmod(unix.path, 0o600)
        for (const alias of aliases) await link(unix?.path ?? '', alias)
      })
      .catch((err: unknown) => {
        server.close()
        if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') {
          throw new IppTunnelError(
            'E_FORWARD',
            `channel "${remote.channel}": cannot listen on ${typeof on === 'number' ? `${where}:${on}` : where}: in use by another program`,
            { cause: err },
          )
        }
        if (!isFdExhaustion(err)) throw err
        throw new IppTunnelError(
          'E_FORWARD',
          `channel "${remote.channel}": cannot listen on ${where}: out of file descriptors (${(err as NodeJS.ErrnoException).code ?? ''})`,
          { cause: err },
        )
      })
    return new Forward(
      remote.channel,
      remote,
      server,
      openRemote,
      onError,
      budget,
      unix && { ...unix, aliases },
    )
  }

  get remote(): Endpoint {
    return this.#remote
  }

  get closed(): boolean {
    return this.#closed
  }

  /** Points new connections at another remote endpoint (a restarted controller); open ones are closed. */
  retarget(remote: Endpoint): void {
    if (sameEndpoint(remote, this.#remote)) return
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
          { cause: OVER_BUDGET },
        ),
      )
      refuse(socket)
      return
    }
    socket.once('close', () => this.#budget.give())
    this.#openRemote(this.#remote).then(
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
        // EOF travels each way and the streams stay half-open
        pump(socket, stream)
        pump(stream, socket)
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
    for (const alias of this.#aliases) await removeStaleSocket(alias).catch(() => undefined)
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}
