import { EventEmitter } from 'node:events'
import { Duplex } from 'node:stream'
import type { ClientChannel, SFTPWrapper } from 'ssh2'
import { IppTunnelError, isIppTunnelError } from '../../errors/index.js'
import type { HostKeyNote } from '../host-keys/index.js'
import { HopAuth } from '../login/index.js'
import type { ResolvedHop, ResolvedTarget } from '../types.js'
import { endChain, type Chain, type ChainContext } from './chain.js'
import {
  describe,
  forwardError,
  label,
  openChannel,
  openFailure,
  openSftp,
  remoteSocketExists,
  trackChannel,
  type ChannelTarget,
  type Ssh2Error,
} from './channels.js'
import { execOnClient, type RemoteCommand } from './exec.js'
import { plainAddress } from './network-watch.js'
import { OpenSshMaster } from './openssh-master.js'
import type { LinkEvents, LinkOptions, LinkState, LinkStats } from './options.js'
import { Recovery, watchAfterChanges } from './recovery.js'
import { gateOnTransport, poolPadding } from './ssh2-socket.js'
import { Waiters } from './waiters.js'

function closedError(): IppTunnelError {
  return new IppTunnelError('E_CLOSED', 'The SSH link was closed')
}

/**
 * One SSH connection to a destination (through its jump hosts), shared by many forwards, kept alive and
 * reconnected with capped exponential backoff. Host keys of every hop are checked against known_hosts;
 * host-key and authentication failures are fatal (state `failed`), dropped connections are retried.
 *
 * @example
 * const link = new Link(await resolveTarget('user@cluster', {}), { hostKeyCheck: 'strict' })
 * link.on('reconnecting', ({ attempt, delayMs }) => console.error(`reconnecting #${attempt} in ${delayMs} ms`))
 * await link.connect()
 * const stream = await link.forwardOut('127.0.0.1', 55123)
 * socket.pipe(stream).pipe(socket)
 * await link.close()
 */
export class Link extends EventEmitter<LinkEvents> {
  readonly target: ResolvedTarget
  readonly #options: LinkOptions
  /** What {@link openChain} needs of this link: its hops' logins, where host-key notes and ProxyCommand words go. */
  readonly #chainContext: ChainContext
  #state: LinkState = 'idle'
  #chain: Chain | undefined
  /** The user's OpenSSH master carrying the forwards instead of #chain. */
  #master: OpenSshMaster | undefined
  #failure: IppTunnelError | undefined
  #connecting: Promise<void> | undefined
  readonly #waiters = new Waiters()
  /** Opens every connection and gets one back after a drop. */
  readonly #recovery: Recovery
  #channels = new Set<ClientChannel>()
  #abort = new AbortController()
  #closing: Promise<void> | undefined
  readonly #hostKeyNotes = new Set<string>()
  /** The SFTP session of the live connection, opened on first use; a new connection gets a new one. */
  #sftp: { readonly chain: Chain; readonly session: Promise<SFTPWrapper> } | undefined

  constructor(target: ResolvedTarget, options: LinkOptions = {}) {
    super()
    if (target.hops.length === 0) throw new IppTunnelError('E_DESTINATION', 'The SSH route has no hops')
    this.target = target
    this.#options = options
    const authOptions = {
      ...(options.agent !== undefined ? { agent: options.agent } : {}),
      ...(options.passphrase !== undefined ? { passphrase: options.passphrase } : {}),
      ...(options.prompt !== undefined ? { prompt: options.prompt } : {}),
      ...(options.verbose !== undefined ? { verbose: options.verbose } : {}),
      ...(options.env !== undefined ? { env: options.env } : {}),
      ...(options.credential !== undefined ? { credential: options.credential } : {}),
      destination: this.destination,
    }
    this.#chainContext = {
      target,
      destination: this.destination,
      options,
      auth: target.hops.map((hop) => new HopAuth(hop, authOptions)),
      noteHostKey: (note) => this.#noteHostKey(note),
      proxyStderr: (hop, text) => this.emit('proxy-stderr', { hop, text }),
    }
    this.#recovery = new Recovery({
      destination: this.destination,
      lastHop: this.#lastHop,
      options,
      chainContext: this.#chainContext,
      closing: this.#abort.signal,
      state: () => this.#state,
      setState: (state) => this.#setState(state),
      adopt: (chain) => this.#adopt(chain),
      fail: (error) => this.#fail(error),
      asError: (err) => this.#asError(err),
      reconnecting: (info) => this.emit('reconnecting', info),
      reconnected: (info) => this.emit('reconnected', info),
    })
  }

  /** The current state. */
  get state(): LinkState {
    return this.#state
  }

  /** True once `close()` was called. */
  get closed(): boolean {
    return this.#state === 'closed'
  }

  /** The fatal error when the state is `failed`. */
  get error(): IppTunnelError | undefined {
    return this.#failure
  }

  get stats(): LinkStats {
    return {
      reconnects: this.#recovery.reconnects,
      channelsOpen: this.#channels.size + (this.#master?.streamsOpen ?? 0),
    }
  }

  /** The address reconnects go to, with `pinAddress`, once the first connection reached one. */
  get pinnedAddress(): string | undefined {
    return this.#chainContext.pinnedAddress
  }

  /** What carries the forwards now: our own SSH connection, or the user's OpenSSH master (ControlPath). */
  get transport(): 'ssh2' | 'openssh' {
    return this.#master === undefined ? 'ssh2' : 'openssh'
  }

  /** `user@host:port` of the server that forwards. */
  get destination(): string {
    return label(this.#lastHop)
  }

  get #lastHop(): ResolvedHop {
    const hop = this.target.hops.at(-1)
    if (hop === undefined) throw new Error('unreachable: no hops')
    return hop
  }

  /**
   * Opens the first connection. Rejects with the mapped error (E_CONNECT, E_HOSTKEY_*, E_AUTH, …) and
   * leaves the link `failed`; the caller decides whether to try again (calling `connect()` again is allowed).
   */
  connect(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.#state === 'closed') return Promise.reject(closedError())
    if (this.#state === 'up') return Promise.resolve()
    if (this.#connecting !== undefined) return this.#connecting
    this.#failure = undefined
    this.#setState('connecting')
    const signal = options.signal ? AbortSignal.any([options.signal, this.#abort.signal]) : this.#abort.signal
    this.#connecting = this.#recovery.open(signal).then(
      (chain) => {
        this.#connecting = undefined
        if (
          this.#options.pinAddress === true &&
          !(chain instanceof OpenSshMaster) &&
          chain.address !== undefined
        ) {
          this.#chainContext.pinnedAddress ??= chain.address
          this.#options.verbose?.(`${this.destination}: reconnects go to ${chain.address} (pinned)`)
        }
        this.#adopt(chain)
      },
      (err: unknown) => {
        this.#connecting = undefined
        if (options.signal?.aborted === true && this.#state === 'connecting') {
          this.#setState('idle')
          throw options.signal.reason
        }
        const error = this.#asError(err)
        if (this.#state !== 'closed') this.#fail(error)
        throw error
      },
    )
    return this.#connecting
  }

  /**
   * Opens a `direct-tcpip` channel to `host:port` as seen from the destination server. While the link is
   * (re)connecting it waits up to `waitForLinkMs`, then rejects `E_LINK_DOWN`. A refusal by the server
   * rejects `E_FORWARD_DENIED` (AllowTcpForwarding) or `E_FORWARD` (nothing listens there).
   */
  async forwardOut(host: string, port: number, options: { signal?: AbortSignal } = {}): Promise<Duplex> {
    return this.#forward({ kind: 'tcp', host, port }, options.signal)
  }

  /**
   * Opens a `direct-streamlocal@openssh.com` channel to the unix socket `path` on the destination server, as
   * `ssh -L local:/remote/path` does; waits for the link as {@link Link.forwardOut} does. A refusal rejects
   * `E_FORWARD_DENIED` (AllowStreamLocalForwarding) or `E_FORWARD` (nothing listens at `path`).
   */
  async forwardOutUnix(path: string, options: { signal?: AbortSignal } = {}): Promise<Duplex> {
    return this.#forward({ kind: 'unix', path }, options.signal)
  }

  async #forward(target: ChannelTarget, callerSignal: AbortSignal | undefined): Promise<Duplex> {
    // a signal of its own per call: many concurrent calls must not pile listeners onto the caller's signal
    const signal = callerSignal && AbortSignal.any([callerSignal])
    for (let tries = 0; ; tries++) {
      await this.#waitUp(signal)
      const master = this.#master
      if (master !== undefined) {
        if (target.kind !== 'tcp') {
          throw new IppTunnelError(
            'E_FORWARD',
            `Cannot forward to the unix socket ${target.path} through your OpenSSH master (ssh -W takes host:port): pass --transport ssh2`,
          )
        }
        if (await master.alive()) return master.forwardOut(target.host, target.port)
        if (this.#master === master) this.#masterGone(master)
        continue
      }
      const chain = this.#chain
      const client = chain?.clients.at(-1)
      if (chain === undefined || client === undefined) continue
      try {
        const stream = await openChannel(client, target, signal)
        gateOnTransport(client, stream)
        poolPadding(client)
        trackChannel(stream, this.#channels)
        return stream
      } catch (err) {
        if (signal?.aborted === true) throw err
        // the link died under the request: wait for the reconnect and try once more
        if (!isIppTunnelError(err) && chain.dead && tries === 0) continue
        // OpenSSH answers "connect failed" both when AllowStreamLocalForwarding forbids it and when nothing is
        // at the path: whether a socket is there tells the two apart
        const socketThere =
          target.kind === 'unix' && (err as Ssh2Error).reason === openFailure.connectFailed
            ? await remoteSocketExists(client, target.path)
            : undefined
        throw forwardError(err, this.#lastHop, target, this.#state === 'up', socketThere)
      }
    }
  }

  /**
   * The SFTP session on this link's live connection: opened on first use and shared by every caller; after a
   * reconnect the next call opens a new one (the old one died with its connection). It closes with the link.
   * Waits for a (re)connecting link as `forwardOut` does. A server without the sftp subsystem rejects `E_REMOTE`.
   * `stale`: a session the caller gave up on (it stopped answering); it is ended and a new one opened.
   */
  async sftp(options: { signal?: AbortSignal; stale?: SFTPWrapper } = {}): Promise<SFTPWrapper> {
    await this.#waitUp(options.signal)
    if (this.#master !== undefined) {
      throw new IppTunnelError(
        'E_REMOTE',
        `following files on ${this.destination} needs ipp-tunnel's own SSH connection, and this link goes through your OpenSSH master: pass --transport ssh2`,
      )
    }
    const chain = this.#chain
    const client = chain?.clients.at(-1)
    if (chain === undefined || client === undefined || chain.dead) throw closedError()
    const cached = this.#sftp
    if (cached?.chain === chain) {
      if (options.stale === undefined || (await cached.session.catch(() => undefined)) !== options.stale)
        return cached.session
      if (this.#sftp === cached) this.#sftp = undefined
      options.stale.end()
      return this.sftp({ ...(options.signal !== undefined && { signal: options.signal }) })
    }
    const session: Promise<SFTPWrapper> = openSftp(client, chain, this.destination, () => {
      if (this.#sftp?.session === session) this.#sftp = undefined
    })
    this.#sftp = { chain, session }
    return session
  }

  /**
   * Runs `command` on the destination server, as `ssh host CMD` does (the user's login shell parses it), over this
   * link's connection or the user's OpenSSH master; waits for a (re)connecting link as `forwardOut` does. The
   * command's session ends with the connection: what must outlive a drop is started detached (src/remote).
   */
  async exec(command: string, options: { signal?: AbortSignal } = {}): Promise<RemoteCommand> {
    await this.#waitUp(options.signal)
    const master = this.#master
    if (master !== undefined) return master.exec(command)
    const chain = this.#chain
    const client = chain?.clients.at(-1)
    if (chain === undefined || client === undefined || chain.dead) throw closedError()
    return execOnClient(client, command, this.destination)
  }

  /** Closes every hop and timer; pending `forwardOut` calls reject `E_CLOSED`. Safe to call twice. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#setState('closed')
      this.#abort.abort()
      this.#waiters.rejectAll(closedError())
      const master = this.#master
      this.#master = undefined
      await master?.close()
      const chain = this.#chain
      this.#chain = undefined
      this.#sftp = undefined
      if (chain !== undefined) await endChain(chain)
      this.emit('closed')
    })()
    return this.#closing
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }

  #noteHostKey(note: HostKeyNote): void {
    const id = `${note.type} ${note.name} ${note.fingerprint}`
    if (this.#hostKeyNotes.has(id)) return
    this.#hostKeyNotes.add(id)
    this.#options.onHostKey?.(note)
    this.emit('hostkey', note)
  }

  #setState(state: LinkState): void {
    if (this.#state === state) return
    this.#state = state
    this.emit('state', state)
  }

  #fail(error: IppTunnelError): void {
    this.#failure = error
    this.#setState('failed')
    this.#waiters.rejectAll(error)
    this.emit('failed', { error })
  }

  #asError(err: unknown): IppTunnelError {
    if (this.#state === 'closed') return closedError()
    if (isIppTunnelError(err)) return err
    return new IppTunnelError('E_CONNECT', `Cannot connect to ${this.destination}: ${describe(err)}`, {
      cause: err,
    })
  }

  /** The master went away: `auto` falls back to our own connection (reconnect), `openssh` fails. */
  #masterGone(master: OpenSshMaster): void {
    this.#master = undefined
    void master.close()
    if (this.#state !== 'up') return
    const message = `The OpenSSH master at ${master.path} for ${this.destination} is gone`
    if ((this.#options.transport ?? 'auto') === 'openssh') {
      this.#fail(new IppTunnelError('E_LINK_DOWN', `${message}; log in again (ssh -M) and restart`))
      return
    }
    void this.#recovery.reconnect(new IppTunnelError('E_LINK_DOWN', message))
  }

  /** Makes `chain` (or a master) the live transport and watches it for a drop. */
  #adopt(chain: Chain | OpenSshMaster): void {
    if (chain instanceof OpenSshMaster) {
      if (this.#state === 'closed') {
        void chain.close()
        return
      }
      this.#master = chain
      this.#setState('up')
      this.#waiters.resolveAll()
      return
    }
    if (this.#state === 'closed') {
      void endChain(chain)
      return
    }
    this.#chain = chain
    let lastError: unknown
    const onDown = (): void => {
      if (chain.dead) return
      chain.dead = true
      void endChain(chain)
      // ssh2 neither closes the channels of a connection that died nor lets Channel.destroy() tear down the
      // stream (it only sends CHANNEL_CLOSE), so destroy them as plain Duplexes: their users see the drop.
      for (const stream of this.#channels) Duplex.prototype.destroy.call(stream)
      this.#channels.clear()
      if (this.#chain !== chain || this.#state !== 'up') return
      this.#chain = undefined
      const silent = abandoned || (lastError as Ssh2Error | undefined)?.level === 'client-timeout'
      if (silent && chain.localAddress !== undefined && chain.localPort !== undefined) {
        this.#recovery.stalePeer = { address: plainAddress(chain.localAddress), port: chain.localPort }
      }
      const error = new IppTunnelError(
        'E_LINK_DOWN',
        `SSH link to ${this.destination} lost: ${describe(lastError)}`,
        {
          cause: lastError,
        },
      )
      void this.#recovery.reconnect(error)
    }
    for (const client of chain.clients) {
      client.on('error', (err) => (lastError = err))
      client.once('close', onDown)
    }
    let abandoned = false
    watchAfterChanges(chain, (reason) => {
      this.#options.verbose?.(`${this.destination}: ${reason}; connecting anew`)
      lastError = new Error(reason)
      abandoned = true
    })
    this.#setState('up')
    this.#waiters.resolveAll()
  }

  #waitUp(signal: AbortSignal | undefined): Promise<void> {
    signal?.throwIfAborted()
    switch (this.#state) {
      case 'up':
        return Promise.resolve()
      case 'closed':
        return Promise.reject(closedError())
      case 'failed':
        return Promise.reject(this.#failure ?? closedError())
      case 'idle':
        return Promise.reject(
          new IppTunnelError(
            'E_LINK_DOWN',
            `SSH link to ${this.destination} is not connected: call connect() first`,
          ),
        )
      case 'connecting':
      case 'reconnecting':
        break
    }
    const waitMs = this.#options.waitForLinkMs ?? 10_000
    return this.#waiters.wait(
      signal,
      waitMs,
      () =>
        new IppTunnelError(
          'E_LINK_DOWN',
          `SSH link to ${this.destination} is down (${this.#state}); gave up waiting after ${waitMs} ms`,
        ),
    )
  }
}
