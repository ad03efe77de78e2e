import { dirname } from 'node:path'

import { readRegularFile, realPathOf, removeOwnFile, writeFileAtomic } from '../safe-fs/index.js'

/**
 * The list of loopback copies the running service wrote, kept on disk so that the next start removes what a
 * crashed run left behind (and nothing else: only regular files of the user's inside the service's own output
 * directories). Writes are coalesced: many changes at once cost one write. The ledger lives in the runtime
 * directory, which the service verifies (0700, the user's) before opening it.
 *
 * @example
 * const ledger = await CopyLedger.open(join(runtimeDir(), 'copies.json'))
 * await ledger.removeLeftovers([outDir])
 * await ledger.add(copyPath)
 */
export class CopyLedger {
  readonly path: string
  readonly #copies = new Set<string>()
  /** The write in progress, if any. */
  #writing: Promise<void> | undefined
  /** The write that will carry changes made while another write runs. */
  #next: Promise<void> | undefined

  private constructor(path: string) {
    this.path = path
  }

  /** Reads the ledger at `path` (missing or unreadable: empty). */
  static async open(path: string): Promise<CopyLedger> {
    const ledger = new CopyLedger(path)
    try {
      const { text } = await readRegularFile(path, { what: 'copy ledger', noFollow: true })
      const previous = JSON.parse(text) as unknown
      if (Array.isArray(previous)) for (const p of previous) if (typeof p === 'string') ledger.#copies.add(p)
    } catch {
      /* no ledger yet, or unreadable: nothing to clean */
    }
    return ledger
  }

  /** The copies listed now. */
  get copies(): readonly string[] {
    return [...this.#copies]
  }

  /**
   * Removes the copies a previous run listed, but only those inside one of `outDirs` (compared by real path) that
   * are regular files owned by the user; anything else the ledger names is left alone. Returns the removed paths.
   */
  async removeLeftovers(outDirs: readonly string[]): Promise<string[]> {
    const allowed = new Set(await Promise.all(outDirs.map((d) => realPathOf(d))))
    const removed: string[] = []
    for (const path of this.#copies) {
      const dir = await realPathOf(dirname(path)).catch(() => undefined)
      if (dir === undefined || !allowed.has(dir)) continue
      if (await removeOwnFile(path).catch(() => false)) removed.push(path)
    }
    this.#copies.clear()
    await this.#save()
    return removed
  }

  /** Lists a copy (before it is written, so that a crash right after still cleans it up). */
  async add(path: string): Promise<void> {
    if (this.#copies.has(path)) return
    this.#copies.add(path)
    await this.#save()
  }

  async remove(path: string): Promise<void> {
    if (!this.#copies.delete(path)) return
    await this.#save()
  }

  async clear(): Promise<void> {
    this.#copies.clear()
    await this.#save()
  }

  /** Resolves once a write that includes the current list is on disk. */
  #save(): Promise<void> {
    if (this.#next) return this.#next
    const write = async (): Promise<void> => {
      this.#next = undefined
      this.#writing = writeFileAtomic(
        this.path,
        JSON.stringify([...this.#copies], null, 2) + '\n',
        'copy ledger',
      ).then(() => undefined)
      try {
        await this.#writing
      } finally {
        this.#writing = undefined
      }
    }
    if (this.#writing === undefined) return write()
    this.#next = this.#writing.catch(() => undefined).then(write)
    return this.#next
  }
}
