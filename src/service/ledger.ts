import { readFile, rm } from 'node:fs/promises'

import { writeFileAtomic } from '../connection-file/index.js'

/**
 * The list of loopback copies the running service wrote, kept on disk so that the next start removes what a
 * crashed run left behind (and nothing else). Writes are coalesced: many changes at once cost one write.
 *
 * @example
 * const ledger = await CopyLedger.open(join(runtimeDir(), 'copies.json'))
 * await ledger.removeLeftovers()
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
      const previous = JSON.parse(await readFile(path, 'utf8')) as unknown
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

  /** Removes every copy listed by a previous run. */
  async removeLeftovers(): Promise<void> {
    await Promise.all([...this.#copies].map((p) => rm(p, { force: true })))
    this.#copies.clear()
    await this.#save()
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
      )
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
