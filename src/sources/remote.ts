import { EventEmitter } from 'node:events'
import { posix } from 'node:path'

import type { FileEntryWithStats, SFTPWrapper, Stats } from 'ssh2'

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
  /**
   * A request of a poll the server has not answered in this long ends the poll and its SFTP session (a new one is
   * opened); default 15000. The clock runs from the last answer, so a long poll that keeps getting answers is not cut.
   */
  readonly timeoutMs?: number
  /** Names one listing may return; a longer one (a server whose listing never ends) is cut and reported; default 100 000. */
  readonly maxEntries?: number
  /** Connection files followed in the directory; more are reported once and left alone; default 64. */
  readonly maxFiles?: number
  /** Told the bytes each poll moved (names listed, files read): SFTP bursts count as forwarded bytes do. */
  readonly onBytes?: (bytes: number) => void
}

/** SFTP status codes (draft-ietf-secsh-filexfer-02) that ssh2 puts in `err.code`. */
const SFTP_EOF = 1
const SFTP_NO_SUCH_FILE = 2
const SFTP_PERMISSION_DENIED = 3

const DEFAULT_POLL_MS = 1000
const DEFAULT_MAX_BYTES = 1024 * 1024
const DEFAULT_TIMEOUT_MS = 15_000
const DEFAULT_MAX_ENTRIES = 100_000
/** Default cap on connection files per directory; also what the service sizes its descriptor reserve by. */
export const DEFAULT_MAX_REMOTE_FILES = 64
/** What one listed name costs beyond its two names (attributes, lengths), for the byte count. */
const ENTRY_OVERHEAD = 64

/**
 * Whether a listed name is one path component. A server may list anything; `../x` or `a/../../x` would be read
 * from outside the directory followed.
 *
 * @example
 * isPlainName('kernel-1.json') // true
 * isPlainName('a/../../kernel-1.json') // false
 */
export function isPlainName(name: string): boolean {
  return name !== '' && name !== '.' && name !== '..' && !name.includes('/') && !name.includes('\0')
}

/** One poll in flight: its own abort (the timeout, close()) and when the server last answered it. */
interface PollRun {
  readonly signal: AbortSignal
  readonly abort: AbortController
  /** performance.now() of the last answer; undefined until the SFTP session is open (the clock has not started). */
  lastAnswer: number | undefined
  bytes: number
}

/** A listing cut short: more names than a listing may hold. */
class ListingTooLong extends Error {}

type Entry = FileEntryWithStats

/** What a poll follows of a listing. */
interface Listing {
  readonly files: readonly Entry[]
  /** Names shaped like connection files, followed or not. */
  readonly candidates: number
  /** A name listed that is not a plain file name, if any. */
  readonly odd: string | undefined
}

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

/** Whether `signal` has aborted by now (a plain read, which the type checker does not narrow across awaits). */
function stopped(signal: AbortSignal): boolean {
  return signal.aborted
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
  readonly #maxEntries: number
  readonly #maxFiles: number
  /** The session given up on last, until the server closes it (its sftp-server may hang there for good). */
  #abandoned: SFTPWrapper | undefined
  /** A poll given up on while `#abandoned` still hung: its session is kept, and polls wait, until either ends. */
  #hung: Promise<void> | undefined
  readonly #sessions = new WeakSet<SFTPWrapper>()
  readonly #closedSessions = new WeakSet<SFTPWrapper>()
  /** How many files were over the cap when last reported, and the odd name last reported: each said once. */
  #overReported: number | undefined
  #oddReported: string | undefined

  constructor(options: RemoteDirectoryOptions) {
    super()
    this.#options = options
    this.destination = options.destination
    this.dir = options.dir
    this.pollMs = options.pollMs ?? DEFAULT_POLL_MS
    this.#maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES
    this.#maxEntries = options.maxEntries ?? DEFAULT_MAX_ENTRIES
    this.#maxFiles = options.maxFiles ?? DEFAULT_MAX_REMOTE_FILES
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
   * A poll whose request the server leaves unanswered for `timeoutMs` (sftp-server is one process: a FIFO swapped in
   * between the check and the open blocks it for good) is given up, and so is its SFTP session: a new one is
   * opened at the next poll. A stuck sftp-server stays on the server until the FIFO gets a writer, so at most one
   * session is given up on per directory: while it hangs, a second stuck session is waited for instead.
   */
  async #pollBounded(): Promise<void> {
    if (this.#hung !== undefined) {
      if (this.#abandoned !== undefined) return
      // the session given up on before is gone: this one can go too
      this.#hung = undefined
      this.#abandon()
    }
    const ms = this.#options.timeoutMs ?? DEFAULT_TIMEOUT_MS
    const abort = new AbortController()
    const run: PollRun = { abort, signal: abort.signal, lastAnswer: undefined, bytes: 0 }
    let timer: NodeJS.Timeout | undefined
    let onClose = (): void => undefined
    const late = new Promise<boolean>((resolve) => {
      const check = (): void => {
        // the clock starts once the session is open: opening one (and waiting for the link) has bounds of its own
        const idle = run.lastAnswer === undefined ? 0 : performance.now() - run.lastAnswer
        if (idle >= ms) resolve(true)
        else timer = setTimeout(check, ms - idle)
      }
      timer = setTimeout(check, ms)
      onClose = () => {
        abort.abort()
        resolve(false)
      }
      this.#abort.signal.addEventListener('abort', onClose, { once: true })
    })
    const poll = this.#pollOnce(run)
    const timedOut = await Promise.race([poll.then(() => false), late])
    clearTimeout(timer)
    this.#abort.signal.removeEventListener('abort', onClose)
    if (run.bytes > 0) this.#options.onBytes?.(run.bytes)
    if (!timedOut || this.#closed) return
    abort.abort()
    const id = this.#id(this.#resolved ?? this.dir)
    if (this.#abandoned === undefined) {
      this.#abandon()
      this.#dirFailed(
        new IppTunnelError(
          'E_REMOTE_DIR',
          `${id}: the SFTP server did not answer within ${ms} ms; opening a new SFTP session`,
        ),
        'E_REMOTE_DIR',
      )
      return
    }
    const hung = poll.finally(() => {
      if (this.#hung === hung) this.#hung = undefined
    })
    this.#hung = hung
    this.#dirFailed(
      new IppTunnelError(
        'E_REMOTE_DIR',
        `${id}: the SFTP server did not answer within ${ms} ms, and the session given up on before still hangs on the server (a FIFO opened there?); waiting for either before opening another`,
      ),
      'E_REMOTE_DIR',
    )
  }

  /** Gives up on the current session: the next poll opens a new one; it counts as abandoned until it closes. */
  #abandon(): void {
    const session = this.#session
    this.#stale = session
    this.#session = undefined
    if (session === undefined || this.#closedSessions.has(session)) return
    this.#abandoned = session
    session.once('close', () => {
      if (this.#abandoned === session) this.#abandoned = undefined
    })
  }

  /** A request of `run` on the session; every answer restarts the poll's clock. */
  #call<T>(
    run: PollRun,
    request: (cb: (err: Error | undefined | null, value: T) => void) => void,
  ): Promise<T> {
    return call(request).finally(() => {
      if (run.lastAnswer !== undefined) run.lastAnswer = performance.now()
    })
  }

  async #pollOnce(run: PollRun): Promise<void> {
    const signal = run.signal
    let sftp: SFTPWrapper
    try {
      sftp = await this.#options.sftp(this.#abort.signal, this.#stale)
      if (signal.aborted) return
      this.#stale = undefined
      this.#session = sftp
      if (!this.#sessions.has(sftp)) {
        this.#sessions.add(sftp)
        sftp.once('close', () => this.#closedSessions.add(sftp))
      }
      run.lastAnswer = performance.now()
      this.#resolved ??= await this.#resolve(sftp, run)
    } catch (err) {
      if (!signal.aborted) this.#dirFailed(err, 'E_LINK_DOWN')
      return
    }
    const dir = this.#resolved
    let listing: Listing
    try {
      listing = await this.#list(sftp, dir, run)
    } catch (err) {
      if (stopped(signal)) return
      if (err instanceof ListingTooLong) {
        this.#polled(true)
        this.#dirFailed(
          new IppTunnelError(
            'E_REMOTE_DIR',
            `${this.#id(dir)}: the listing holds more than ${this.#maxEntries} names (or never ends); the directory is not followed while it does`,
          ),
          'E_REMOTE_DIR',
        )
        return
      }
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
    this.#noteListing(dir, listing)
    const seen = new Set<string>()
    for (const { filename: name, attrs } of listing.files) {
      if (stopped(signal)) return
      seen.add(name)
      await this.#look(sftp, posix.join(dir, name), name, attrs, run)
    }
    if (stopped(signal)) return
    for (const name of [...this.#known.keys()]) if (!seen.has(name)) this.#gone(name)
  }

  /**
   * Lists the directory a batch at a time, keeping only what is followed: the files already known, then new ones up
   * to `maxFiles`. A listing longer than `maxEntries` names, or one the poll gave up on, stops there.
   */
  async #list(sftp: SFTPWrapper, dir: string, run: PollRun): Promise<Listing> {
    const handle = await this.#call<Buffer>(run, (cb) => sftp.opendir(dir, cb))
    const known: Entry[] = []
    const fresh: Entry[] = []
    let candidates = 0
    let entries = 0
    let odd: string | undefined
    try {
      for (;;) {
        if (run.signal.aborted) throw run.signal.reason
        const batch = await this.#call<Entry[] | undefined>(run, (cb) =>
          sftp.readdir(handle, (err, list) =>
            sftpCode(err) === SFTP_EOF ? cb(undefined, undefined) : cb(err, list),
          ),
        )
        if (batch === undefined) break
        for (const entry of batch) {
          const name = entry.filename
          run.bytes += name.length + entry.longname.length + ENTRY_OVERHEAD
          if (++entries > this.#maxEntries) throw new ListingTooLong()
          if (!isPlainName(name)) {
            odd ??= name
            continue
          }
          if (
            this.#options.only !== undefined
              ? name !== this.#options.only
              : kindFromFileName(name) === undefined
          )
            continue
          candidates++
          if (this.#known.has(name)) known.push(entry)
          else if (fresh.length < this.#maxFiles) fresh.push(entry)
        }
      }
    } finally {
      // not waited for: a session given up on may never answer it
      try {
        sftp.close(handle, () => undefined)
      } catch {
        // the session is gone, and the handle with it
      }
    }
    const files = [...known, ...fresh.slice(0, Math.max(0, this.#maxFiles - known.length))]
    return { files, candidates, odd }
  }

  /** Reports, once while it lasts, a directory holding more files than followed or a name that is not plain. */
  #noteListing(dir: string, listing: Listing): void {
    const over = listing.candidates > this.#maxFiles ? listing.candidates : undefined
    if (over !== undefined && this.#overReported === undefined) {
      this.#dirFailed(
        new IppTunnelError(
          'E_REMOTE_DIR',
          `${this.#id(dir)}: ${over} connection files, more than the ${this.#maxFiles} followed in one directory; the others are ignored`,
        ),
        'E_REMOTE_DIR',
        true,
      )
    }
    this.#overReported = over
    const odd = listing.odd
    if (odd !== undefined && this.#oddReported === undefined) {
      const shown = JSON.stringify(odd.length > 60 ? `${odd.slice(0, 60)}…` : odd)
      this.#dirFailed(
        new IppTunnelError(
          'E_REMOTE_DIR',
          `${this.#id(dir)}: the server listed ${shown}, which is not a plain file name; ignored`,
        ),
        'E_REMOTE_DIR',
        true,
      )
    }
    this.#oddReported = odd
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

  async #resolve(sftp: SFTPWrapper, run: PollRun): Promise<string> {
    const dir = this.dir
    if (dir.startsWith('/')) return posix.normalize(dir)
    const home = await this.#call<string>(run, (cb) => sftp.realpath('.', cb))
    const rest = dir === '~' ? '' : dir.startsWith('~/') ? dir.slice(2) : dir
    return posix.join(home, rest)
  }

  /** One listed name: read it if it changed (or has not settled), report what came of it. */
  async #look(sftp: SFTPWrapper, path: string, name: string, attrs: Stats, run: PollRun): Promise<void> {
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
      pulled = await this.#read(sftp, path, run)
    } catch (err) {
      if (run.signal.aborted) return
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

  /**
   * Reads a regular file through one handle: the name is looked at (lstat) right before the open, since it may have
   * been swapped for a symlink to a FIFO since the listing (SFTP has no O_NOFOLLOW or O_NONBLOCK, and an open of a
   * FIFO blocks the server), and the handle again (fstat) after it. The content, or `text: undefined` when the file
   * grew past the size its handle reported (still written).
   */
  async #read(
    sftp: SFTPWrapper,
    path: string,
    run: PollRun,
  ): Promise<{ text: string | undefined; mode: number }> {
    const named = await this.#call<Stats>(run, (cb) => sftp.lstat(path, cb))
    if (!named.isFile()) {
      throw new IppTunnelError(
        'E_REMOTE_FILE',
        `${this.#id(path)}: ${typeName(named)}, not a regular file; ignored`,
      )
    }
    if (named.size > this.#maxBytes) throw this.#tooLarge(path, named.size)
    if (run.signal.aborted) throw run.signal.reason
    const handle = await this.#call<Buffer>(run, (cb) => sftp.open(path, 'r', cb))
    try {
      const attrs = await this.#call<Stats>(run, (cb) => sftp.fstat(handle, cb))
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
        if (stopped(run.signal)) throw run.signal.reason
        const n = await this.#call<number>(run, (cb) =>
          sftp.read(handle, buffer, length, buffer.length - length, length, (err, bytes) => cb(err, bytes)),
        ).catch((err: unknown) => {
          // ssh2 reports end of file as an error with SFTP status EOF (1)
          if (sftpCode(err) === 1) return 0
          throw err
        })
        if (n === 0) break
        length += n
        run.bytes += n
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

  /** `once`: the caller reports it once while it lasts, apart from the problems that stop polls. */
  #dirFailed(err: unknown, fallback: 'E_LINK_DOWN' | 'E_REMOTE_DIR', once = false): void {
    const error = isIppTunnelError(err)
      ? err
      : new IppTunnelError(fallback, `${this.#id(this.#resolved ?? this.dir)}: ${message(err)}`, {
          cause: err,
        })
    this.#recordError(error)
    if (!once && this.#dirProblem === error.code) return
    if (!once) this.#dirProblem = error.code
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
