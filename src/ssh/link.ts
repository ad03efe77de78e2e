import { EventEmitter } from 'node:events'
import { Duplex } from 'node:stream'
import ssh2 from 'ssh2'
import type { ClientChannel, SFTPWrapper } from 'ssh2'
import { IppTunnelError, isIppTunnelError } from '../errors/index.js'
import { HopAuth, type AuthAttempt } from './auth.js'
import { connectFailureReason } from './connect-error.js'
import { enableCertificates } from './certificate.js'
import { hostKeyAsker } from './host-key-question.js'
import { checkHostKey, fingerprintSha256, type HostKeyNote } from './known-hosts.js'
import { OpenSshMaster, type Transport } from './openssh-master.js'
import type { LoginGate, PromptProvider } from './prompts.js'
import { ProxyCommand } from './proxy-command.js'
import {
  ASKED_SILENCE_MS,
  gateOnTransport,
  holdToCount,
  KEEPALIVE_COUNT_MAX,
  poolPadding,
} from './ssh2-socket.js'
import type { HostKeyPolicy, PassphraseProvider, ResolvedHop, ResolvedTarget } from './types.js'

type Client = InstanceType<typeof ssh2.Client>

/** Where a {@link Link} is. `idle` only before the first `connect()`. */
export type LinkState = 'idle' | 'connecting' | 'up' | 'reconnecting' | 'failed' | 'closed'

/** Capped exponential backoff between reconnect attempts. */
export interface BackoffOptions {
  /** Delay before the first reconnect attempt; default 250 ms. */
  readonly initialMs?: number
  /** Largest delay; default 15000 ms. */
  readonly maxMs?: number
  /** Random spread as a fraction of the delay (0..1); default 0.2, so a delay d becomes d·(1 ± 0.2). */
  readonly jitter?: number
}

/** Options of a {@link Link}. */
export interface LinkOptions {
  /** Wins over each hop's own `hostKeyPolicy` (from ssh config); default `strict`. */
  readonly hostKeyCheck?: HostKeyPolicy
  /** Told when a host key is recorded (accept-new) or let through unchecked (off); also the `hostkey` event. */
  readonly onHostKey?: (note: HostKeyNote) => void
  readonly passphrase?: PassphraseProvider
  /** Answers keyboard-interactive and password prompts; without it those methods are not tried. */
  readonly prompt?: PromptProvider
  /**
   * For a process no one watches (the service): when a login needs an answer no one gave (`E_AUTH_PROMPT`), or
   * answers given were refused, the link waits in `login.wait()` instead of failing, and tries again after it.
   */
  readonly login?: LoginGate
  /**
   * `--verbose`: told, per hop, the resolved settings, what the server offers, each login attempt and its result,
   * and the host-key check; never a key, passphrase or answer.
   */
  readonly verbose?: (message: string) => void
  /** ssh-agent socket; default `$SSH_AUTH_SOCK`; `false`: no agent. */
  readonly agent?: string | false
  /** Environment for `SSH_AUTH_SOCK`; default `process.env`. */
  readonly env?: Readonly<Record<string, string | undefined>>
  /**
   * SSH keepalive interval; wins over each hop's own (ServerAliveInterval); default 5000 ms. With `keepaliveCountMax`
   * it bounds how long a dead link goes unnoticed.
   */
  readonly keepaliveIntervalMs?: number
  /**
   * Unanswered keepalives before the link counts as dead; wins over each hop's own (ServerAliveCountMax); default 3,
   * or, for a hop whose login asked a person (a one-time code), as many as make five minutes of silence.
   */
  readonly keepaliveCountMax?: number
  /**
   * Time allowed per hop from TCP connect to authenticated (time spent asking for a passphrase excluded); default
   * 20000 ms, or the hop's `connectTimeoutMs` when longer. A hop's `connectTimeoutMs` bounds connect plus handshake.
   */
  readonly readyTimeoutMs?: number
  readonly backoff?: BackoffOptions
  /**
   * `auto` (default): carry the forwards through the user's live OpenSSH master at the destination's ControlPath
   * when there is one (no new login), else connect with ssh2; `ssh2`: always our own connection; `openssh`: only
   * through a master, starting one (`ssh -M`, prompts on the terminal) when none is alive.
   */
  readonly transport?: Transport
  /** Told what a hop's ProxyCommand writes to its stderr; also the `proxy-stderr` event. */
  readonly onProxyStderr?: (text: string) => void
  /** How long `forwardOut` waits for a link that is (re)connecting; default 10000 ms. */
  readonly waitForLinkMs?: number
}

/** Events of a {@link Link}; failures are named events, there is no bare `error` event. */
export interface LinkEvents {
  state: [state: LinkState]
  reconnecting: [info: { attempt: number; delayMs: number; error: IppTunnelError }]
  reconnected: [info: { attempt: number; downMs: number }]
  failed: [info: { error: IppTunnelError }]
  /** A host key was recorded (accept-new) or let through unchecked (off); once per key and kind per link. */
  hostkey: [note: HostKeyNote]
  /** A ProxyCommand wrote to its stderr (ssh(1) shows that on the terminal). */
  'proxy-stderr': [info: { hop: string; text: string }]
  closed: []
}

/** Counters of a {@link Link}. */
export interface LinkStats {
  /** Successful reconnects since `connect()`. */
  readonly reconnects: number
  /** Forwarded channels open now. */
  readonly channelsOpen: number
}

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
  'E_FORWARD_DENIED',
])

interface Waiter {
  resolve(): void
  reject(err: IppTunnelError): void
}

interface Chain {
  readonly clients: Client[]
  /** ProxyCommand processes the chain runs over; closed (killed, reaped) with it. */
  readonly proxies: ProxyCommand[]
  dead: boolean
}

/** ssh2 errors carry a `level` (and socket errors a `code`); channel-open failures a numeric `reason`. */
interface Ssh2Error extends Error {
  level?: string
  code?: string
  reason?: number | string
}

const openFailure = { prohibited: 1, connectFailed: 2 }

/** What a forwarded channel reaches on the server's side: `direct-tcpip` or `direct-streamlocal@openssh.com`. */
type ChannelTarget =
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number }
  | { readonly kind: 'unix'; readonly path: string }

function targetText(target: ChannelTarget): string {
  return target.kind === 'unix' ? `unix socket ${target.path}` : `${target.host}:${target.port}`
}

function label(hop: ResolvedHop): string {
  const where = `${hop.username}@${hop.host}:${hop.port}`
  return hop.alias === hop.host ? where : `${where} (${hop.alias})`
}

function describe(err: unknown): string {
  if (err === undefined) return 'connection closed'
  if (err instanceof Error) {
    const e = err as Ssh2Error
    return e.code !== undefined && !e.message.includes(e.code) ? `${e.code}: ${e.message}` : e.message
  }
  return typeof err === 'string' ? err : JSON.stringify(err)
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
  readonly #auth: HopAuth[]
  #state: LinkState = 'idle'
  #chain: Chain | undefined
  /** The user's OpenSSH master carrying the forwards instead of #chain. */
  #master: OpenSshMaster | undefined
  #failure: IppTunnelError | undefined
  #connecting: Promise<void> | undefined
  #waiters = new Set<Waiter>()
  #reconnects = 0
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
      destination: this.destination,
    }
    this.#auth = target.hops.map((hop) => new HopAuth(hop, authOptions))
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
        const stream = await this.#channel(client, target, signal)
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
        throw this.#forwardError(err, this.#lastHop, target, socketThere)
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
    const transport = this.#options.transport ?? 'auto'
    const say = this.#options.verbose
    if (transport !== 'ssh2') {
      const hop = this.#lastHop
      const env = this.#options.env
      const master = await OpenSshMaster.find(hop, env)
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
    this.#setState('up')
    for (const w of this.#waiters) w.resolve()
    this.#waiters.clear()
  }

  async #reconnect(error: IppTunnelError): Promise<void> {
    const downAt = Date.now()
    this.#setState('reconnecting')
    const backoff = this.#options.backoff ?? {}
    const initial = backoff.initialMs ?? 250
    const max = backoff.maxMs ?? 15_000
    const jitter = Math.min(Math.max(backoff.jitter ?? 0.2, 0), 1)
    let lastError = error
    for (let attempt = 1; ; attempt++) {
      const base = Math.min(max, initial * 2 ** (attempt - 1))
      const delayMs = Math.round(Math.min(max, base * (1 + jitter * (2 * Math.random() - 1))))
      this.emit('reconnecting', { attempt, delayMs, error: lastError })
      if (!(await sleep(delayMs, this.#abort.signal))) return
      try {
        const chain = await this.#open(this.#abort.signal)
        if (this.#state !== 'reconnecting') {
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
        if (fatalCodes.has(lastError.code)) {
          this.#fail(lastError)
          return
        }
      }
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

  /** Opens a channel; on abort it rejects at once, and a channel that opens after that is closed. */
  #channel(client: Client, target: ChannelTarget, signal?: AbortSignal): Promise<ClientChannel> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted === true) {
        reject(signal.reason as Error)
        return
      }
      let settled = false
      const onAbort = (): void => {
        settled = true
        reject(signal?.reason as Error)
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      try {
        const done = (err: Error | undefined, stream: ClientChannel): void => {
          signal?.removeEventListener('abort', onAbort)
          if (settled) {
            if (!err) stream.destroy()
            return
          }
          settled = true
          if (err) reject(err)
          else resolve(stream)
        }
        if (target.kind === 'unix') client.openssh_forwardOutStreamLocal(target.path, done)
        else client.forwardOut('127.0.0.1', 0, target.host, target.port, done)
      } catch (err) {
        signal?.removeEventListener('abort', onAbort)
        settled = true
        reject(err instanceof Error ? err : new Error(String(err)))
      }
    })
  }

  #forwardError(
    err: unknown,
    hop: ResolvedHop,
    target: ChannelTarget,
    socketThere?: boolean,
  ): IppTunnelError {
    if (isIppTunnelError(err)) return err
    const where = targetText(target)
    const reason = (err as Ssh2Error).reason
    if (target.kind === 'unix' && reason === openFailure.connectFailed && socketThere !== false) {
      const seen = socketThere === true ? 'a socket is there, but ' : ''
      return new IppTunnelError(
        socketThere === true ? 'E_FORWARD_DENIED' : 'E_FORWARD',
        `${label(hop)} would not connect to ${where}: ${seen}the server does not allow unix-socket forwarding (AllowStreamLocalForwarding / DisableForwarding in its sshd_config)${socketThere === true ? ', or nothing listens on that socket any more' : ', or nothing listens there'}`,
        { cause: err },
      )
    }
    if (reason === openFailure.prohibited) {
      const rule =
        target.kind === 'unix'
          ? 'unix-socket forwarding (AllowStreamLocalForwarding / DisableForwarding in its sshd_config)'
          : 'TCP forwarding (AllowTcpForwarding / PermitOpen in its sshd_config)'
      return new IppTunnelError(
        'E_FORWARD_DENIED',
        `${label(hop)} refused to forward to ${where} (administratively prohibited): the server does not allow ${rule}`,
        { cause: err },
      )
    }
    if (reason === openFailure.connectFailed) {
      return new IppTunnelError(
        'E_FORWARD',
        `Nothing accepts connections at ${where} as seen from ${label(hop)} (connect failed)`,
        { cause: err },
      )
    }
    if (this.#state !== 'up') {
      return new IppTunnelError('E_LINK_DOWN', `SSH link to ${label(hop)} went down while opening ${where}`, {
        cause: err,
      })
    }
    return new IppTunnelError('E_FORWARD', `Cannot forward to ${where} via ${label(hop)}: ${describe(err)}`, {
      cause: err,
    })
  }

  /**
   * {@link Link.#openChain}, and with a `login` gate: when the login needs an answer nobody gave (or answers were
   * refused), waits for someone to log in and tries again, telling the gate how each such try ended.
   */
  async #openWithLogin(signal: AbortSignal): Promise<Chain> {
    const gate = this.#options.login
    for (;;) {
      try {
        const chain = await this.#openChain(signal)
        gate?.settled(this.destination, undefined)
        return chain
      } catch (err) {
        const needsLogin =
          isIppTunnelError(err) && (err.code === 'E_AUTH_PROMPT' || promptedFailures.has(err))
        if (isIppTunnelError(err) && !signal.aborted) gate?.settled(this.destination, err)
        if (gate === undefined || !needsLogin || signal.aborted) throw err
        await gate.wait(this.destination, signal)
      }
    }
  }

  /** Connects every hop in turn, each through a channel of the one before. */
  async #openChain(signal: AbortSignal): Promise<Chain> {
    const chain: Chain = { clients: [], proxies: [], dead: false }
    try {
      let previous: { client: Client; hop: ResolvedHop } | undefined
      let asked = false
      for (const [i, hop] of this.target.hops.entries()) {
        signal.throwIfAborted()
        let sock: Duplex | undefined
        const auth = this.#auth[i]
        if (auth === undefined) throw new Error('unreachable: no auth for hop')
        const attempt = await auth.begin()
        if (previous === undefined && hop.proxyCommand !== undefined) {
          // started only now, right before ssh2 takes its stream: no await between, so no exit goes unseen
          const where = label(hop)
          const proxy = new ProxyCommand(hop.proxyCommand, {
            onStderr: (text) => {
              this.#options.onProxyStderr?.(text)
              this.emit('proxy-stderr', { hop: where, text })
            },
            ...(this.#options.env !== undefined ? { env: this.#options.env } : {}),
          })
          chain.proxies.push(proxy)
          sock = proxy.stream
        } else if (previous !== undefined) {
          try {
            sock = await this.#channel(
              previous.client,
              { kind: 'tcp', host: hop.host, port: hop.port },
              signal,
            )
          } catch (err) {
            if (signal.aborted) throw err
            const e = this.#forwardError(err, previous.hop, { kind: 'tcp', host: hop.host, port: hop.port })
            if (e.code === 'E_FORWARD_DENIED') throw e
            throw new IppTunnelError(
              'E_CONNECT',
              `Cannot reach ${label(hop)} through jump host ${label(previous.hop)}: ${e.message}`,
              { cause: err },
            )
          }
        }
        const proxy = previous === undefined ? chain.proxies[0] : undefined
        const client = await this.#connectHop(hop, attempt, sock, signal, proxy)
        chain.clients.push(client)
        asked ||= attempt.prompted
        previous = { client, hop }
      }
      // a login that asked a person makes the whole chain precious: a jump host dropped after 15 s would take it along
      if (asked) for (const client of chain.clients) liftKeepalive.get(client)?.()
      return chain
    } catch (err) {
      chain.dead = true
      await endChain(chain)
      throw err
    }
  }

  #connectHop(
    hop: ResolvedHop,
    auth: AuthAttempt,
    sock: Duplex | undefined,
    signal: AbortSignal,
    proxy?: ProxyCommand,
  ): Promise<Client> {
    const client = new ssh2.Client()
    client.once('close', () => closedClients.add(client))
    const where = label(hop)
    return new Promise<Client>((resolve, reject) => {
      let fatal: IppTunnelError | undefined
      let lastError: Ssh2Error | undefined
      let socketError: Ssh2Error | undefined
      let settled = false
      const connectMs = hop.connectTimeoutMs
      const readyMs = this.#options.readyTimeoutMs ?? Math.max(20_000, connectMs ?? 0)
      let timer = setTimeout(onTimeout, readyMs)
      const connectTimer =
        connectMs === undefined
          ? undefined
          : setTimeout(() => {
              fatal = new IppTunnelError(
                'E_CONNECT',
                `Cannot connect to ${where}: timed out after ${connectMs / 1000} s (ConnectTimeout)`,
              )
              client.destroy()
            }, connectMs)
      client.once('handshake', () => clearTimeout(connectTimer))
      const keepaliveMs = this.#options.keepaliveIntervalMs ?? hop.keepaliveIntervalMs ?? 5000
      const explicitMax = this.#options.keepaliveCountMax ?? hop.keepaliveCountMax
      // ssh2 fixes the count at connect, before anyone knows whether the login will ask a person: it gets the
      // allowance of such a login, and a login that asked no one is held to the default below (holdToCount)
      const keepaliveMax =
        explicitMax ??
        (keepaliveMs > 0
          ? Math.max(KEEPALIVE_COUNT_MAX, Math.ceil(ASKED_SILENCE_MS / keepaliveMs))
          : KEEPALIVE_COUNT_MAX)
      let countMax = explicitMax ?? KEEPALIVE_COUNT_MAX
      function onTimeout(): void {
        if (auth.prompting) {
          timer = setTimeout(onTimeout, readyMs)
          return
        }
        fatal = new IppTunnelError(
          'E_CONNECT',
          `Cannot connect to ${where}: no SSH handshake within ${readyMs} ms`,
        )
        client.destroy()
      }
      const onAbort = (): void => {
        client.destroy()
      }
      const finish = (): void => {
        settled = true
        clearTimeout(timer)
        clearTimeout(connectTimer)
        signal.removeEventListener('abort', onAbort)
      }
      signal.addEventListener('abort', onAbort, { once: true })

      client.on('error', (err: Ssh2Error) => {
        if (err.level === 'client-timeout' && err.message === 'Keepalive timeout') {
          err.message = `no answer to ${countMax} keepalives sent ${keepaliveMs / 1000} s apart (ServerAliveInterval ${keepaliveMs / 1000}, ServerAliveCountMax ${countMax}${explicitMax === undefined ? ', the default' : ''})`
        }
        lastError = err
        // the socket's own error (ECONNREFUSED, …) says more than ssh2's "Connection lost" that may follow it
        if (err.code !== undefined) socketError ??= err
      })
      client.once('ready', () => {
        if (settled) return
        finish()
        if (explicitMax === undefined && keepaliveMs > 0) {
          const stop = holdToCount(client, keepaliveMs, countMax)
          liftKeepalive.set(client, () => {
            stop()
            countMax = keepaliveMax
          })
        }
        resolve(client)
      })
      client.once('close', () => {
        if (settled) return
        finish()
        if (signal.aborted) {
          reject(signal.reason as Error)
          return
        }
        if (fatal !== undefined) {
          reject(fatal)
          return
        }
        if (lastError?.level === 'client-authentication') {
          const failure = auth.failure()
          if (auth.prompted) promptedFailures.add(failure)
          reject(failure)
          return
        }
        const cause = socketError ?? lastError
        const connectError = (): IppTunnelError => {
          const reason = proxy?.exitReason ?? connectFailureReason(cause)
          return new IppTunnelError('E_CONNECT', `Cannot connect to ${where}: ${reason}`, { cause })
        }
        if (proxy === undefined) {
          reject(connectError())
          return
        }
        // the ProxyCommand's exit status and last words say more than "connection lost"; they come a moment later
        const late = setTimeout(() => reject(connectError()), 500)
        void proxy.exited.then(() => {
          clearTimeout(late)
          reject(connectError())
        })
      })

      const files = hop.knownHostsFiles
      const policy = this.#options.hostKeyCheck ?? hop.hostKeyPolicy ?? 'ask'
      // Only a process with someone at its terminal asks about a host key; the service (a login gate) never does.
      const ask =
        this.#options.prompt !== undefined && this.#options.login === undefined
          ? hostKeyAsker(this.#options.prompt, this.destination, where)
          : undefined
      const policyFrom = this.#options.hostKeyCheck === undefined ? hop.hostKeyPolicyFrom : undefined
      const say = this.#options.verbose
      say?.(
        `${where}: connecting${sock !== undefined ? ' through the jump host before it' : ''}; identity files ${hop.identityFiles.join(', ') || 'none'}${hop.identitiesOnly ? ' (only these)' : ''}; known_hosts ${files.join(', ') || 'none'}, policy ${policy}; certificates ${hop.certificateFiles?.join(', ') ?? "KEY-cert.pub beside each identity file, and the agent's"}; proxy ${hop.proxyCommand !== undefined ? `ProxyCommand ${hop.proxyCommand}` : sock !== undefined ? 'the jump host before it' : 'none'}; methods ${(hop.preferredAuthentications ?? ['default']).join(',')}; keepalive ${keepaliveMs / 1000} s x ${countMax}${explicitMax === undefined ? ` (x ${keepaliveMax} after a login that asks a person)` : ''}`,
      )
      if (say !== undefined) client.once('ready', () => say(`${where}: authenticated`))
      client.connect({
        host: hop.host,
        port: hop.port,
        username: hop.username,
        ...(sock !== undefined ? { sock } : {}),
        readyTimeout: 0,
        keepaliveInterval: keepaliveMs,
        keepaliveCountMax: keepaliveMax,
        authHandler: auth.authHandler,
        hostVerifier: (key: Buffer, verify: (valid: boolean) => void) => {
          const note = (n: HostKeyNote): void => this.#noteHostKey(n)
          const from = policyFrom === undefined ? {} : { policyFrom }
          checkHostKey({ files, host: hop.host, port: hop.port, key, policy, note, ask, ...from }).then(
            () => {
              say?.(`${where}: host key ${fingerprintSha256(key)} accepted (policy ${policy})`)
              verify(true)
            },
            (err: unknown) => {
              fatal = isIppTunnelError(err)
                ? err
                : new IppTunnelError(
                    'E_HOSTKEY_UNKNOWN',
                    `Cannot check the host key of ${where}: ${describe(err)}`,
                    {
                      cause: err,
                    },
                  )
              verify(false)
            },
          )
        },
      })
      enableCertificates(client, (err) => {
        lastError = err
        client.destroy()
      })
      // Forwards carry small request/reply messages: Nagle's algorithm would hold them back waiting for ACKs.
      client.setNoDelay(true)
    })
  }
}

/** Per connected client held to the default count: lets ssh2's larger count apply once a login asked someone. */
const liftKeepalive = new WeakMap<Client, () => void>()

/** Authentication failures of attempts that asked someone: with a login gate, the link asks again. */
const promptedFailures = new WeakSet<IppTunnelError>()

/**
 * Whether a unix socket exists at `path` on the server, asked over SFTP (lstat); undefined when SFTP is not
 * available or does not answer within 5 s.
 */
function remoteSocketExists(client: Client, path: string): Promise<boolean | undefined> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(undefined), 5000)
    const done = (answer: boolean | undefined): void => {
      clearTimeout(timer)
      resolve(answer)
    }
    try {
      client.sftp((err, sftp) => {
        if (err) {
          done(undefined)
          return
        }
        sftp.lstat(path, (statErr, stats) => {
          sftp.end()
          done(statErr ? false : stats.isSocket())
        })
      })
    } catch {
      done(undefined)
    }
  })
}

/** Clients whose connection has closed (ssh2 emits `close` once; `endChain` must not wait for it again). */
const closedClients = new WeakSet<Client>()

function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve(false)
      return
    }
    const onAbort = (): void => {
      clearTimeout(timer)
      resolve(false)
    }
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort)
      resolve(true)
    }, ms)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

/** Ends every client of a chain, innermost first, and waits until all are closed; then its ProxyCommands. */
async function endChain(chain: Chain): Promise<void> {
  await endClients(chain)
  await Promise.all(chain.proxies.map((p) => p.close()))
}

async function endClients(chain: Chain): Promise<void> {
  await Promise.all(
    [...chain.clients].reverse().map(
      (client) =>
        new Promise<void>((resolve) => {
          if (closedClients.has(client)) {
            resolve()
            return
          }
          const timer = setTimeout(() => client.destroy(), 1000)
          client.once('close', () => {
            clearTimeout(timer)
            resolve()
          })
          client.end()
        }),
    ),
  )
}
