import { readFile, rm } from 'node:fs/promises'

import { writeFileAtomic } from '../connection-file/index.js'

/**
 * The list of loopback copies the running service wrote, kept on disk so that the next start removes what a
 * crashed run left behind (and nothing else).
 */
export class CopyLedger {
  readonly path: string
  readonly #copies = new Set<string>()
  #writing: Promise<void> = Promise.resolve()

  private constructor(path: string) {
    this.path = path
  }

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

  /** Removes every copy listed by a previous run. */
  async removeLeftovers(): Promise<void> {
    await Promise.all([...this.#copies].map((p) => rm(p, { force: true })))
    this.#copies.clear()
    await this.#save()
  }

  async add(path: string): Promise<void> {
    this.#copies.add(path)
    await this.#save()
  }

  async remove(path: string): Promise<void> {
    this.#copies.delete(path)
    await this.#save()
  }

  async clear(): Promise<void> {
    this.#copies.clear()
    await this.#save()
  }

  #save(): Promise<void> {
    const content = JSON.stringify([...this.#copies], null, 2) + '\n'
    this.#writing = this.#writing.then(() => writeFileAtomic(this.path, content))
    return this.#writing
  }
}
