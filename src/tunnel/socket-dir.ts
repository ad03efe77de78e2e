import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { lstat, mkdir, readdir, rmdir, unlink } from 'node:fs/promises'
import { join } from 'node:path'

import type { ConnectionKind } from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'
import { currentUid, ensurePrivateDir, kindOf } from '../safe-fs/index.js'

/** sun_path holds 108 bytes with the terminating NUL. */
const MAX_SOCKET_PATH = 107

/** `<pid>-<6 hex>`: a tunnel's socket directory; the pid tells a stale one (its process is gone) from a live one. */
const DIR_NAME = /^(\d+)-[0-9a-f]{6}$/

/** The base name of a file's sockets: `client:<port>`, `engine:<port>`, `kernel-<port>`. */
const BASE: Readonly<Record<ConnectionKind, string>> = {
  'ipp-client': 'client',
  'ipp-engine': 'engine',
  kernel: 'kernel',
}

/** The longest socket path a directory `dir` would hold (`engine:65535`). */
function longestSocketPath(dir: string): number {
  return Buffer.byteLength(dir) + 1 + 'engine:65535'.length
}

function dirNameLength(): number {
  return `${2 ** 22}-ffffff`.length + 1
}

/** Removes our own sockets in `dir` (lstat: sockets owned by us, nothing else), then the directory if empty. */
async function removeSockets(dir: string): Promise<void> {
  const uid = currentUid()
  let names: string[]
  try {
    names = await readdir(dir)
  } catch {
    return
  }
  for (const name of names) {
    const path = join(dir, name)
    const s = await lstat(path).catch(() => undefined)
    if (s?.isSocket() === true && s.uid === uid) await unlink(path).catch(() => undefined)
  }
  await rmdir(dir).catch(() => undefined)
}

/** Socket directories left in `parent` by runs that were killed: ours (lstat: a directory, our uid), pid gone. */
async function removeStale(parent: string): Promise<void> {
  const uid = currentUid()
  for (const name of await readdir(parent).catch(() => [])) {
    const pid = DIR_NAME.exec(name)?.[1]
    if (pid === undefined || existsSync(`/proc/${pid}`)) continue
    const dir = join(parent, name)
    const s = await lstat(dir).catch(() => undefined)
    if (s?.isDirectory() === true && s.uid === uid) await removeSockets(dir)
  }
}

/**
 * The private directory (0700, verified) that holds one tunnel's unix-socket listeners: `<parent>/<pid>-<hex>`.
 * `parent` is the runtime directory (made 0700 and verified); when its socket paths would not fit in sun_path
 * (107 bytes), `<tmp>/ipp-tunnel-<uid>` is used instead, verified the same way. Directories that runs killed
 * before they could clean up left in the parent are removed first (only our own sockets, by lstat).
 */
export class SocketDir {
  readonly path: string
  #removed = false

  private constructor(path: string) {
    this.path = path
  }

  static async create(parent: string, fallback: string): Promise<SocketDir> {
    const fits = (p: string) => longestSocketPath(join(p, 'x'.repeat(dirNameLength()))) <= MAX_SOCKET_PATH
    const chosen = fits(parent) ? parent : fallback
    if (!fits(chosen)) {
      throw new IppTunnelError(
        'E_UNSAFE_PATH',
        `${parent}: too long for unix socket paths (at most ${MAX_SOCKET_PATH} bytes); set IPP_TUNNEL_RUNTIME_DIR to a shorter directory`,
      )
    }
    await ensurePrivateDir(chosen, { what: 'socket directory', alternative: 'set IPP_TUNNEL_RUNTIME_DIR' })
    await removeStale(chosen)
    const path = join(chosen, `${String(process.pid)}-${randomBytes(3).toString('hex')}`)
    await mkdir(path, { mode: 0o700 })
    const dir = new SocketDir(path)
    try {
      const s = await lstat(path)
      const uid = currentUid()
      if (!s.isDirectory() || s.uid !== uid || (s.mode & 0o777) !== 0o700) {
        throw new IppTunnelError(
          'E_UNSAFE_PATH',
          `${path}: socket directory is ${kindOf(s)} owned by uid ${s.uid} with mode ${(s.mode & 0o777).toString(8)}, not a 0700 directory of yours`,
        )
      }
    } catch (err) {
      await dir.remove()
      throw err
    }
    return dir
  }

  /** The path prefix of a file's sockets in this directory, as the loopback file names it. */
  prefix(kind: ConnectionKind): string {
    return join(this.path, BASE[kind])
  }

  /** Removes the sockets left in it and the directory. Safe twice. */
  async remove(): Promise<void> {
    if (this.#removed) return
    this.#removed = true
    await removeSockets(this.path)
  }
}
