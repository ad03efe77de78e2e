import { dirname } from 'node:path'

import {
  readRegularFile,
  realPathOf,
  removeOwnFile,
  sameIdentity,
  writeFileAtomic,
  type FileIdentity,
} from '../safe-fs/index.js'
import type { CopyRecorder } from '../tunnel/index.js'

/** One copy as the ledger keeps it: its path and the files (device, inode) written there. */
interface CopyRecord {
  readonly path: string
  readonly written: FileIdentity[]
}

function isIdentity(value: unknown): value is FileIdentity {
  if (typeof value !== 'object' || value === null) return false
  const { dev, ino, mtimeNs } = value as { dev?: unknown; ino?: unknown; mtimeNs?: unknown }
  return (
    Number.isSafeInteger(dev) &&
    Number.isSafeInteger(ino) &&
    (mtimeNs === undefined || typeof mtimeNs === 'string')
  )
}

function parseRecord(value: unknown): CopyRecord | undefined {
  if (typeof value !== 'object' || value === null) return undefined
  const { path, written } = value as { path?: unknown; written?: unknown }
  if (typeof path !== 'string' || !Array.isArray(written)) return undefined
  return {
    path,
    written: written
      .filter(isIdentity)
      .map(({ dev, ino, mtimeNs }) => ({ dev, ino, ...(mtimeNs !== undefined && { mtimeNs }) })),
  }
}

/**
 * The list of loopback copies the running service wrote, each with the device and inode of the file written, kept
 * on disk so that the next start removes what a crashed run left behind, and nothing else: a file is removed only
 * if it is the very file written (a file the user put at a copy's path since is kept), a regular file of the
 * user's, inside the service's own output directories. A file is recorded before it takes its name, so a crash at
 * any point leaves no copy unrecorded. Writes are coalesced: many changes at once cost one write. The ledger lives
 * in the runtime directory, which the service verifies (0700, the user's) before opening it.
 *
 * @example
 * const ledger = await CopyLedger.open(join(runtimeDir(), 'copies.json'))
 * await ledger.removeLeftovers([outDir])
 * await openTunnel(file, { out, recorder: ledger })
 */
export class CopyLedger implements CopyRecorder {
  readonly path: string
  readonly #copies = new Map<string, FileIdentity[]>()
  /** The write in progress, if any. */
  #writing: Promise<void> | undefined
  /** The write that will carry changes made while another write runs. */
  #next: Promise<void> | undefined

  private constructor(path: string) {
    this.path = path
  }

  /** Reads the ledger at `path` (missing or unreadable: empty; entries without identities are skipped). */
  static async open(path: string): Promise<CopyLedger> {
    const ledger = new CopyLedger(path)
    try {
      const { text } = await readRegularFile(path, { what: 'copy ledger', noFollow: true })
      const previous = JSON.parse(text) as unknown
      if (Array.isArray(previous)) {
        for (const value of previous) {
          const record = parseRecord(value)
          if (record !== undefined && record.written.length > 0)
            ledger.#copies.set(record.path, record.written)
        }
      }
    } catch {
      /* no ledger yet, or unreadable: nothing to clean */
    }
    return ledger
  }

  /** The copies listed now. */
  get copies(): readonly string[] {
    return [...this.#copies.keys()]
  }

  /** True when the file at `path` now is one this ledger recorded there. */
  holds(path: string, identity: FileIdentity | undefined): boolean {
    if (identity === undefined) return false
    return (this.#copies.get(path) ?? []).some((w) => sameIdentity(w, identity))
  }

  /**
   * Removes the copies a previous run listed, but only those inside one of `outDirs` (compared by real path) that
   * are still the file written (same device and inode), regular and owned by the user; anything else at a listed
   * path is left alone. Returns the removed paths.
   */
  async removeLeftovers(outDirs: readonly string[]): Promise<string[]> {
    const allowed = new Set(await Promise.all(outDirs.map((d) => realPathOf(d))))
    const removed: string[] = []
    for (const [path, written] of this.#copies) {
      const dir = await realPathOf(dirname(path)).catch(() => undefined)
      if (dir === undefined || !allowed.has(dir)) continue
      for (const identity of written) {
        if (await removeOwnFile(path, identity).catch(() => false)) {
          removed.push(path)
          break
        }
      }
    }
    this.#copies.clear()
    await this.#save()
    return removed
  }

  /** Records a file about to take the name `path`; resolves once the record is on disk. */
  async placing(path: string, identity: FileIdentity): Promise<void> {
    this.#copies.set(path, [...(this.#copies.get(path) ?? []), identity])
    await this.#save()
  }

  /** The file took the name: the ones it replaced are forgotten (saved with the next write). */
  placed(path: string, identity: FileIdentity): void {
    if (!this.#copies.has(path)) return
    this.#copies.set(path, [identity])
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
      const records: CopyRecord[] = [...this.#copies].map(([path, written]) => ({ path, written }))
      this.#writing = writeFileAtomic(this.path, JSON.stringify(records, null, 2) + '\n', 'copy ledger').then(
        () => undefined,
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
