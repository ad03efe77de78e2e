import { lstat } from 'node:fs/promises'
import { basename, dirname } from 'node:path'

import { writeConnectionFileAtomic, type ConnectionInfo } from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'
import {
  currentUid,
  ensureWritableDir,
  identityFrom,
  isSameFile,
  kindOf,
  removeOwnFile,
  removeStaleTemps,
  sameIdentity,
  type FileIdentity,
} from '../safe-fs/index.js'

/**
 * Checks where a loopback copy will go before anything is connected or written: `path` must not be the source
 * connection file (compared by device and inode, so a symlinked directory or a hard link is seen through), its
 * directory must be safe to write into (created 0700 when missing; else the user's and not group/other-writable).
 * Then it removes what an interrupted run left there: temp files of an atomic write of this name, and a previous
 * copy when it is a regular file owned by the user (a SIGKILLed `up` leaves one).
 *
 * @throws IppTunnelError `E_USAGE` when `path` is the source, `E_UNSAFE_PATH` when its directory or what is at
 *   `path` is not the user's.
 * @example
 * await prepareCopy('/tmp/loopback.json', { source: file })
 */
export async function prepareCopy(
  path: string,
  options: { source?: string | undefined } = {},
): Promise<void> {
  if (options.source !== undefined && (await isSameFile(path, options.source))) {
    throw new IppTunnelError(
      'E_USAGE',
      `${path} is the connection file itself (${options.source}); the loopback copy would overwrite it: choose another --out`,
    )
  }
  const dir = dirname(path)
  await ensureWritableDir(dir)
  await removeStaleTemps(dir, (name) => name === basename(path))
  let existing
  try {
    existing = await lstat(path)
  } catch {
    return
  }
  const uid = currentUid()
  if (!existing.isFile()) {
    throw new IppTunnelError(
      'E_UNSAFE_PATH',
      `${path}: is ${kindOf(existing)}, not a loopback copy; remove it or choose another --out`,
    )
  }
  if (existing.uid !== uid) {
    throw new IppTunnelError(
      'E_UNSAFE_PATH',
      `${path}: is owned by uid ${existing.uid}, not you (${uid}); remove it or choose another --out`,
    )
  }
  await removeOwnFile(path)
}

/**
 * Told of every loopback copy before it takes its name, and once it has: a record that survives a crash (the
 * service's ledger) can then remove exactly the files written, and nothing put at the same path since.
 */
export interface CopyRecorder {
  placing(path: string, identity: FileIdentity): Promise<void>
  placed(path: string, identity: FileIdentity): void
}

/** What is at a copy's path: the file written, nothing, or another file. */
export type CopyState = 'written' | 'missing' | 'replaced'

/**
 * The loopback copy a tunnel writes: written atomically (0600), and removed on close only if the file at its path
 * is still the one written (same device and inode), so a file put there since is never deleted.
 */
export class LoopbackCopy {
  readonly path: string
  readonly #recorder: CopyRecorder | undefined
  #written: FileIdentity | undefined
  #info: ConnectionInfo | undefined

  constructor(path: string, recorder?: CopyRecorder) {
    this.path = path
    this.#recorder = recorder
  }

  /**
   * Writes the copy for `info`, unless another file took its place since the last write (that file is left alone:
   * `replaced`, and {@link restore} writes the copy once it is gone).
   */
  async write(info: ConnectionInfo, options: { noReplace?: boolean } = {}): Promise<CopyState> {
    this.#info = info
    if (this.#written !== undefined && (await this.state()) === 'replaced') return 'replaced'
    const recorder = this.#recorder
    const written = await writeConnectionFileAtomic(this.path, info, {
      ...(recorder !== undefined && { beforePlacing: (id: FileIdentity) => recorder.placing(this.path, id) }),
      ...(options.noReplace === true && { noReplace: true }),
    })
    this.#written = written
    recorder?.placed(this.path, written)
    return 'written'
  }

  /** Whether the file at the path is still the one written. */
  async state(): Promise<CopyState> {
    const written = this.#written
    let s
    try {
      s = await lstat(this.path, { bigint: true })
    } catch {
      return 'missing'
    }
    return written !== undefined && sameIdentity(identityFrom(s), written) ? 'written' : 'replaced'
  }

  /**
   * Writes the copy again when nothing is at its path (someone removed it): `restored`; another file there is
   * left alone. Returns what is there now.
   */
  async restore(): Promise<CopyState | 'restored'> {
    const state = await this.state()
    if (state !== 'missing' || this.#info === undefined) return state
    try {
      return (await this.write(this.#info, { noReplace: true })) === 'written' ? 'restored' : 'replaced'
    } catch (err) {
      if ((err as { cause?: { code?: unknown } }).cause?.code === 'EEXIST') return 'replaced'
      throw err
    }
  }

  /** Removes the copy if it is the file written. Safe twice. */
  async remove(): Promise<void> {
    const written = this.#written
    this.#written = undefined
    this.#info = undefined
    if (written !== undefined) await removeOwnFile(this.path, written)
  }
}
