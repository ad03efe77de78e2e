import { EventEmitter } from 'node:events'
import { posix } from 'node:path'

import type { SFTPWrapper, Stats } from 'ssh2'

import { kindFromFileName } from '../connection-file/index.js'
import { IppTunnelError, isIppTunnelError } from '../errors/index.js'
import type { SourceEvents, SourceFile, SourceStatus } from './types.js'

/** Options of a {@link RemoteDirectorySource}. */
export interface RemoteDirectoryOptions {
  /** The ssh destination the directory is on, as the user wrote it (used in ids and messages). */
  readonly destination: string
  /** The remote directory: absolute, `~/…`, or relative to the remote home directory (as scp reads it). */
  readonly dir: string
  /**
   * Opens (or returns) the SFTP session on the live connection; called before every poll. `stale` is a session
   * this source gave up on (it stopped answering): open a new one instead.
   */
  readonly sftp: (signal: AbortSignal, stale?: SFTPWrapper) => Promise<SFTPWrapper>
  /** Milliseconds between the end of one poll and the start of the next; default 1000. */
  readonly pollMs?: number
  /** Files larger than this are refused before a byte is read; default 1 MiB. */
  readonly maxBytes?: number
  /** Follow only the file of this name (what `up host:PATH` does). */
  readonly only?: string
  /** A poll the server has not answered in this long ends the SFTP session (a new one is opened); default 15000. */
  readonly timeoutMs?: number
}

/** SFTP status codes (draft-ietf-secsh-filexfer-02) that ssh2 puts in `err.code`. */
const SFTP_NO_SUCH_FILE = 2
const SFTP_PERMISSION_DENIED = 3

const DEFAULT_POLL_MS = 1000
const DEFAULT_MAX_BYTES = 1024 * 1024
const DEFAULT_TIMEOUT_MS = 15_000

interface Known {
  /** `size:mtime` at the last poll. */
  shape: string
  /** The content last reported, if any. */
  text: string | undefined
  /** True once two polls in a row saw the same size and mtime (and the content was read again after the last change). */
  settled: boolean
  /** `code:shape` of the last error reported, so that one problem is reported once. */
  reported: string | undefined
}

function sftpCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | undefined)?.code
  return typeof code === 'number' ? code : undefined
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

function typeName(attrs: Stats): string {
  if (attrs.isSymbolicLink()) return 'a symbolic link'
  if (attrs.isDirectory()) return 'a directory'
  if (attrs.isFIFO()) return 'a FIFO'
  if (attrs.isSocket()) return 'a socket'
  if (attrs.isCharacterDevice() || attrs.isBlockDevice()) return 'a device'
  return 'not a regular file'
}

function call<T>(run: (cb: (err: Error | undefined | null, value: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    try {
      run((err, value) => {
        if (err) reject(err)
        else resolve(value)
      })
    } catch (err) {
      reject(err instanceof Error ? err : new Error(String(err)))
    }
  })
}

/**
 * Follows one directory on an ssh server through SFTP. SFTP has no change notification, so it polls: one
 * `readdir` (names with their attributes) per interval, one poll at a time. Only names shaped like connection
 * files are looked at; a file is read when its size or mtime changed (and once more on the next poll, since
 * SFTP mtimes have whole seconds), so an unchanged file costs nothing beyond the listing. Only regular files no
 * larger than `maxBytes` are read (checked in the listing, then again on the open handle). A directory that does
 * not exist yet is waited for without a word; a file that disappears is reported `removed`.
 *
 * @example
 * const link = new Link(await resolveTarget('me@cluster', {}))
 * await link.connect()
 * const source = new RemoteDirectorySource({
 *   destination: 'me@cluster',
 *   dir: '~/.ipython/profile_default/security',
 *   sftp: (signal) => link.sftp({ signal }),
 * })
 * source.on('file', (f) => console.log(f.id, f.text.length))
 * source.start()
 * await source.close()
 */
export class RemoteDirectorySource extends EventEmitter<SourceEvents> {
  readonly kind = 'remote'
  readonly destination: string
  readonly dir: string
  readonly pollMs: number
  readonly #options: RemoteDirectoryOptions
  readonly #maxBytes: number
  readonly #abort = new AbortController()
  readonly #known = new Map<string, Known>()
  #resolved: string | undefined
  #present: boolean | undefined
  #timer: NodeJS.Timeout | undefined
  #polling: Promise<void> | undefined
  /** The SFTP session the running poll uses. */
  #session: SFTPWrapper | undefined
  /** A session given up on, to be replaced at the next poll. */
  #stale: SFTPWrapper | undefined
  #closed = false
  #polls = 0
  #errors = 0
  #lastPoll: string | undefined
  #lastError: SourceStatus['lastError']
  /** `code` of the last directory-level problem reported, so that a lasting problem is reported once. */
  #dirProblem: string | undefined

  constructor(options: RemoteDirectoryOptions) {
    super()
    this.#options = options
    this.destination = options.destination
    this.dir = options.dir
    this.pollMs = options.pollMs ?? DEFAULT_POLL_MS
    this.#maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES
  }

  /** Starts polling (the first poll runs at once). Calling it twice does nothing more. */
  start(): void {
    if (this.#closed || this.#polling !== undefined || this.#timer !== undefined) return
    this.#schedule(0)
  }

  /** Runs one poll now (or joins the one running) and resolves when it is done. Mostly for tests and benches. */
  poll(): Promise<void> {
    if (this.#closed) return Promise.resolve()
    if (this.#polling !== undefined) return this.#polling
    clearTimeout(this.#timer)
    this.#timer = undefined
    this.#polling = this.#pollBounded().finally(() => {
      this.#polling = undefined
      if (!this.#closed) this.#schedule(this.pollMs)
    })
    return this.#polling
  }

  get closed(): boolean {
    return this.#closed
  }

  /** The directory as the server resolved it, once known. */
  get path(): string | undefined {
    return this.#resolved
  }

  status(): SourceStatus {
    return {
      kind: 'remote',
      destination: this.destination,
      dir: this.#resolved ?? this.dir,
      present: this.#present,
      lastPoll: this.#lastPoll,
      polls: this.#polls,
      files: [...this.#known.values()].filter((k) => k.text !== undefined).length,
      errors: this.#errors,
      lastError: this.#lastError,
    }
  }

  /** Stops polling; a poll in flight is abandoned. Files are not reported removed. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearTimeout(this.#timer)
    this.#abort.abort()
    await this.#polling?.catch(() => undefined)
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }

  #schedule(ms: number): void {
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      void this.poll()
    }, ms)
  }

  #id(path: string): string {
    return `${this.destination}:${path}`
  }

  /**
   * A poll that the server stops answering (sftp-server is one process: a FIFO swapped in between the listing and
   * the open blocks it for good) ends its SFTP session, which fails the poll's pending requests.
   */
  async #pollBounded(): Promise<void> {
    const ms = this.#options.timeoutMs ?? DEFAULT_TIMEOUT_MS
    let timer: NodeJS.Timeout | undefined
    let startClock = (): void => undefined
    // the clock starts once the session is open: opening one (and waiting for the link) has bounds of its own
    const late = new Promise<true>((resolve) => {
      startClock = () => (timer = setTimeout(() => resolve(true), ms))
    })
    const poll = this.#pollOnce(startClock)
    const timedOut = await Promise.race([poll.then(() => false), late])
    clearTimeout(timer)
    if (!timedOut) return
    this.#stale = this.#session
    this.#session = undefined
    this.#dirFailed(
      new IppTunnelError(
        'E_REMOTE_DIR',
        `${this.#id(this.#resolved ?? this.dir)}: the SFTP server did not answer within ${ms} ms; opening a new SFTP session`,
      ),
      'E_REMOTE_DIR',
    )
    await Promise.race([poll, new Promise((resolve) => setTimeout(resolve, 1000).unref())])
  }

  async #pollOnce(sessionOpen: () => void): Promise<void> {
    const signal = this.#abort.signal
    let sftp: SFTPWrapper
    try {
      sftp = await this.#options.sftp(signal, this.#stale)
      this.#stale = undefined
      this.#session = sftp
      sessionOpen()
      this.#resolved ??= await this.#resolve(sftp)
    } catch (err) {
      if (!signal.aborted) this.#dirFailed(err, 'E_LINK_DOWN')
      return
    }
    const dir = this.#resolved
    let list: Awaited<ReturnType<typeof readdir>>
    try {
      list = await readdir(sftp, dir)
    } catch (err) {
      if (signal.aborted) return
      const code = sftpCode(err)
      if (code === SFTP_NO_SUCH_FILE) {
        this.#polled(false)
        this.#dirProblem = undefined
        this.#goneAll()
        return
      }
      if (code === SFTP_PERMISSION_DENIED || code !== undefined) {
        this.#polled(true)
        this.#dirFailed(
          new IppTunnelError(
            'E_REMOTE_DIR',
            `${this.#id(dir)}: cannot list the directory (${code === SFTP_PERMISSION_DENIED ? 'permission denied' : message(err)})`,
            { cause: err },
          ),
          'E_REMOTE_DIR',
        )
        return
      }
      // The channel died under the request: the link is reconnecting; the next poll waits for it.
      this.#dirFailed(err, 'E_LINK_DOWN')
      return
    }
    this.#polled(true)
    this.#dirProblem = undefined
    const seen = new Set<string>()
    for (const entry of list) {
      if (signal.aborted) return
      const name = entry.filename
      if (
        this.#options.only !== undefined ? name !== this.#options.only : kindFromFileName(name) === undefined
      )
        continue
      seen.add(name)
      await this.#look(sftp, posix.join(dir, name), name, entry.attrs)
    }
    for (const name of [...this.#known.keys()]) if (!seen.has(name)) this.#gone(name)
  }

  #polled(present: boolean): void {
    this.#polls++
    this.#lastPoll = new Date().toISOString()
    if (this.#present !== present || this.#polls === 1) {
      this.#present = present
      this.emit('watching', {
        kind: 'remote',
        destination: this.destination,
        dir: this.#resolved ?? this.dir,
        present,
      })
    }
  }

  async #resolve(sftp: SFTPWrapper): Promise<string> {
    const dir = this.dir
    if (dir.startsWith('/')) return posix.normalize(dir)
    const home = await call<string>((cb) => sftp.realpath('.', cb))
    const rest = dir === '~' ? '' : dir.startsWith('~/') ? dir.slice(2) : dir
    return posix.join(home, rest)
  }

  /** One listed name: read it if it changed (or has not settled), report what came of it. */
  async #look(sftp: SFTPWrapper, path: string, name: string, attrs: Stats): Promise<void> {
    const shape = `${attrs.size}:${attrs.mtime}:${attrs.mode}`
    let known = this.#known.get(name)
    const changed = known?.shape !== shape
    if (!known) {
      known = { shape, text: undefined, settled: false, reported: undefined }
      this.#known.set(name, known)
    }
    if (!changed && known.settled) return
    known.settled = !changed
    known.shape = shape
    if (!attrs.isFile()) {
      return this.#fileFailed(
        known,
        name,
        new IppTunnelError(
          'E_REMOTE_FILE',
          `${this.#id(path)}: ${typeName(attrs)}, not a regular file; ignored`,
        ),
      )
    }
    if (attrs.size > this.#maxBytes) {
      return this.#fileFailed(known, name, this.#tooLarge(path, attrs.size))
    }
    let pulled: { text: string | undefined; mode: number }
    try {
      pulled = await this.#read(sftp, path)
    } catch (err) {
      if (this.#abort.signal.aborted) return
      if (sftpCode(err) === SFTP_NO_SUCH_FILE) {
        this.#gone(name)
        return
      }
      const error = isIppTunnelError(err)
        ? err
        : new IppTunnelError('E_REMOTE_FILE', `${this.#id(path)}: cannot read (${message(err)})`, {
            cause: err,
          })
      if (sftpCode(err) === undefined && !isIppTunnelError(err)) {
        // The channel died (link reconnecting): read again on the next poll.
        known.shape = ''
        return
      }
      return this.#fileFailed(known, name, error)
    }
    if (pulled.text === undefined) {
      // still growing: look again on the next poll
      known.shape = ''
      return
    }
    if (changed && pulled.text === known.text) return
    const firstSighting = known.text === undefined || known.reported !== undefined
    known.text = pulled.text
    known.reported = undefined
    if (firstSighting && (pulled.mode & 0o066) !== 0) {
      const octal = (pulled.mode & 0o777).toString(8).padStart(4, '0')
      this.emit('warning', {
        id: this.#id(path),
        message: `${this.#id(path)} is readable or writable by group or others (mode ${octal}) and holds the session key: chmod 600 ${path} on ${this.destination}`,
      })
    }
    const file: SourceFile = {
      id: this.#id(path),
      path,
      origin: { kind: 'remote', destination: this.destination },
      text: pulled.text,
      shape,
      settled: known.settled,
    }
    this.emit('file', file)
  }

  #tooLarge(path: string, size: number): IppTunnelError {
    return new IppTunnelError(
      'E_REMOTE_FILE',
      `${this.#id(path)}: ${size} bytes, larger than any connection file (limit ${this.#maxBytes}); ignored`,
    )
  }

  /** Reads a regular file through one handle: fstat first (the name may have been swapped since the listing). */
  /** The content, or `text: undefined` when the file grew past the size its handle reported (still written). */
  async #read(sftp: SFTPWrapper, path: string): Promise<{ text: string | undefined; mode: number }> {
    const handle = await call<Buffer>((cb) => sftp.open(path, 'r', cb))
    try {
      const attrs = await call<Stats>((cb) => sftp.fstat(handle, cb))
      if (!attrs.isFile()) {
        throw new IppTunnelError(
          'E_REMOTE_FILE',
          `${this.#id(path)}: ${typeName(attrs)}, not a regular file; ignored`,
        )
      }
      if (attrs.size > this.#maxBytes) throw this.#tooLarge(path, attrs.size)
      // one byte more than the size seen: a file that grows while read is read again on the next poll
      const buffer = Buffer.alloc(attrs.size + 1)
      let length = 0
      for (;;) {
        const n = await call<number>((cb) =>
          sftp.read(handle, buffer, length, buffer.length - length, length, (err, bytes) => cb(err, bytes)),
        ).catch((err: unknown) => {
          // ssh2 reports end of file as an error with SFTP status EOF (1)
          if (sftpCode(err) === 1) return 0
          throw err
        })
        if (n === 0) break
        length += n
        if (length === buffer.length) return { text: undefined, mode: attrs.mode }
      }
      return { text: buffer.subarray(0, length).toString('utf8'), mode: attrs.mode }
    } finally {
      await call<undefined>((cb) => sftp.close(handle, (err) => cb(err, undefined))).catch(() => undefined)
    }
  }

  #fileFailed(known: Known, name: string, error: IppTunnelError): void {
    const key = `${error.code}:${known.shape}`
    // A good file turned bad (replaced by a link, grown huge): what was taken from it goes.
    if (known.text !== undefined) {
      known.text = undefined
      this.emit('removed', { id: this.#id(posix.join(this.#resolved ?? this.dir, name)) })
    }
    if (known.reported === key) return
    known.reported = key
    this.#recordError(error)
    this.emit('file:error', {
      id: this.#id(posix.join(this.#resolved ?? this.dir, name)),
      code: error.code,
      message: error.message,
    })
  }

  #dirFailed(err: unknown, fallback: 'E_LINK_DOWN' | 'E_REMOTE_DIR'): void {
    const error = isIppTunnelError(err)
      ? err
      : new IppTunnelError(fallback, `${this.#id(this.#resolved ?? this.dir)}: ${message(err)}`, {
          cause: err,
        })
    this.#recordError(error)
    if (this.#dirProblem === error.code) return
    this.#dirProblem = error.code
    this.emit('dir:error', {
      destination: this.destination,
      dir: this.#resolved ?? this.dir,
      code: error.code,
      message: error.message,
    })
  }

  #recordError(error: IppTunnelError): void {
    this.#errors++
    this.#lastError = { code: error.code, message: error.message, at: new Date().toISOString() }
  }

  #gone(name: string): void {
    const known = this.#known.get(name)
    this.#known.delete(name)
    if (known?.text !== undefined) {
      this.emit('removed', { id: this.#id(posix.join(this.#resolved ?? this.dir, name)) })
    }
  }

  #goneAll(): void {
    for (const name of [...this.#known.keys()]) this.#gone(name)
  }
}

function readdir(
  sftp: SFTPWrapper,
  dir: string,
): Promise<{ readonly filename: string; readonly attrs: Stats }[]> {
  return call((cb) => sftp.readdir(dir, cb))
}
