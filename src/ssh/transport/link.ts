import { EventEmitter } from 'node:events'
import { Duplex } from 'node:stream'
import type { Client, ClientChannel, SFTPWrapper } from 'ssh2'
import { IppTunnelError, isIppTunnelError } from '../../errors/index.js'
import { HopAuth } from '../login/index.js'
import { askedSomeone, endChain, openChain, type Chain, type ChainContext } from './chain.js'
import {
  describe,
  forwardError,
  label,
  openChannel,
  openFailure,
  remoteSocketExists,
  type ChannelTarget,
  type Ssh2Error,
} from './channels.js'
import { isNetworkFailure, leftNothing } from './connect-error.js'
import { execOnClient, type RemoteCommand } from './exec.js'
import type { HostKeyNote } from '../host-keys/index.js'
import { OpenSshMaster } from './openssh-master.js'
import type { LinkEvents, LinkOptions, LinkState, LinkStats } from './options.js'
import { plainAddress, sourceFor, watchNetwork, type NetworkEvent } from './network-watch.js'
import { answers, gateOnTransport, poolPadding } from './ssh2-socket.js'
import { endStaleSession, type StalePeer } from './stale-session.js'
import type { ResolvedHop, ResolvedTarget } from '../types.js'

/** How long a connection may stay silent after a resume or a network change before it counts as dead. */
const PROBE_MS = 1500
/** Connection attempts of one link start at least this far apart (sites limit how often one connects). */
const MIN_ATTEMPT_SPACING_MS = 1000
/** The TCP connect of a retry after a network failure (see ChainContext.tcpConnectWithinMs). */
const RETRY_TCP_CONNECT_MS = 3000
/** Retries after a failure of the network, unless a network change or a resume comes first. */
const RETRY_NETWORK_MS = 1000
/** How long a reconnect waits for the server to end the connection it replaces. */
const STALE_SESSION_MS = 3000

/** Host-key, authentication and identity failures stop a link; everything else is retried. */
const fatalCodes: ReadonlySet<string> = new Set([
  'E_HOSTKEY_UNKNOWN',
  'E_HOSTKEY_CA',
  'E_HOSTKEY_MISMATCH',
  'E_HOSTKEY_REVOKED',
  'E_AUTH',
  'E_AUTH_PROMPT',
  'E_PASSPHRASE',
  'E_IDENTITY',
  'E_CERT_EXPIRED',
  'E_CREDENTIAL_COMMAND',
  'E_FORWARD_DENIED',
])

interface Waiter {
  resolve(): void
  reject(err: IppTunnelError): void
}

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
  #waiters = new Set<Waiter>()
  #reconnects = 0
  /** When the last connection attempt started (epoch ms): the next one starts a second later at the soonest. */
  #lastAttemptAt = 0
  /** The connection this side gave up for silence, whose sshd the next connection ends. */
  #stalePeer: StalePeer | undefined
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
      reconnects: this.#reconnects,
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
    this.#connecting = this.#open(signal).then(
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
        this.#track(stream)
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
    const session = new Promise<SFTPWrapper>((resolve, reject) => {
      try {
        client.sftp((err, sftp) => {
          if (err) reject(err)
          else resolve(sftp)
        })
      } catch (err) {
        reject(err instanceof Error ? err : new Error(String(err)))
      }
    }).then(
      (sftp) => {
        sftp.once('close', () => {
          if (this.#sftp?.session === session) this.#sftp = undefined
        })
        return sftp
      },
      (err: unknown) => {
        if (this.#sftp?.session === session) this.#sftp = undefined
        if (isIppTunnelError(err)) throw err
        // the server said no (to the channel or the subsystem); anything else is a connection gone under the request
        const refused =
          !chain.dead &&
          ((err as Ssh2Error).reason !== undefined || /^Unable to start subsystem/.test(describe(err)))
        if (!refused) {
          throw new IppTunnelError(
            'E_LINK_DOWN',
            `SSH link to ${this.destination} went down while an SFTP session was being opened (${describe(err)})`,
            { cause: err },
          )
        }
        throw new IppTunnelError(
          'E_REMOTE',
          `${this.destination} refused an SFTP session (Subsystem sftp in its sshd_config): ${describe(err)}`,
          { cause: err },
        )
      },
    )
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
      for (const w of this.#waiters) w.reject(closedError())
      this.#waiters.clear()
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
    for (const w of this.#waiters) w.reject(error)
    this.#waiters.clear()
    this.emit('failed', { error })
  }

  #asError(err: unknown): IppTunnelError {
    if (this.#state === 'closed') return closedError()
    if (isIppTunnelError(err)) return err
    return new IppTunnelError('E_CONNECT', `Cannot connect to ${this.destination}: ${describe(err)}`, {
      cause: err,
    })
  }

  /**
   * Counts the channel until it is closed on both sides. ssh2's `Channel.destroy()` only sends EOF and
   * CHANNEL_CLOSE: the stream itself is never destroyed, and ssh2 emits `close` only after the readable side
   * has emitted `end` — which a channel that was unpiped and paused (its local client went away first) never
   * does. Such channels were kept, with their sockets, until the link dropped. Here `destroy()` also destroys
   * the stream as a Duplex, so ssh2 emits `close` as soon as the server confirms (or at once when it already
   * has); `end()` stays a half-close (EOF) that keeps reading.
   */
  #track(stream: ClientChannel): void {
    this.#channels.add(stream)
    let closeEmitted = false
    stream.once('close', () => {
      closeEmitted = true
      this.#channels.delete(stream)
    })
    const channel = stream as ClientChannel & { incoming: { state: string } }
    stream.destroy = (error?: Error): ClientChannel => {
      if (stream.destroyed) return stream
      channel.close()
      Duplex.prototype.destroy.call(stream, error)
      // the server's CHANNEL_CLOSE came already: ssh2 waits for an `end` that a destroyed stream never emits
      if (channel.incoming.state === 'closed' && !closeEmitted) stream.emit('close')
      return stream
    }
  }

  /**
   * Opens the transport: the user's OpenSSH master when `transport` allows and one is alive (or, for `openssh`,
   * once started), else our own chain of ssh2 connections.
   */
  async #open(signal: AbortSignal): Promise<Chain | OpenSshMaster> {
    this.#lastAttemptAt = Date.now()
    const transport = this.#options.transport ?? 'auto'
    const say = this.#options.verbose
    if (transport !== 'ssh2') {
      const hop = this.#lastHop
      const env = this.#options.env
      const master = await OpenSshMaster.find(hop, env, this.#options.ownProcessGroup === true)
      signal.throwIfAborted()
      if (master !== undefined) {
        say?.(`${label(hop)}: transport openssh: your live master at ${master.path}, no new login`)
        return master
      }
      say?.(
        `${label(hop)}: transport ${transport}: no live OpenSSH master${hop.controlPath !== undefined ? ` at ${hop.controlPath}` : ' (no ControlPath)'}${transport === 'openssh' ? '; starting one' : '; our own connection'}`,
      )
      if (transport === 'openssh') return OpenSshMaster.start(hop, env)
    }
    return this.#openWithLogin(signal)
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
    void this.#reconnect(new IppTunnelError('E_LINK_DOWN', message))
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
      for (const w of this.#waiters) w.resolve()
      this.#waiters.clear()
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
        this.#stalePeer = { address: plainAddress(chain.localAddress), port: chain.localPort }
      }
      const error = new IppTunnelError(
        'E_LINK_DOWN',
        `SSH link to ${this.destination} lost: ${describe(lastError)}`,
        {
          cause: lastError,
        },
      )
      void this.#reconnect(error)
    }
    for (const client of chain.clients) {
      client.on('error', (err) => (lastError = err))
      client.once('close', onDown)
    }
    let probing = false
    let abandoned = false
    const stopWatching = watchNetwork((event) => {
      if (chain.dead || probing) return
      const first = chain.clients[0]
      if (first === undefined) return
      probing = true
      this.#checkAfter(event, chain, first).then(
        (reason) => {
          probing = false
          if (reason === undefined || chain.dead) return
          this.#options.verbose?.(`${this.destination}: ${reason}; connecting anew`)
          lastError = new Error(reason)
          abandoned = true
          first.destroy()
        },
        // a check that could not be made leaves the connection to its keepalives
        () => (probing = false),
      )
    })
    chain.clients[0]?.once('close', stopWatching)
    this.#setState('up')
    for (const w of this.#waiters) w.resolve()
    this.#waiters.clear()
  }

  /**
   * After a resume or a network change: why `chain` is dead, or undefined while it may live. A connection whose
   * address this machine no longer routes from (another network) is dead for certain; with no route at all (the
   * network down) it waits, for its TCP connection may resume when the same network comes back; with the same
   * address it is kept after a change and asked for an answer after a resume. A login that asked a person is never given up here: its silence allowance decides.
   */
  async #checkAfter(event: NetworkEvent, chain: Chain, first: Client): Promise<string | undefined> {
    if (chain.asked) return undefined
    const why =
      event.kind === 'resume'
        ? `this process ran again after ${Math.round(event.stoppedMs / 1000)} s stopped (a suspend)`
        : 'the network changed'
    if (chain.localAddress !== undefined && chain.remoteAddress !== undefined) {
      const source = await sourceFor(chain.remoteAddress)
      if (source === undefined) return undefined
      const local = plainAddress(chain.localAddress)
      if (source !== local) {
        return `${why}: this machine now reaches ${chain.remoteAddress} from ${source}, not from ${local}, the connection's address`
      }
    }
    // a change that left the route as it was: the connection may resume, keepalives decide (a Wi-Fi blip costs
    // nothing); after a resume anything may have happened meanwhile (a NAT forgot the mapping): ask
    if (event.kind !== 'resume') return undefined
    return (await answers(first, PROBE_MS))
      ? undefined
      : `${why}: no answer from the server within ${PROBE_MS / 1000} s`
  }

  /**
   * Connects anew until it works or fails for good. A failure of the network (no route, no answer, a connection
   * that died) is retried every second, the server's word (refused, reset) with capped exponential backoff; a
   * resume or a network change cuts a wait short. Attempts start at least {@link MIN_ATTEMPT_SPACING_MS} apart (or `backoff.maxMs`, when smaller),
   * however they end: a site that limits how often one connects sees at most one a second.
   */
  async #reconnect(error: IppTunnelError): Promise<void> {
    const downAt = Date.now()
    this.#setState('reconnecting')
    const backoff = this.#options.backoff ?? {}
    const initial = backoff.initialMs ?? 250
    const max = backoff.maxMs ?? 15_000
    const jitter = Math.min(Math.max(backoff.jitter ?? 0.2, 0), 1)
    // a backoff capped below a second (tests, a local server) was asked for explicitly
    const minSpacing = Math.min(MIN_ATTEMPT_SPACING_MS, max)
    let lastError = error
    let serverFailures = 0
    let wake: (() => void) | undefined
    const stopWatching = watchNetwork(() => wake?.())
    try {
      for (let attempt = 1; ; attempt++) {
        const network = isNetworkFailure(lastError)
        if (!network) serverFailures++
        const backedOff = Math.round(
          Math.min(max, initial * 2 ** Math.max(serverFailures - 1, 0)) *
            (1 + jitter * (2 * Math.random() - 1)),
        )
        const base = attempt === 1 ? initial : network ? RETRY_NETWORK_MS : backedOff
        const delayMs = Math.max(this.#lastAttemptAt + minSpacing - Date.now(), Math.min(max, base))
        this.emit('reconnecting', { attempt, delayMs, error: lastError })
        const woken = await sleep(delayMs, this.#abort.signal, (w) => (wake = w))
        if (woken === 'aborted') return
        if (woken === 'woken') {
          const rest = this.#lastAttemptAt + minSpacing - Date.now()
          if (rest > 0 && (await sleep(rest, this.#abort.signal)) === 'aborted') return
        }
        if (network) this.#chainContext.tcpConnectWithinMs = RETRY_TCP_CONNECT_MS
        else delete this.#chainContext.tcpConnectWithinMs
        try {
          const chain = await this.#open(this.#abort.signal)
          if (this.#state !== 'reconnecting') {
            void (chain instanceof OpenSshMaster ? chain.close() : endChain(chain))
            return
          }
          // before anything rides the new connection: a peer coming back must find the old one gone
          if (!(chain instanceof OpenSshMaster)) await this.#endStaleSession(chain)
          if ((this.#state as LinkState) !== 'reconnecting') {
            void (chain instanceof OpenSshMaster ? chain.close() : endChain(chain))
            return
          }
          this.#reconnects++
          this.#adopt(chain)
          this.emit('reconnected', { attempt, downMs: Date.now() - downAt })
          return
        } catch (err) {
          if (this.#state !== 'reconnecting') return
          lastError = this.#asError(err)
          // an attempt that never left this machine (no route, no address) is nothing a site counts
          if (leftNothing(lastError)) this.#lastAttemptAt = 0
          if (fatalCodes.has(lastError.code)) {
            this.#fail(lastError)
            return
          }
        }
      }
    } finally {
      stopWatching()
      delete this.#chainContext.tcpConnectWithinMs
    }
  }

  /**
   * Ends the server's side of the connection given up before `chain` (see {@link endStaleSession}); never fails,
   * waits at most {@link STALE_SESSION_MS}.
   */
  async #endStaleSession(chain: Chain): Promise<void> {
    const peer = this.#stalePeer
    const client = chain.clients[0]
    this.#stalePeer = undefined
    if (peer === undefined || client === undefined) return
    const say = this.#options.verbose
    const from = `${peer.address}:${String(peer.port)}`
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<'late'>(
      (resolve) => (timer = setTimeout(() => resolve('late'), STALE_SESSION_MS)),
    )
    try {
      const ended = await Promise.race([endStaleSession(client, this.destination, peer), late])
      say?.(
        ended === 'late'
          ? `${this.destination}: the server did not say within ${STALE_SESSION_MS / 1000} s whether it ended the old connection from ${from}`
          : `${this.destination}: the server's side of the old connection from ${from} ${ended > 0 ? 'ended' : 'was gone already'}`,
      )
    } catch (err) {
      say?.(
        `${this.destination}: could not end the server's side of the old connection from ${from}: ${describe(err)}`,
      )
    } finally {
      clearTimeout(timer)
    }
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
    return new Promise<void>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        this.#waiters.delete(waiter)
      }
      const waiter: Waiter = {
        resolve: () => {
          done()
          resolve()
        },
        reject: (err) => {
          done()
          reject(err)
        },
      }
      const onAbort = (): void => {
        done()
        reject(signal?.reason as Error)
      }
      const timer = setTimeout(() => {
        waiter.reject(
          new IppTunnelError(
            'E_LINK_DOWN',
            `SSH link to ${this.destination} is down (${this.#state}); gave up waiting after ${waitMs} ms`,
          ),
        )
      }, waitMs)
      signal?.addEventListener('abort', onAbort, { once: true })
      this.#waiters.add(waiter)
    })
  }

  /**
   * {@link openChain}, and with a `login` gate: when the login needs an answer nobody gave (or answers were
   * refused), waits for someone to log in and tries again, telling the gate how each such try ended.
   */
  async #openWithLogin(signal: AbortSignal): Promise<Chain> {
    const gate = this.#options.login
    for (;;) {
      try {
        this.#lastAttemptAt = Date.now()
        const chain = await openChain(this.#chainContext, signal)
        gate?.settled(this.destination, undefined)
        return chain
      } catch (err) {
        const needsLogin = isIppTunnelError(err) && (err.code === 'E_AUTH_PROMPT' || askedSomeone(err))
        if (isIppTunnelError(err) && !signal.aborted) gate?.settled(this.destination, err)
        if (gate === undefined || !needsLogin || signal.aborted) throw err
        await gate.wait(this.destination, signal)
      }
    }
  }
}

/**
 * Waits `ms`; resolves `slept`, `aborted` (the signal), or `woken` when the function handed to `onWake` is called
 * first.
 */
function sleep(
  ms: number,
  signal: AbortSignal,
  onWake?: (wake: () => void) => void,
): Promise<'slept' | 'aborted' | 'woken'> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve('aborted')
      return
    }
    const end = (how: 'slept' | 'aborted' | 'woken'): void => {
      clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
      onWake?.(() => undefined)
      resolve(how)
    }
    const onAbort = (): void => end('aborted')
    const timer = setTimeout(() => end('slept'), ms)
    signal.addEventListener('abort', onAbort, { once: true })
    onWake?.(() => end('woken'))
  })
}
