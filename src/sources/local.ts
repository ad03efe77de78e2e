import { EventEmitter } from 'node:events'

import { isIppTunnelError } from '../errors/index.js'
import { readRegularFile } from '../safe-fs/index.js'
import type { SourceEvents, SourceFile } from './types.js'
import { DirectoryWatcher } from './watcher.js'

interface Known {
  /** `size:mtime:mode` at the last read. */
  shape: string
  /** `code:shape` of the last error reported, so that one problem is reported once. */
  reported: string | undefined
  /** Whether the group/other-readable warning was given for the current mode. */
  warnedMode: number | undefined
}

/**
 * Connection files in local directories, followed with chokidar (see {@link DirectoryWatcher}): each file is read
 * (a regular file of at most 1 MiB, opened without blocking) when it appears or changes and reported with its
 * content, exactly as {@link RemoteDirectorySource} reports a pulled file. Reads of one file run one at a time, in
 * order, so a report never overtakes a newer one.
 *
 * @example
 * const source = await LocalDirectorySource.start([profileSecurityDir('default')])
 * source.on('file', (f) => console.log(f.id, f.text.length))
 * await source.close()
 */
export class LocalDirectorySource extends EventEmitter<SourceEvents> {
  readonly dirs: readonly string[]
  #watcher: DirectoryWatcher | undefined
  readonly #known = new Map<string, Known>()
  readonly #queues = new Map<string, Promise<void>>()
  readonly #lookAgain = new Map<string, NodeJS.Timeout>()
  #closed = false

  private constructor(dirs: readonly string[]) {
    super()
    this.dirs = dirs
  }

  /**
   * Starts watching `dirs` (which must exist). Files already there are reported right after, like new ones; attach
   * listeners in `onCreate`, which runs before anything is reported.
   */
  static async start(
    dirs: readonly string[],
    onCreate: (source: LocalDirectorySource) => void,
  ): Promise<LocalDirectorySource> {
    const source = new LocalDirectorySource(dirs)
    onCreate(source)
    source.#watcher = await DirectoryWatcher.start(dirs, {
      onFile: (path) => source.#enqueue(path, () => source.#read(path)),
      onRemoved: (path) => source.#enqueue(path, () => source.#removed(path)),
      onError: (error) =>
        source.emit('file:error', { id: dirs.join(', '), code: 'E_CONNFILE_READ', message: error.message }),
    })
    for (const dir of dirs) source.emit('watching', { kind: 'local', dir })
    return source
  }

  /**
   * Reads `id` again after `ms`: for content that did not parse while the file was still changing (a writer
   * that writes in place). A change meanwhile reads it anyway.
   */
  lookAgain(id: string, ms: number): void {
    if (this.#closed) return
    clearTimeout(this.#lookAgain.get(id))
    const timer = setTimeout(() => {
      this.#lookAgain.delete(id)
      this.#enqueue(id, () => this.#read(id))
    }, ms)
    timer.unref()
    this.#lookAgain.set(id, timer)
  }

  #enqueue(path: string, step: () => Promise<void>): void {
    if (this.#closed) return
    const next = (this.#queues.get(path) ?? Promise.resolve())
      .then(() => (this.#closed ? undefined : step()))
      .catch(() => undefined)
    this.#queues.set(path, next)
    void next.then(() => {
      if (this.#queues.get(path) === next) this.#queues.delete(path)
    })
  }

  async #read(path: string): Promise<void> {
    let text: string
    let shape: string
    let mode: number
    try {
      const read = await readRegularFile(path, { what: 'connection file' })
      text = read.text
      mode = read.stats.mode & 0o777
      shape = `${String(read.stats.size)}:${String(read.stats.mtimeMs)}:${String(mode)}`
    } catch (err) {
      const cause = err instanceof Error ? (err.cause as NodeJS.ErrnoException | undefined) : undefined
      if (cause?.code === 'ENOENT') return this.#removed(path)
      const code = isIppTunnelError(err) ? err.code : 'E_CONNFILE_READ'
      const known = this.#known.get(path) ?? { shape: '', reported: undefined, warnedMode: undefined }
      this.#known.set(path, known)
      const key = `${code}:${err instanceof Error ? err.message : String(err)}`
      if (known.reported === key) return
      known.reported = key
      this.emit('file:error', { id: path, code, message: err instanceof Error ? err.message : String(err) })
      return
    }
    if (this.#closed) return
    let known = this.#known.get(path)
    const settled = known?.shape === shape
    if (known === undefined) {
      known = { shape, reported: undefined, warnedMode: undefined }
      this.#known.set(path, known)
    } else {
      known.shape = shape
      known.reported = undefined
    }
    if ((mode & 0o066) !== 0 && known.warnedMode !== mode) {
      known.warnedMode = mode
      const octal = mode.toString(8).padStart(4, '0')
      this.emit('warning', {
        id: path,
        message: `${path} is readable or writable by group or others (mode ${octal}) and holds the session key: chmod 600 ${path}`,
      })
    }
    const file: SourceFile = { id: path, path, origin: { kind: 'local' }, text, shape, settled }
    this.emit('file', file)
  }

  async #removed(path: string): Promise<void> {
    clearTimeout(this.#lookAgain.get(path))
    this.#lookAgain.delete(path)
    this.#known.delete(path)
    this.emit('removed', { id: path })
    return Promise.resolve()
  }

  get closed(): boolean {
    return this.#closed
  }

  /** Stops watching; reads in flight are dropped. Files are not reported removed. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    for (const timer of this.#lookAgain.values()) clearTimeout(timer)
    this.#lookAgain.clear()
    await this.#watcher?.close()
    await Promise.all(this.#queues.values())
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}
