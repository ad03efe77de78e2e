import { EventEmitter } from 'node:events'
import { posix } from 'node:path'

import { destinationOf, parseConnectionFile, type ConnectionInfo } from '../connection-file/index.js'
import { IppTunnelError, isIppTunnelError } from '../errors/index.js'
import { RemoteDirectorySource, type RemoteSpec, type SourceFile } from '../sources/index.js'
import { resolveTarget, type Link, type LinkOptions, type SshOptions } from '../ssh/index.js'
import { LinkPool, openTunnel, type ForwardInfo, type ListenKind, type Tunnel } from '../tunnel/index.js'

export interface PulledTunnelOptions extends SshOptions, Omit<LinkOptions, keyof SshOptions> {
  /** Where to write the loopback copy. */
  readonly out: string
  /** Milliseconds between polls of the remote file; default 1000. */
  readonly pollMs?: number
  /** What this process is, as another process's `E_COPY_CONFLICT` names it (as `openTunnel`'s `owner`). */
  readonly owner?: string
  /** What the local listeners are (as `openTunnel`'s `listen`); default `tcp`. */
  readonly listen?: ListenKind
  /** The pool to take the link from (shared with the caller's other work, and left open); default one of its own. */
  readonly pool?: LinkPool
  /** How long to wait for a file that is not there yet (a controller starting); default 0: it must be there. */
  readonly waitForFileMs?: number
  /** Milliseconds between looks while waiting for the file (before it is first there); default `pollMs`, at most 200. */
  readonly waitPollMs?: number
  readonly signal?: AbortSignal
}

/** Events of a {@link PulledTunnel}, besides those of its {@link Tunnel}. */
export interface PulledTunnelEvents {
  /** The remote file changed (a restarted controller) and the tunnel follows it, on the same local ports. */
  changed: [{ file: string; out: string; ms: number; forwards: readonly ForwardInfo[] }]
  /** The remote file went away (a stopped controller); the tunnel stays and follows the file when it is back. */
  removed: [{ file: string }]
  /** The remote file cannot be taken now (bad content, endpoints not reachable); still followed. */
  'file:error': [{ file: string; code: string; message: string }]
  warning: [{ file: string; message: string }]
}

/** Failures worth trying again without a change of the file: the controller's sockets may come up. */
const RETRIED: ReadonlySet<string> = new Set(['E_CONNECT', 'E_LINK_DOWN', 'E_FORWARD', 'E_TIMEOUT'])
const QUIET_RETRY_MS = 5000

/**
 * One connection file on an ssh server, pulled over SFTP, tunnelled through that server (unless the file names
 * another in its `ssh` field), and followed while it lives: a restarted controller's new file moves the
 * forwards to its new ports, keeping the local ones. What `up host:PATH` and `exec host:PATH` run on.
 *
 * @example
 * await using pulled = await PulledTunnel.open(
 *   { destination: 'me@cluster', path: '~/.ipython/profile_default/security/ipcontroller-client.json' },
 *   { out: '/tmp/ipcontroller-client.json' },
 * )
 * console.log(pulled.tunnel.forwards)
 */
export class PulledTunnel extends EventEmitter<PulledTunnelEvents> {
  /** `destination:path`, as events name the file. */
  readonly file: string
  readonly tunnel: Tunnel
  readonly #source: RemoteDirectorySource
  readonly #pool: LinkPool
  readonly #ownPool: boolean
  #appliedText: string
  #retry: NodeJS.Timeout | undefined
  /** The lease this holds on the pool's link for its SFTP session. */
  #link: Link | undefined
  #queue: Promise<void> = Promise.resolve()
  #closed = false

  private constructor(
    file: string,
    tunnel: Tunnel,
    source: RemoteDirectorySource,
    pool: LinkPool,
    ownPool: boolean,
    text: string,
  ) {
    super()
    this.file = file
    this.tunnel = tunnel
    this.#source = source
    this.#pool = pool
    this.#ownPool = ownPool
    this.#appliedText = text
  }

  /**
   * Pulls the file once (waiting out a file caught half-written), opens its tunnel, writes the copy, and starts
   * following the file.
   *
   * @throws IppTunnelError `E_CONNFILE_READ` when there is no such file, `E_REMOTE_FILE` when it is not a regular
   * file or too large, `E_CONNFILE_*` when it does not parse, and what {@link openTunnel} throws.
   */
  static async open(spec: RemoteSpec, options: PulledTunnelOptions): Promise<PulledTunnel> {
    if (spec.path === undefined)
      throw new IppTunnelError('E_USAGE', `${spec.destination}: no remote path given`)
    const pool = options.pool ?? new LinkPool(options)
    let source: RemoteDirectorySource | undefined
    let link: Link | undefined
    try {
      link = await pool.acquire(await resolveTarget(spec.destination, options), options.signal)
      const sftpLink = link
      source = new RemoteDirectorySource({
        destination: spec.destination,
        dir: posix.dirname(spec.path),
        only: posix.basename(spec.path),
        sftp: (signal, stale) => sftpLink.sftp({ signal, ...(stale !== undefined && { stale }) }),
        ...(options.pollMs !== undefined && { pollMs: options.pollMs }),
      })
      const { file, info, warnings } = await firstPull(source, spec.path, options.signal, {
        forMs: options.waitForFileMs ?? 0,
        everyMs: options.waitPollMs ?? Math.min(source.pollMs, 200),
      })
      const tunnel = await openTunnel(info, {
        ...options,
        ssh: destinationOf(info) ?? spec.destination,
        pool,
        out: options.out,
      })
      const pulled = new PulledTunnel(file.id, tunnel, source, pool, options.pool === undefined, file.text)
      pulled.#link = link
      source.on('file', (f) => pulled.#schedule(() => pulled.#onFile(f, performance.now())))
      source.on('removed', () => pulled.emit('removed', { file: pulled.file }))
      source.on('file:error', (e) =>
        pulled.emit('file:error', { file: e.id, code: e.code, message: e.message }),
      )
      source.on('dir:error', (e) =>
        pulled.emit('file:error', { file: pulled.file, code: e.code, message: e.message }),
      )
      source.on('warning', (e) => pulled.emit('warning', { file: e.id, message: e.message }))
      // first warnings were seen before anyone listened: hand them over on the next tick
      queueMicrotask(() => {
        for (const message of warnings) pulled.emit('warning', { file: file.id, message })
      })
      source.start()
      return pulled
    } catch (err) {
      await source?.close()
      if (options.pool === undefined) await pool.close()
      else if (link !== undefined) await pool.release(link)
      throw err
    }
  }

  get closed(): boolean {
    return this.#closed
  }

  #schedule(step: () => Promise<void>): void {
    this.#queue = this.#queue.then(() => (this.#closed ? undefined : step())).catch(() => undefined)
  }

  async #onFile(file: SourceFile, started: number, attempt = 0): Promise<void> {
    clearTimeout(this.#retry)
    if (file.text === this.#appliedText) return
    let info: ConnectionInfo
    try {
      info = parseConnectionFile(file.text, file.id)
    } catch (err) {
      // looked at again on the next poll: broken only once it stops changing
      if (file.settled) this.#failed(err)
      return
    }
    try {
      await this.tunnel.update(info)
      this.#appliedText = file.text
      this.emit('changed', {
        file: this.file,
        out: this.tunnel.out ?? '',
        ms: performance.now() - started,
        forwards: this.tunnel.forwards,
      })
    } catch (err) {
      const retried = isIppTunnelError(err) && RETRIED.has(err.code)
      if (!retried || performance.now() - started > QUIET_RETRY_MS) this.#failed(err)
      if (retried) {
        this.#retry = setTimeout(
          () => this.#schedule(() => this.#onFile(file, started, attempt + 1)),
          Math.min(5000, 100 * 2 ** attempt),
        )
      }
    }
  }

  #failed(err: unknown): void {
    this.emit('file:error', {
      file: this.file,
      code: isIppTunnelError(err) ? err.code : 'E_INTERNAL',
      message: err instanceof Error ? err.message : String(err),
    })
  }

  /** Stops following, closes the tunnel (removing the copy) and the ssh link. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearTimeout(this.#retry)
    await this.#source.close()
    await this.#queue
    await this.tunnel.close()
    if (this.#ownPool) await this.#pool.close()
    else if (this.#link !== undefined) await this.#pool.release(this.#link)
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}

/** Polls until the one file is there and parses; a file still being written is looked at again. */
async function firstPull(
  source: RemoteDirectorySource,
  path: string,
  signal: AbortSignal | undefined,
  wait: { forMs: number; everyMs: number },
): Promise<{ file: SourceFile; info: ConnectionInfo; warnings: string[] }> {
  const since = performance.now()
  let latest: SourceFile | undefined
  let problem: IppTunnelError | undefined
  const warnings: string[] = []
  const onFile = (f: SourceFile) => (latest = f)
  const onError = (e: { code: string; message: string }) =>
    (problem = new IppTunnelError(e.code === 'E_LINK_DOWN' ? 'E_LINK_DOWN' : 'E_REMOTE_FILE', e.message))
  const onDirError = (e: { code: string; message: string }) =>
    (problem = new IppTunnelError(e.code === 'E_REMOTE_DIR' ? 'E_REMOTE_DIR' : 'E_LINK_DOWN', e.message))
  const onWarning = (e: { message: string }) => warnings.push(e.message)
  source.on('file', onFile)
  source.on('file:error', onError)
  source.on('dir:error', onDirError)
  source.on('warning', onWarning)
  // a wait that lasts (a batch job's controller in the queue) looks once a second after its first seconds
  const pause = (): Promise<unknown> =>
    new Promise((resolve) =>
      setTimeout(resolve, performance.now() - since < 10_000 ? wait.everyMs : Math.max(wait.everyMs, 1000)),
    )
  try {
    // looks at a file that is there but does not parse: the waiting before it came does not count
    for (let unparsed = 0; ;) {
      signal?.throwIfAborted()
      latest = undefined
      await source.poll()
      if (problem) throw problem
      const got = latest as SourceFile | undefined
      if (got === undefined && performance.now() - since < wait.forMs) {
        await pause()
        continue
      }
      if (got === undefined) {
        const file = source.path !== undefined ? posix.join(source.path, posix.basename(path)) : path
        throw new IppTunnelError(
          'E_CONNFILE_READ',
          `${source.destination}:${file}: no such connection file (or its directory cannot be read)`,
        )
      }
      const file = got
      try {
        return { file, info: parseConnectionFile(file.text, file.id), warnings }
      } catch (err) {
        if (file.settled || ++unparsed > 20) throw err
      }
      await pause()
    }
  } finally {
    source.off('file', onFile)
    source.off('file:error', onError)
    source.off('dir:error', onDirError)
    source.off('warning', onWarning)
  }
}
