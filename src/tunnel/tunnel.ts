import { EventEmitter } from 'node:events'
import type { Duplex } from 'node:stream'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'

import {
  destinationOf,
  endpoints,
  ipcSocketPath,
  ippClientSocketPath,
  readConnectionFile,
  toLoopback,
  type ConnectionInfo,
  type Endpoint,
} from '../connection-file/index.js'
import { IppTunnelError, isIppTunnelError } from '../errors/index.js'
import { currentUid } from '../safe-fs/index.js'
import { resolveTarget, type Link, type LinkOptions, type SshOptions } from '../ssh/index.js'
import { CopyClaim } from './claim.js'
import { LoopbackCopy, prepareCopy, type CopyRecorder, type CopyState } from './copy.js'
import { Forward, type ForwardStats, type LocalAddress, type OpenRemote } from './forward.js'
import { ChannelBudget } from './budget.js'
import { LinkPool } from './links.js'
import { defaultRuntimeDir } from './paths.js'
import { SocketDir } from './socket-dir.js'

/** What a tunnel listens on: TCP ports on 127.0.0.1 (the default), or unix sockets in a private directory. */
export type ListenKind = 'tcp' | 'unix'

/**
 * One forwarded channel: where local clients connect (a TCP port on 127.0.0.1 or a unix socket), and where the ssh
 * server sends their traffic (host and port, or a unix socket path on the server's machine).
 */
export interface ForwardInfo {
  readonly channel: string
  readonly local: LocalAddress
  readonly remote: Endpoint
}

/** Events of a tunnel. Link events are those of the (possibly shared) ssh link under it. */
export interface TunnelEvents {
  'link:reconnecting': [{ attempt: number; delayMs: number; error: Error }]
  'link:reconnected': [{ attempt: number; downMs: number }]
  'link:failed': [{ error: Error }]
  /** A local connection could not be carried to its endpoint (link down too long, endpoint gone). */
  'forward:error': [{ channel: string; error: Error }]
  closed: []
}

export interface OpenTunnelOptions extends SshOptions, Omit<LinkOptions, keyof SshOptions> {
  /** Write the loopback connection file here (atomically, 0600) and remove it on close. */
  readonly out?: string
  /** The file `source` was read from, when given as parsed info: the copy is never written over it. */
  readonly sourceFile?: string
  /** Share links with other tunnels (the service does); by default the tunnel owns a link of its own. */
  readonly pool?: LinkPool
  /** Open one channel per endpoint before resolving, to fail early on a refused forward. Default true. */
  readonly probe?: boolean
  /**
   * `unix`: every listener is a unix socket (0600) in a private directory (0700) under `socketDir`, and the loopback
   * file names them with `ipc://` — reachable by this user alone. Default `tcp` (127.0.0.1, any local user).
   */
  readonly listen?: ListenKind
  /** Where `listen: 'unix'` makes its socket directory; default the runtime directory ({@link defaultRuntimeDir}). */
  readonly socketDir?: string
  /**
   * The private runtime directory shared by the user's ipp-tunnel processes, where the claims on copy paths are
   * keyed; default {@link defaultRuntimeDir}.
   */
  readonly runtimeDir?: string
  /** What this process is, as another process's `E_COPY_CONFLICT` names it; default `ipp-tunnel`. */
  readonly owner?: string
  /** What the user can do when another process holds `out` (ends the `E_COPY_CONFLICT` message). */
  readonly conflictHint?: string
  /** Told of every copy before and after it takes its name (the service's ledger). */
  readonly recorder?: CopyRecorder
  /**
   * Runs once the claim on `out` is held, before anything is written or removed there: throws to refuse a file
   * that must not be replaced (a name another program writes too). After the claim, so that a copy another
   * ipp-tunnel process holds is named by its holder rather than refused as a stranger's file.
   */
  readonly beforeWrite?: (out: string) => Promise<void>
  readonly signal?: AbortSignal
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err))
}

function onChannel(err: unknown, endpoint: Endpoint): Error {
  if (!isIppTunnelError(err)) return asError(err)
  return new IppTunnelError(err.code, `channel "${endpoint.channel}": ${err.message}`, { cause: err })
}

/**
 * The tunnels on each link. A link gets one listener per event, whatever the number of tunnels (files) on it,
 * and fans the event out: a listener per tunnel set Node's MaxListenersExceededWarning off past ten files.
 */
const tunnelsOnLink = new WeakMap<Link, { tunnels: Set<Tunnel>; detach: () => void }>()

function followLink(link: Link, tunnel: Tunnel): () => void {
  let entry = tunnelsOnLink.get(link)
  if (entry === undefined) {
    const tunnels = new Set<Tunnel>()
    const onReconnecting = (e: { attempt: number; delayMs: number; error: Error }) => {
      for (const t of tunnels) t.emit('link:reconnecting', e)
    }
    const onReconnected = (e: { attempt: number; downMs: number }) => {
      for (const t of tunnels) t.emit('link:reconnected', e)
    }
    const onFailed = (e: { error: Error }) => {
      for (const t of tunnels) t.emit('link:failed', e)
    }
    link.on('reconnecting', onReconnecting)
    link.on('reconnected', onReconnected)
    link.on('failed', onFailed)
    entry = {
      tunnels,
      detach: () => {
        link.off('reconnecting', onReconnecting)
        link.off('reconnected', onReconnected)
        link.off('failed', onFailed)
      },
    }
    tunnelsOnLink.set(link, entry)
  }
  const { tunnels } = entry
  tunnels.add(tunnel)
  return () => {
    tunnels.delete(tunnel)
    if (tunnels.size === 0 && tunnelsOnLink.get(link)?.tunnels === tunnels) {
      tunnelsOnLink.get(link)?.detach()
      tunnelsOnLink.delete(link)
    }
  }
}

/**
 * The forwards of one connection file over one ssh link: a loopback listener per endpoint.
 * Local ports stay the same for the tunnel's whole life, across link drops and {@link Tunnel.update}.
 *
 * @example
 * await using tunnel = await openTunnel('~/.ipython/profile_default/security/ipcontroller-client.json', {
 *   out: '/tmp/loopback.json',
 * })
 * console.log(tunnel.forwards)
 */
export class Tunnel extends EventEmitter<TunnelEvents> {
  /** The connection file this tunnel serves, when it was opened from a path. */
  readonly file: string | undefined
  /** Where the loopback copy was written, when asked for. */
  readonly out: string | undefined
  readonly link: Link
  /** Milliseconds from the call to openTunnel until every forward was ready. */
  readyMs = 0
  #source: ConnectionInfo
  readonly #forwards = new Map<string, Forward>()
  readonly #release: () => Promise<void>
  readonly #detach: () => void
  readonly #copy: LoopbackCopy | undefined
  readonly #budget: ChannelBudget
  readonly #sockets: SocketDir | undefined
  #localPorts: ReadonlyMap<string, number> | undefined
  /** Settles once channels may open (see `opensAfter`); undefined after. */
  #opensAfter: Promise<void> | undefined
  readonly #claim: CopyClaim | undefined
  #closed = false

  private constructor(
    source: ConnectionInfo,
    link: Link,
    release: () => Promise<void>,
    file: string | undefined,
    out: { path: string; claim?: CopyClaim; recorder?: CopyRecorder } | undefined,
    budget: ChannelBudget,
    sockets: SocketDir | undefined,
  ) {
    super()
    this.#budget = budget
    this.#sockets = sockets
    this.#source = source
    this.link = link
    this.#release = release
    this.file = file
    this.out = out?.path
    this.#claim = out?.claim
    this.#copy = out !== undefined ? new LoopbackCopy(out.path, out.recorder) : undefined
    this.#detach = followLink(link, this)
  }

  /**
   * Opens forwards for `info` over an already connected `link`. `release` is called on close; `budget` bounds the
   * connections carried at once (default: none); `listen`/`socketDir` as in {@link OpenTunnelOptions}; `signal`
   * aborts the opening (nothing is left behind).
   */
  static async over(
    info: ConnectionInfo,
    link: Link,
    options: {
      release?: () => Promise<void>
      file?: string
      out?: string
      /** The claim on `out`, released when the tunnel closes. */
      claim?: CopyClaim
      recorder?: CopyRecorder
      probe?: boolean
      budget?: ChannelBudget
      listen?: ListenKind
      socketDir?: string
      /** Listen on these 127.0.0.1 ports, by channel, instead of ports the kernel picks (a port taken is `E_FORWARD`). */
      localPorts?: ReadonlyMap<string, number>
      /**
       * Channels open only once this settles (a remote kernel that is still binding its sockets): connections
       * accepted meanwhile wait for it instead of being refused and retried by their client.
       */
      opensAfter?: Promise<unknown>
      signal?: AbortSignal
    } = {},
  ): Promise<Tunnel> {
    let sockets: SocketDir | undefined
    try {
      if (options.listen === 'unix') {
        const fallback = join(tmpdir(), `ipp-tunnel-${currentUid()}`)
        sockets = await SocketDir.create(options.socketDir ?? defaultRuntimeDir(), fallback)
      }
    } catch (err) {
      options.claim?.release()
      await (options.release ?? (() => Promise.resolve()))()
      throw err
    }
    const out = options.out
    const tunnel = new Tunnel(
      info,
      link,
      options.release ?? (() => Promise.resolve()),
      options.file,
      out === undefined
        ? undefined
        : {
            path: out,
            ...(options.claim !== undefined && { claim: options.claim }),
            ...(options.recorder !== undefined && { recorder: options.recorder }),
          },
      options.budget ?? new ChannelBudget(Infinity),
      sockets,
    )
    tunnel.#localPorts = options.localPorts
    const gate = options.opensAfter?.then(
      () => undefined,
      () => undefined,
    )
    tunnel.#opensAfter = gate
    void gate?.then(() => {
      if (tunnel.#opensAfter === gate) tunnel.#opensAfter = undefined
    })
    try {
      await tunnel.#apply(info, options.probe ?? true, options.signal)
      options.signal?.throwIfAborted()
      await tunnel.#copy?.write(tunnel.loopback)
    } catch (err) {
      await tunnel.close()
      throw err
    }
    return tunnel
  }

  get closed(): boolean {
    return this.#closed
  }

  /** The connection file as given. */
  get source(): ConnectionInfo {
    return this.#source
  }

  /** What the listeners are: TCP ports or unix sockets. */
  get listen(): ListenKind {
    return this.#sockets === undefined ? 'tcp' : 'unix'
  }

  /** The private directory of the unix-socket listeners, with `listen: 'unix'`. */
  get socketDir(): string | undefined {
    return this.#sockets?.path
  }

  /**
   * The connection file rewritten to this tunnel's listeners, with `ssh` emptied: 127.0.0.1 and the local ports, or
   * with `listen: 'unix'` `ipc://` names of the unix sockets; an ipyparallel file's `location` is this host's name.
   */
  get loopback(): ConnectionInfo {
    const ports = new Map([...this.#forwards].map(([channel, f]) => [channel, f.localPort]))
    return toLoopback(this.#source, ports, {
      ipc: this.#sockets?.prefix(this.#source.kind),
      location: hostname(),
    })
  }

  get forwards(): ForwardInfo[] {
    return [...this.#forwards.values()].map((f) => ({ channel: f.channel, local: f.local, remote: f.remote }))
  }

  /** Per-channel counters. */
  stats(): Map<string, ForwardStats> {
    return new Map([...this.#forwards].map(([channel, f]) => [channel, f.stats()]))
  }

  /**
   * Looks at the loopback copy: written again when someone removed it; another file put in its place is left
   * alone (`replaced`) and the copy comes back once that file is gone (`restored`). `undefined` without a copy.
   */
  async checkCopy(): Promise<CopyState | 'restored' | undefined> {
    if (this.#closed) return undefined
    return this.#copy?.restore()
  }

  /**
   * Follows a changed connection file (a restarted controller): known channels keep their local ports and point
   * at the new remote ports, new channels get listeners, vanished ones close; the loopback copy is rewritten.
   */
  async update(info: ConnectionInfo, options: { probe?: boolean } = {}): Promise<void> {
    this.#source = info
    await this.#apply(info, options.probe ?? true)
    await this.#copy?.write(this.loopback)
  }

  async #apply(info: ConnectionInfo, probe: boolean, signal?: AbortSignal): Promise<void> {
    const wanted = endpoints(info)
    const names = new Set(wanted.map((e) => e.channel))
    for (const [channel, forward] of this.#forwards) {
      if (names.has(channel)) continue
      this.#forwards.delete(channel)
      await forward.close()
    }
    const openRemote: OpenRemote = (remote) => this.#open(remote)
    const onError = (channel: string, err: unknown) =>
      this.emit('forward:error', { channel, error: asError(err) })
    // a unix listener's number (its path's suffix) stays with its channel; new channels take the lowest free ones
    const used = new Set([...this.#forwards.values()].map((f) => f.localPort))
    const unixPort = (): number => {
      let port = 1
      while (used.has(port)) port++
      used.add(port)
      return port
    }
    await Promise.all(
      wanted.map(async (endpoint) => {
        const existing = this.#forwards.get(endpoint.channel)
        if (existing) existing.retarget(endpoint)
        else {
          const sockets = this.#sockets
          let on: Parameters<typeof Forward.listen>[3] = this.#localPorts?.get(endpoint.channel) ?? 0
          if (sockets !== undefined) {
            const port = unixPort()
            const prefix = sockets.prefix(info.kind)
            // ipcontroller binds <prefix>-<port>, its Client and ipengine connect to <prefix>:<port>: answer at both
            const aliases = info.kind === 'kernel' ? [] : [ippClientSocketPath(prefix, port)]
            on = { kind: 'unix', path: ipcSocketPath(info.kind, prefix, port), port, aliases }
          }
          const forward = await Forward.listen(endpoint, openRemote, onError, on, this.#budget)
          // closed (and aborted) while listening: close() has already run over the forwards it knew
          if (this.#closed) await forward.close()
          else this.#forwards.set(endpoint.channel, forward)
        }
      }),
    )
    signal?.throwIfAborted()
    if (probe) await this.#probe(wanted, signal)
  }

  /** A channel to `remote`: `direct-tcpip` to host:port, or `direct-streamlocal` to a unix socket. */
  async #open(remote: Endpoint, signal?: AbortSignal): Promise<Duplex> {
    if (this.#opensAfter !== undefined) await this.#opensAfter
    const options = signal ? { signal } : {}
    return remote.kind === 'unix'
      ? this.link.forwardOutUnix(remote.path, options)
      : this.link.forwardOut(remote.host, remote.port, options)
  }

  /** Opens and closes one channel per endpoint, so that a refused forward fails now and names its channel. */
  async #probe(wanted: readonly Endpoint[], signal?: AbortSignal): Promise<void> {
    const results = await Promise.allSettled(
      wanted.map(async (endpoint) => {
        try {
          const stream = await this.#open(endpoint, signal)
          stream.destroy()
        } catch (err) {
          if (signal?.aborted === true) throw err
          throw onChannel(err, endpoint)
        }
      }),
    )
    const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (failure) throw failure.reason
  }

  /** Closes every listener and connection, removes the loopback copy, and lets go of the link. Safe twice. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#detach()
    await Promise.all([...this.#forwards.values()].map((f) => f.close()))
    this.#forwards.clear()
    await this.#sockets?.remove()
    await this.#copy?.remove()
    this.#claim?.release()
    await this.#release()
    this.emit('closed')
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}

/**
 * Reads a connection file (or takes parsed info), connects to the ssh server it names (or `options.ssh`),
 * and opens a loopback forward for every endpoint.
 *
 * @example
 * const tunnel = await openTunnel(file, { out: loopbackPath, hostKeyCheck: 'strict' })
 * tunnel.on('link:reconnecting', (e) => console.error('reconnecting', e.attempt))
 * // … run ipyparallel.Client(loopbackPath) …
 * await tunnel.close()
 */
export async function openTunnel(
  source: string | ConnectionInfo,
  options: OpenTunnelOptions = {},
): Promise<Tunnel> {
  const started = performance.now()
  const file = typeof source === 'string' ? source : undefined
  const info = typeof source === 'string' ? (await readConnectionFile(source)).info : source
  const destination = options.ssh ?? destinationOf(info)
  if (destination === undefined) {
    throw new IppTunnelError(
      'E_DESTINATION',
      `${file ?? 'connection info'}: field "ssh" is empty; pass --ssh user@host to say which server to forward through`,
    )
  }
  // No other process of the user writes or removes this copy while the claim is held; taken before anything at
  // the path is touched.
  const out = options.out
  const claim =
    out === undefined
      ? undefined
      : await CopyClaim.take(out, {
          runtimeDir: options.runtimeDir ?? defaultRuntimeDir(),
          command: options.owner ?? 'ipp-tunnel',
          ...(options.conflictHint !== undefined && { hint: options.conflictHint }),
        })
  let link: Link
  let pool: LinkPool
  let ownPool: boolean
  try {
    if (out !== undefined) {
      await options.beforeWrite?.(out)
      await prepareCopy(out, { source: file ?? options.sourceFile })
    }
    const target = await resolveTarget(destination, options)
    options.signal?.throwIfAborted()
    // a tunnel alone on its own pool may use the whole budget
    pool = options.pool ?? new LinkPool(options, { tunnelShare: 1 })
    ownPool = options.pool === undefined
    link = await pool.acquire(target, options.signal).catch(async (err: unknown) => {
      if (ownPool) await pool.close()
      throw err
    })
  } catch (err) {
    claim?.release()
    throw err
  }
  const release = async () => {
    await pool.release(link)
    if (ownPool) await pool.close()
  }
  const tunnel = await Tunnel.over(info, link, {
    release,
    budget: pool.tunnelBudget(),
    ...(options.signal !== undefined && { signal: options.signal }),
    ...(file !== undefined && { file }),
    ...(out !== undefined && { out }),
    ...(claim !== undefined && { claim }),
    ...(options.recorder !== undefined && { recorder: options.recorder }),
    ...(options.probe !== undefined && { probe: options.probe }),
    ...(options.listen !== undefined && { listen: options.listen }),
    ...(options.socketDir !== undefined && { socketDir: options.socketDir }),
  })
  tunnel.readyMs = performance.now() - started
  return tunnel
}
