import { basename, resolve } from 'node:path'

import type { FSWatcher } from 'chokidar'

import { isTunnelledKernelName, kindFromFileName } from '../connection-file/index.js'

/** chokidar's window for repeated 'change' events of one path (50 ms), and a margin. */
const LOOK_AGAIN_MS = 80

export interface WatcherHandlers {
  /** A connection file appeared, changed, or was there at start. */
  readonly onFile: (path: string) => void
  /** A connection file went away. */
  readonly onRemoved: (path: string) => void
  readonly onError: (error: Error) => void
}

/**
 * Follows the given directories (not their subdirectories) for files named like connection files:
 * `ipcontroller[-<id>]-client.json`, `ipcontroller[-<id>]-engine.json`, `kernel-*.json` but not a tunnelled copy
 * `kernel-*-ssh.json`. Everything else is ignored.
 * Reports raw events at once: a file still being written is the caller's to wait for (the service retries a
 * parse that fails while the file keeps changing), which keeps a complete file's latency low.
 *
 * @example
 * const watcher = await DirectoryWatcher.start([dir], { onFile, onRemoved, onError })
 * await watcher.close()
 */
export class DirectoryWatcher {
  readonly dirs: readonly string[]
  readonly #watcher: FSWatcher
  readonly #trailing: Map<string, NodeJS.Timeout>
  #closed = false

  private constructor(dirs: readonly string[], watcher: FSWatcher, trailing: Map<string, NodeJS.Timeout>) {
    this.dirs = dirs
    this.#watcher = watcher
    this.#trailing = trailing
  }

  /** Starts watching; resolves once the files already present have been reported to `handlers`. */
  static async start(dirs: readonly string[], handlers: WatcherHandlers): Promise<DirectoryWatcher> {
    // kernel-<id>-ssh.json is a tunnelled copy (ours beside its source, or jupyter console --ssh's): never a source
    const taken = (path: string) =>
      kindFromFileName(basename(path)) !== undefined && !isTunnelledKernelName(path)
    // Loaded here, not with the module: commands that only read remote files (`up host:PATH`) never load it.
    const { watch } = await import('chokidar')
    const watcher = watch([...dirs], {
      depth: 0,
      // Files with other names are never even looked at (directories must pass, or nothing is watched).
      ignored: (path, stats) => stats?.isFile() === true && !taken(path),
      ignoreInitial: false,
      persistent: true,
      ignorePermissionErrors: true,
    })
    // chokidar emits at most one 'change' per path in 50 ms and drops the rest: a file rewritten right after a change
    // would keep its old content here. So every report is followed by one more look once that window has passed
    // (the service ignores a look that finds the content it already applied).
    const trailing = new Map<string, NodeJS.Timeout>()
    const report = (path: string): void => {
      handlers.onFile(path)
      clearTimeout(trailing.get(path))
      const timer = setTimeout(() => {
        trailing.delete(path)
        handlers.onFile(path)
      }, LOOK_AGAIN_MS)
      timer.unref()
      trailing.set(path, timer)
    }
    watcher.on('add', (path) => taken(path) && report(resolve(path)))
    watcher.on('change', (path) => taken(path) && report(resolve(path)))
    watcher.on('unlink', (path) => {
      if (!taken(path)) return
      const full = resolve(path)
      clearTimeout(trailing.get(full))
      trailing.delete(full)
      handlers.onRemoved(full)
    })
    watcher.on('error', (error) =>
      handlers.onError(error instanceof Error ? error : new Error(String(error))),
    )
    await new Promise<void>((ready) => watcher.once('ready', ready))
    return new DirectoryWatcher(dirs, watcher, trailing)
  }

  get closed(): boolean {
    return this.#closed
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    for (const timer of this.#trailing.values()) clearTimeout(timer)
    this.#trailing.clear()
    await this.#watcher.close()
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}
