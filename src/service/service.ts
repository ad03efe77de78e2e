import { EventEmitter } from 'node:events'
import { lstat } from 'node:fs/promises'
import { homedir } from 'node:os'
import { posix } from 'node:path'
import { basename, join, resolve } from 'node:path'

import {
  destinationOf,
  isTunnelledKernelName,
  kindFromFileName,
  parseConnectionFile,
  siblingEngineFile,
  type ConnectionInfo,
  type ConnectionKind,
} from '../connection-file/index.js'
import { IppTunnelError, isIppTunnelError } from '../errors/index.js'
import { ensureReadableDir, identityOf, removeStaleTemps } from '../safe-fs/index.js'
import {
  DEFAULT_MAX_REMOTE_FILES,
  jupyterRuntimeDir,
  LocalDirectorySource,
  localCopyDir,
  RemoteDirectorySource,
  type SourceEvents,
  type SourceFile,
  type SourceStatus,
} from '../sources/index.js'
import {
  chooseDestination,
  defaultOutPath,
  descriptorLimit,
  isOverBudget,
  LinkPool,
  noteCarried,
  openTunnel,
  rootBudget,
  sameServer,
  whenReleased,
  type Tunnel,
} from '../tunnel/index.js'
import { CredentialRenewer, resolveTarget, type ResolvedTarget } from '../ssh/index.js'
import { CopyLedger } from './ledger.js'
import { LoginRelay } from './login-relay.js'
import { KernelHost } from './kernel-host.js'
import { RemoteLinks } from './remote-links.js'
import { checkServiceDirs, STATUS_SOCKET } from './paths.js'
import { StatusServer, type StatusReport } from './status-socket.js'
import type {
  FileStatus,
  ReadyFields,
  RemoteDir,
  RemoteFields,
  ServiceEvents,
  ServiceOptions,
} from './types.js'

interface Entry {
  readonly file: string
  readonly out: string
  /** For a file pulled from a remote directory: where from. */
  readonly remote: { readonly destination: string; readonly path: string } | undefined
  /** The source that reports the file, and what it reported last. */
  readonly source: Source
  pulled: SourceFile | undefined
  kind: ConnectionKind | undefined
  tunnel: Tunnel | undefined
  /** The ssh destination the tunnel was opened for. */
  destination: string | undefined
  /** The sibling client file `destination` came from, if it did. */
  sshFrom: string | undefined
  appliedText: string | undefined
  lastError: FileStatus['lastError']
  /** Size and mtime at the last failed parse: a file that keeps changing is still being written. */
  lastFailedShape: string | undefined
  retry: NodeJS.Timeout | undefined
  /** Failed attempts to reach the file's endpoints since its last change. */
  attempts: number
  /** Work on one file runs one step at a time, in order. */
  queue: Promise<void>
  /** Steps queued or running. */
  pending: number
  started: number
  /** Set while the copy's path is held by another file or process: the file is tried again when it is let go. */
  conflict: { stop: () => void } | undefined
  /** The copy was replaced by another file (left alone); it is written again once that file is gone. */
  copyReplaced: boolean
  /** A forward of this file failed and was reported; reported again only after the file or the link changes. */
  forwardFailed: boolean
}

/** A source of connection files, local or remote: the service treats both alike. */
interface Source extends EventEmitter<SourceEvents> {
  /** Read the file again soon (content that did not parse while still changing); a poll does that anyway. */
  lookAgain?(id: string, ms: number): void
  close(): Promise<void>
}

/** How long to wait before parsing a file again when it failed to parse while still changing. */
const REWRITE_RETRY_MS = 50
/** First and longest wait before trying again to reach an ssh server or endpoints that could not be reached. */
const CONNECT_RETRY_MS = { first: 100, max: 10_000 }
/**
 * A controller writes its files before every socket listens: for this long after a change, endpoints that refuse
 * are retried quietly; after it, each failure is reported (and still retried).
 */
const QUIET_RETRY_MS = 5000
/**
 * Descriptors one pulled file's tunnel is counted to hold (its listeners: an ipyparallel client file has nine
 * channels), for the reserve the pool keeps out of its connection budget.
 */
const FDS_PER_PULLED_FILE = 10

/** What the host-key check suggests for an unknown key, and what is said instead for a host a pulled file names. */
const ACCEPT_NEW_HINT =
  /run ipp-tunnel with --host-key-check accept-new to trust it, or, after checking the fingerprint, add it with/
const UNKNOWN_HOST_HINT =
  'a file on that server chose this host, so do not trust it blindly: check the fingerprint out of band, then add it with'

/** Failures worth trying again without a change of the file: the server or the controller may come up. */
const RETRIED: ReadonlySet<string> = new Set(['E_CONNECT', 'E_LINK_DOWN', 'E_FORWARD', 'E_TIMEOUT'])
/** How often the copies are looked at (removed or replaced behind the service's back) and conflicts retried. */
const CHECK_MS = 2000

/**
 * The background service: watches directories for connection files and keeps, for each, tunnels and a loopback
 * copy; files naming the same ssh route share one ssh connection.
 *
 * @example
 * const service = await TunnelService.start({ dirs: [profileSecurityDir('default')], runtimeDir: runtimeDir() })
 * service.on('ready', (e) => console.log(e.file, '->', e.out))
 * // … later
 * await service.close()
 */
export class TunnelService extends EventEmitter<ServiceEvents> {
  readonly dirs: readonly string[]
  readonly #options: ServiceOptions
  readonly #pool: LinkPool
  readonly #ledger: CopyLedger
  readonly #relay = new LoginRelay()
  readonly #entries = new Map<string, Entry>()
  readonly #sources: Source[] = []
  readonly #remoteSources: RemoteDirectorySource[] = []
  readonly #remoteLinks: RemoteLinks
  readonly #kernels: KernelHost
  /** Connection files followed per remote directory: their listeners fit in half the descriptor limit. */
  readonly #maxRemoteFiles: number
  /** Which entry writes each local copy: two files never write the same one. */
  readonly #claims = new Map<string, string>()
  #status: StatusServer | undefined
  readonly #since = new Date().toISOString()
  /** Aborts tunnels still opening (an ssh connect can take long) when the service closes. */
  readonly #abort = new AbortController()
  readonly #checks: NodeJS.Timeout
  #closed = false
  readonly #warnedCerts = new Set<string>()

  /** `--credential-command` with its prompts relayed to `ipp-tunnel login`, waiting for one when no one is there. */
  #relayedCredential(credential: CredentialRenewer): CredentialRenewer {
    const relay = this.#relay
    const signal = this.#abort.signal
    return new CredentialRenewer({
      ...credential.options,
      prompt: async (request) => {
        const now = await relay.provider(request)
        if (now !== undefined) return now
        await relay.gate.wait(request.destination, signal)
        return relay.provider(request)
      },
    })
  }

  private constructor(options: ServiceOptions, ledger: CopyLedger) {
    super()
    this.dirs = options.dirs.map((d) => resolve(d))
    this.#options = options
    // No one watches the service: prompts go to `ipp-tunnel login`, and a link that needs one waits for it.
    const remotes = options.remotes?.length ?? 0
    const limit = descriptorLimit()
    this.#maxRemoteFiles =
      limit === undefined || remotes === 0
        ? DEFAULT_MAX_REMOTE_FILES
        : Math.max(
            1,
            Math.min(DEFAULT_MAX_REMOTE_FILES, Math.floor(limit / 2 / (remotes * FDS_PER_PULLED_FILE))),
          )
    this.#pool = new LinkPool(
      {
        ...options,
        prompt: this.#relay.provider,
        login: this.#relay.gate,
        ...(options.credential !== undefined && { credential: this.#relayedCredential(options.credential) }),
      },
      { budget: rootBudget(limit, remotes * this.#maxRemoteFiles * FDS_PER_PULLED_FILE) },
    )
    this.#remoteLinks = new RemoteLinks(this.#pool, options)
    this.#kernels = new KernelHost(this.#pool, this.#relay, options)
    this.#ledger = ledger
    this.#relay.on('auth-needed', (login) => this.emit('auth-needed', login))
    this.#relay.on('logged-in', (e) => this.emit('logged-in', e))
    this.#checks = setInterval(() => this.#checkCopies(), options.checkMs ?? CHECK_MS)
    this.#checks.unref()
  }

  /**
   * Verifies the runtime directory (a real directory, the user's, mode 0700) and the output directories (never a
   * watched directory, even through a symlink; the user's and not group/other-writable), claims the status socket
   * (refusing when another service already runs there), removes copies and temp files a crashed run left behind,
   * creates missing watched directories (0700), and starts watching. Files already present are picked up right
   * away; their `ready` events follow.
   */
  static async start(options: ServiceOptions): Promise<TunnelService> {
    const dirs = options.dirs.map((d) => resolve(d))
    const remotes = options.remotes ?? []
    if (dirs.length === 0 && remotes.length === 0)
      throw new IppTunnelError('E_USAGE', 'nothing to watch: give --profile, --dir or --remote')
    const outDirs = await checkServiceDirs(dirs, options)
    const service = new TunnelService(options, await CopyLedger.open(join(options.runtimeDir, 'copies.json')))
    service.#status = await StatusServer.listen(
      join(options.runtimeDir, STATUS_SOCKET),
      () => service.report(),
      (socket, destination, rest) => service.#relay.attach(socket, destination, rest),
      (socket, request, rest) => service.#kernels.serve(socket, request, rest),
    )
    try {
      // Copies of pulled files land where local tools look (a profile's -tunnel dir, the Jupyter runtime dir); a
      // kernel file's copy beside it, in the watched directory.
      const copyDirs = [...outDirs, ...dirs, ...service.#remoteCopyDirs(remotes)]
      await service.#ledger.removeLeftovers(copyDirs)
      await removeStaleTemps(options.runtimeDir)
      for (const out of outDirs) await removeStaleTemps(out, (name) => kindFromFileName(name) !== undefined)
      for (const dir of dirs) await ensureReadableDir(dir)
      for (const remote of remotes) service.#followRemote(remote)
      if (dirs.length > 0) await LocalDirectorySource.start(dirs, (source) => service.#attach(source))
    } catch (err) {
      await service.close()
      throw err
    }
    return service
  }

  /** What `ipp-tunnel status` shows: every file held, plus the service's own facts. */
  report(): StatusReport {
    return {
      pid: process.pid,
      since: this.#since,
      dirs: this.dirs,
      links: this.linkCount,
      files: this.status(),
      remotes: this.remoteStatus(),
      logins: this.#relay.pending(),
      kernels: this.#kernels.status(),
    }
  }

  /** Every remote directory followed: destination, directory, last poll, files held, errors. */
  remoteStatus(): SourceStatus[] {
    return this.#remoteSources.map((s) => s.status())
  }

  get closed(): boolean {
    return this.#closed
  }

  /** The number of ssh connections the service holds. */
  get linkCount(): number {
    return this.#pool.links().size
  }

  /** Every file the service holds, with its link, forwards and counters. No secrets. */
  status(): FileStatus[] {
    return [...this.#entries.values()].map((entry) => {
      const tunnel = entry.tunnel
      const stats = tunnel?.stats()
      return {
        file: entry.file,
        kind: entry.kind,
        out: entry.out,
        destination: tunnel?.link.destination,
        state: tunnel ? 'ready' : entry.lastError ? 'error' : 'pending',
        link: tunnel?.link.state,
        reconnects: tunnel?.link.stats.reconnects ?? 0,
        forwards: (tunnel?.forwards ?? []).map((f) => {
          const s = stats?.get(f.channel)
          return {
            ...f,
            open: s?.open ?? 0,
            accepted: s?.accepted ?? 0,
            bytesIn: s?.bytesIn ?? 0,
            bytesOut: s?.bytesOut ?? 0,
          }
        }),
        copy: tunnel === undefined ? 'none' : entry.copyReplaced ? 'replaced' : 'written',
        lastError: entry.lastError,
        ...(entry.remote !== undefined && { remote: entry.remote }),
        ...this.#certificateOf(tunnel?.link),
      }
    })
  }

  /** The certificate a link's destination logged in with, as `--credential-command` last saw it. */
  #certificateOf(link: { readonly target: ResolvedTarget } | undefined): Pick<FileStatus, 'certificate'> {
    const hop = link?.target.hops.at(-1)
    const cert = hop === undefined ? undefined : this.#options.credential?.certificate(hop)
    if (cert === undefined) return {}
    const expires =
      cert.validBefore === undefined ? undefined : new Date(cert.validBefore * 1000).toISOString()
    return { certificate: { path: cert.path, keyId: cert.keyId, serial: cert.serial, expires } }
  }

  /** A `warning` once per certificate that expires within the hour. */
  #warnExpiring(): void {
    for (const file of this.status()) {
      const c = file.certificate
      if (c?.expires === undefined) continue
      const left = Date.parse(c.expires) - Date.now()
      const seen = `${c.path} ${c.expires}`
      if (left > 3_600_000 || this.#warnedCerts.has(seen)) continue
      this.#warnedCerts.add(seen)
      this.emit('warning', {
        file: c.path,
        message: `certificate ${c.path} (key id ${JSON.stringify(c.keyId)}) for ${file.destination ?? ''} expires at ${c.expires}${left > 0 ? '' : ' (expired)'}; --credential-command renews it at the next connect`,
      })
    }
  }

  /** Starts following one remote directory; its SFTP session rides on the pooled link to its destination. */
  #followRemote(remote: RemoteDir): void {
    const source = new RemoteDirectorySource({
      destination: remote.destination,
      dir: remote.dir,
      sftp: async (signal, stale) =>
        (await this.#remoteLinks.get(remote.destination, signal)).sftp({
          signal,
          ...(stale !== undefined && { stale }),
        }),
      ...(this.#options.pollMs !== undefined && { pollMs: this.#options.pollMs }),
      maxFiles: this.#maxRemoteFiles,
      onBytes: noteCarried,
    })
    this.#remoteSources.push(source)
    source.on('watching', (e) => {
      if (e.kind === 'remote')
        this.emit('remote:watching', { destination: e.destination, dir: e.dir, present: e.present })
    })
    source.on('dir:error', (e) => {
      const id = `${e.destination}:${e.dir}`
      this.emit('file:error', { file: id, code: e.code, message: e.message, ...remoteOf(id, e.destination) })
    })
    this.#attach(source, (id) => remoteOf(id, remote.destination))
    source.start()
  }

  /**
   * What the service does with any source's reports: a file is a file, wherever it was found. `fieldsOf` gives
   * the fields that say where a file came from, for events about it.
   */
  #attach(source: Source, fieldsOf: (id: string) => RemoteFields | Record<string, never> = () => ({})): void {
    this.#sources.push(source)
    source.on('file', (file) => this.#found(source, file))
    source.on('removed', ({ id }) => {
      if (this.#entries.has(id)) this.#schedule(id, (entry) => this.#onRemoved(entry))
    })
    source.on('file:error', (e) => {
      const entry = this.#entries.get(e.id)
      if (entry) entry.lastError = { code: e.code, message: e.message, at: new Date().toISOString() }
      this.emit('file:error', { file: e.id, code: e.code, message: e.message, ...fieldsOf(e.id) })
    })
    source.on('warning', (e) => this.emit('warning', { file: e.id, message: e.message }))
  }

  /** A source found a file (new, changed, or looked at again). */
  #found(source: Source, file: SourceFile): void {
    const at = performance.now()
    if (!this.#entries.has(file.id)) {
      const entry = this.#entryFor(source, file)
      if (entry === undefined) return
      this.#entries.set(file.id, entry)
    }
    this.#schedule(file.id, (entry) => {
      entry.pulled = file
      entry.started = at
      entry.attempts = 0
      return this.#onFile(entry)
    })
  }

  /** A new entry for a file a source found, with where its copy goes; undefined (and said why) if nowhere. */
  #entryFor(source: Source, file: SourceFile): Entry | undefined {
    if (file.origin.kind === 'local')
      return this.#newEntry(file.id, this.#outPath(file.id), undefined, source)
    const kind = kindFromFileName(file.path)
    const dir = localCopyDir(file.path, kind, this.#copyPlaces())
    const remote = { source: 'remote' as const, destination: file.origin.destination, path: file.path }
    const refuse = (message: string): undefined => {
      this.emit('file:error', { file: file.id, code: 'E_USAGE', message, ...remote })
    }
    if (dir === undefined) {
      return refuse(
        `${file.id}: no local place for a copy of a file outside a profile's security directory; give --out-dir`,
      )
    }
    if (this.dirs.includes(resolve(dir))) {
      return refuse(`${file.id}: its copy would go to ${dir}, which is watched here; give --out-dir`)
    }
    return this.#newEntry(file.id, join(dir, basename(file.path)), remote, source)
  }

  /** The local directories copies of files pulled from `remotes` may land in (for the ledger's cleanup). */
  #remoteCopyDirs(remotes: readonly RemoteDir[]): string[] {
    if (remotes.length === 0) return []
    const places = this.#copyPlaces()
    const dirs = remotes.map((r) =>
      localCopyDir(posix.join(r.dir, 'ipcontroller-client.json'), undefined, places),
    )
    return [places.runtimeDir, ...dirs].filter((d): d is string => d !== undefined).map((d) => resolve(d))
  }

  #copyPlaces(): { ipythonDir: string; runtimeDir: string; outDir: string | undefined } {
    return {
      ipythonDir: this.#options.ipythonDir ?? ipythonDirOf(this.#options.env),
      runtimeDir: this.#options.jupyterRuntimeDir ?? jupyterRuntimeDir(this.#options.env ?? process.env),
      outDir: this.#options.outDir !== undefined ? resolve(this.#options.outDir) : undefined,
    }
  }

  #outPath(file: string): string {
    if (this.#options.outDir !== undefined) return join(resolve(this.#options.outDir), basename(file))
    return defaultOutPath(file)
  }

  #retry(entry: Entry, ms: number): void {
    clearTimeout(entry.retry)
    entry.retry = setTimeout(() => this.#schedule(entry.file, (e) => this.#onFile(e)), ms)
    entry.retry.unref()
  }

  #schedule(file: string, step: (entry: Entry) => Promise<void>): void {
    if (this.#closed) return
    const target = this.#entries.get(file)
    if (target === undefined) return
    clearTimeout(target.retry)
    target.pending++
    target.queue = target.queue
      .then(() => (this.#closed ? undefined : step(target)))
      .catch(() => undefined)
      .finally(() => target.pending--)
  }

  #newEntry(file: string, out: string, remote: Entry['remote'], source: Source): Entry {
    return {
      file,
      out,
      remote,
      source,
      pulled: undefined,
      kind: undefined,
      tunnel: undefined,
      destination: undefined,
      sshFrom: undefined,
      appliedText: undefined,
      lastError: undefined,
      lastFailedShape: undefined,
      retry: undefined,
      attempts: 0,
      pending: 0,
      queue: Promise.resolve(),
      started: performance.now(),
      conflict: undefined,
      copyReplaced: false,
      forwardFailed: false,
    }
  }

  async #onFile(entry: Entry): Promise<void> {
    const pulled = entry.pulled
    if (pulled === undefined) return
    const text = pulled.text
    if (text === entry.appliedText) return
    let info: ConnectionInfo
    try {
      info = parseConnectionFile(text, entry.file)
    } catch (err) {
      // A writer that writes in place (ipcontroller) is caught half-way: looked at again until the file settles
      // (a remote source looks again on its next poll).
      if (!pulled.settled) {
        if (entry.source.lookAgain === undefined) return
        if (pulled.shape !== entry.lastFailedShape) {
          entry.lastFailedShape = pulled.shape
          entry.source.lookAgain(entry.file, REWRITE_RETRY_MS)
          return
        }
      }
      return this.#failed(entry, err)
    }
    entry.lastFailedShape = undefined
    entry.kind = info.kind
    const named = info.kind === 'ipp-client' ? destinationOf(info) : undefined
    if (named !== undefined) this.#retrySiblingEngine(entry.file, named)
    await this.#apply(entry, info, text)
  }

  /**
   * An engine file that names no ssh server follows its client file: one still waiting for a server tries again, and
   * one that took the server from the client file follows it to a new one.
   */
  #retrySiblingEngine(clientFile: string, destination: string): void {
    const engineFile = siblingEngineFile(clientFile)
    const engine = engineFile === undefined ? undefined : this.#entries.get(engineFile)
    if (engineFile === undefined || engine === undefined) return
    const moved = engine.sshFrom === clientFile && engine.destination !== destination
    if (engine.tunnel !== undefined && !moved) return
    const at = performance.now()
    this.#schedule(engineFile, (e) => {
      e.started = at
      e.attempts = 0
      e.appliedText = undefined // the file is the same, what it resolves to is not
      return this.#onFile(e)
    })
  }

  async #apply(entry: Entry, info: ConnectionInfo, text: string): Promise<void> {
    const current = entry.tunnel
    /** A conflict found here, not by another process's claim: waited out by the periodic look. */
    let localConflict = false
    try {
      // A pulled file's endpoints are seen from the host it came from, unless it names its own server.
      const { destination, sshFrom } =
        entry.remote !== undefined
          ? { destination: await this.#pulledDestination(info, entry.remote.destination), sshFrom: undefined }
          : await chooseDestination(
              info,
              entry.file,
              this.#options.ssh,
              'start the service with --ssh user@host',
            )
      const holder = this.#claims.get(entry.out)
      if (holder !== undefined && holder !== entry.file) {
        localConflict = true
        throw new IppTunnelError(
          'E_COPY_CONFLICT',
          `${entry.file}: its copy ${entry.out} is already written for ${holder}; give --out-dir, or follow only one of them`,
        )
      }
      this.#claims.set(entry.out, entry.file)
      this.#endConflict(entry)
      if (
        current &&
        !current.closed &&
        current.link.state !== 'failed' &&
        destination === entry.destination
      ) {
        await current.update(info)
        entry.sshFrom = sshFrom
        entry.appliedText = text
        entry.lastError = undefined
        entry.forwardFailed = false
        this.emit('changed', this.#readyFields(entry, current))
        return
      }
      if (current) {
        entry.tunnel = undefined
        await current.close()
      }
      const tunnel = await openTunnel(info, {
        ...this.#options,
        ssh: destination,
        pool: this.#pool,
        socketDir: this.#options.runtimeDir,
        runtimeDir: this.#options.runtimeDir,
        owner: 'ipp-tunnel watch',
        conflictHint: 'give --out-dir, or stop that process; the copy is written once it lets go',
        // every copy is in the ledger before it takes its name: a crash at any point leaves nothing behind
        recorder: this.#ledger,
        out: entry.out,
        // Copies of pulled files land in shared places (the Jupyter runtime dir), and so does a kernel file's copy
        // beside it (jupyter console --ssh writes the same name): never over a file not ours.
        ...((entry.remote !== undefined || isTunnelledKernelName(entry.out)) && {
          beforeWrite: async (out: string) => {
            const present = await lstat(out).then(
              () => true,
              () => false,
            )
            if (present && !this.#ledger.holds(out, await identityOf(out).catch(() => undefined))) {
              localConflict = true
              throw new IppTunnelError(
                'E_COPY_CONFLICT',
                `${entry.file}: its copy would replace ${out}, which this service did not write; move that file away or give --out-dir`,
              )
            }
          },
        }),
        ...(entry.remote === undefined && { sourceFile: entry.file }),
        signal: this.#abort.signal,
      })
      if (this.#closed || !this.#entries.has(entry.file)) {
        await tunnel.close()
        return
      }
      entry.tunnel = tunnel
      entry.destination = destination
      entry.sshFrom = sshFrom
      entry.appliedText = text
      entry.lastError = undefined
      entry.forwardFailed = false
      entry.copyReplaced = false
      this.#follow(entry, tunnel)
      this.emit(current ? 'changed' : 'ready', this.#readyFields(entry, tunnel))
    } catch (err) {
      if (!entry.tunnel) {
        if (this.#claims.get(entry.out) === entry.file) this.#release(entry)
        // a copy another file of this service writes stays listed
        if (!this.#claims.has(entry.out)) await this.#ledger.remove(entry.out)
      }
      if (this.#closed) return
      const conflict = isIppTunnelError(err) && err.code === 'E_COPY_CONFLICT'
      // a conflict is said once, not again at each look
      const repeated =
        conflict && entry.lastError?.code === err.code && entry.lastError.message === err.message
      if (conflict && !entry.tunnel) this.#inConflict(entry, !localConflict)
      const retried = isIppTunnelError(err) && RETRIED.has(err.code)
      const quiet = (retried && performance.now() - entry.started < QUIET_RETRY_MS) || repeated
      if (!quiet) this.#failed(entry, err)
      if (retried) {
        entry.attempts++
        this.#retry(entry, Math.min(CONNECT_RETRY_MS.max, CONNECT_RETRY_MS.first * 2 ** (entry.attempts - 1)))
      }
    }
  }

  /**
   * Where a pulled file is tunnelled through: the server it came from, unless its own `ssh` names another. A name
   * for the same server (its address rather than an alias, an explicit port 22) is the same server: its link is
   * reused rather than a second login asked for.
   */
  async #pulledDestination(info: ConnectionInfo, from: string): Promise<string> {
    const named = destinationOf(info)
    if (named === undefined || named === from) return from
    const [a, b] = await Promise.all(
      [named, from].map((ssh) => resolveTarget(ssh, { ...this.#options, ssh }).catch(() => undefined)),
    )
    return a !== undefined && b !== undefined && (await sameServer(a, b)) ? from : named
  }

  #readyFields(entry: Entry, tunnel: Tunnel): ReadyFields {
    return {
      file: entry.file,
      out: entry.out,
      ms: performance.now() - entry.started,
      forwards: tunnel.forwards,
      ...(entry.sshFrom !== undefined && { sshFrom: entry.sshFrom }),
      ...remoteFields(entry),
    }
  }

  #follow(entry: Entry, tunnel: Tunnel): void {
    const filesOn = () =>
      [...this.#entries.values()].filter((e) => e.tunnel?.link === tunnel.link).map((e) => e.file)
    // One report per link: the first file on a shared link speaks for all of them.
    const speaks = () => filesOn()[0] === entry.file
    tunnel.on('link:reconnecting', (e) => {
      // status shows why the link is down while it retries
      entry.lastError = { code: codeOf(e.error), message: e.error.message, at: new Date().toISOString() }
      if (speaks()) {
        this.emit('link:reconnecting', {
          destination: tunnel.link.destination,
          files: filesOn(),
          attempt: e.attempt,
          delayMs: e.delayMs,
          message: e.error.message,
        })
      }
    })
    tunnel.on('link:reconnected', (e) => {
      entry.forwardFailed = false
      if (speaks()) {
        this.emit('link:reconnected', {
          destination: tunnel.link.destination,
          files: filesOn(),
          attempt: e.attempt,
          downMs: e.downMs,
        })
      }
    })
    tunnel.on('link:failed', (e) => this.#failed(entry, e.error))
    tunnel.on('forward:error', (e) => {
      const message = `channel ${e.channel}: ${e.error.message}`
      entry.lastError = { code: codeOf(e.error), message, at: new Date().toISOString() }
      // a kernel or controller gone from under its file: said once (not only in status), until the file changes;
      // local load (the budget) is said by the forward-error lines alone
      if (entry.forwardFailed || this.#closed || isOverBudget(e.error)) return
      entry.forwardFailed = true
      this.emit('file:error', { file: entry.file, code: codeOf(e.error), message, ...remoteFields(entry) })
    })
  }

  /** Lets go of the entry's copy path, and tries again the files that wait for it. */
  #release(entry: Entry): void {
    if (this.#claims.get(entry.out) !== entry.file) return
    this.#claims.delete(entry.out)
    for (const other of this.#entries.values()) {
      if (other !== entry && other.out === entry.out && other.conflict !== undefined) this.#recheck(other)
    }
  }

  /**
   * The entry's copy path is held by another file here, by another process, or by a file the service did not
   * write: it is tried again when another process lets go (its claim's connection closes), when a file here lets
   * go, and at each periodic check (a planted file moved away).
   */
  #inConflict(entry: Entry, claimed: boolean): void {
    if (entry.conflict !== undefined) return
    if (!claimed) {
      entry.conflict = { stop: () => undefined }
      return
    }
    const stop = whenReleased(entry.out, this.#options.runtimeDir, () => {
      // the next conflict, if any, waits anew
      entry.conflict = undefined
      this.#recheck(entry)
    })
    entry.conflict = { stop }
  }

  #endConflict(entry: Entry): void {
    entry.conflict?.stop()
    entry.conflict = undefined
  }

  #recheck(entry: Entry): void {
    const at = performance.now()
    this.#schedule(entry.file, (e) => {
      if (e.tunnel !== undefined) return Promise.resolve()
      e.started = at
      e.attempts = 0
      return this.#onFile(e)
    })
  }

  /**
   * The periodic look: a copy removed behind the service's back is written again; one replaced by another file is
   * reported once and left alone until that file goes; files waiting on a conflict are tried again.
   */
  #checkCopies(): void {
    this.#warnExpiring()
    for (const entry of this.#entries.values()) {
      if (entry.conflict !== undefined) {
        this.#recheck(entry)
        continue
      }
      if (entry.tunnel === undefined || entry.pending > 0) continue
      this.#schedule(entry.file, (e) => this.#checkCopy(e))
    }
  }

  async #checkCopy(entry: Entry): Promise<void> {
    const tunnel = entry.tunnel
    if (tunnel === undefined) return
    let state
    try {
      state = await tunnel.checkCopy()
    } catch (err) {
      return this.#failed(entry, err)
    }
    if (state === undefined || this.#closed || entry.tunnel !== tunnel) return
    if (state === 'replaced') {
      if (entry.copyReplaced) return
      entry.copyReplaced = true
      return this.#failed(
        entry,
        new IppTunnelError(
          'E_COPY_CONFLICT',
          `${entry.file}: its copy ${entry.out} was replaced by another file, which is left alone; move that file away and the copy is written again`,
        ),
      )
    }
    if (state === 'restored') {
      const was = entry.copyReplaced ? 'replaced by a file since moved away' : 'removed'
      entry.copyReplaced = false
      if (entry.lastError?.code === 'E_COPY_CONFLICT') entry.lastError = undefined
      this.emit('warning', {
        file: entry.file,
        message: `${entry.out}: the loopback copy was ${was}; written again`,
      })
    }
  }

  #failed(entry: Entry, err: unknown): void {
    const code = codeOf(err)
    let message = err instanceof Error ? err.message : String(err)
    // The server a pulled file names was chosen by whoever wrote the file: accept-new would trust any host it names.
    if (entry.remote !== undefined && code === 'E_HOSTKEY_UNKNOWN') {
      message = `${entry.file} names the ssh server: ${message.replace(ACCEPT_NEW_HINT, UNKNOWN_HOST_HINT)}`
    }
    entry.lastError = { code, message, at: new Date().toISOString() }
    this.emit('file:error', { file: entry.file, code, message, ...remoteFields(entry) })
  }

  async #onRemoved(entry: Entry): Promise<void> {
    clearTimeout(entry.retry)
    const tunnel = entry.tunnel
    entry.tunnel = undefined
    entry.destination = undefined
    entry.sshFrom = undefined
    entry.appliedText = undefined
    entry.lastError = undefined
    entry.lastFailedShape = undefined
    entry.pulled = undefined
    this.#endConflict(entry)
    entry.copyReplaced = false
    entry.forwardFailed = false
    if (tunnel) {
      await tunnel.close()
      await this.#ledger.remove(entry.out)
      this.emit('closed', { file: entry.file, ...remoteFields(entry) })
    }
    // let go once the copy is gone, so that a file waiting for the path writes it anew
    this.#release(entry)
    // The file may be back already (its step waits in this entry's queue): then the entry stays.
    if (entry.pending <= 1 && this.#entries.get(entry.file) === entry) this.#entries.delete(entry.file)
  }

  /** Stops watching, closes every tunnel and link, and removes every loopback copy. Safe twice. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearInterval(this.#checks)
    this.#abort.abort(new IppTunnelError('E_CLOSED', 'The service is closing'))
    this.#relay.close()
    await this.#kernels.close()
    await this.#status?.close()
    await Promise.all(this.#sources.map((s) => s.close()))
    const entries = [...this.#entries.values()]
    this.#entries.clear()
    for (const entry of entries) {
      clearTimeout(entry.retry)
      this.#endConflict(entry)
    }
    await Promise.all(entries.map((e) => e.queue))
    await Promise.all(entries.map((e) => (e.tunnel ? e.tunnel.close() : Promise.resolve())))
    await this.#pool.close()
    await this.#ledger.clear()
    for (const entry of entries)
      if (entry.tunnel) this.emit('closed', { file: entry.file, ...remoteFields(entry) })
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}

function remoteFields(entry: Entry): RemoteFields | Record<string, never> {
  return entry.remote ? { source: 'remote', ...entry.remote } : {}
}

/** The fields of an event about `id` (`destination:path`) of a remote source. */
function remoteOf(id: string, destination: string): RemoteFields {
  return { source: 'remote', destination, path: id.slice(destination.length + 1) }
}

function ipythonDirOf(env: Readonly<Record<string, string | undefined>> | undefined): string {
  return (env ?? process.env).IPYTHONDIR ?? join(homedir(), '.ipython')
}

function codeOf(err: unknown): string {
  return isIppTunnelError(err) ? err.code : 'E_INTERNAL'
}
