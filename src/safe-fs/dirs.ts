import { lstat, mkdir, mkdtemp, readdir, realpath, rm, chmod, stat } from 'node:fs/promises'
import { tmpdir, userInfo } from 'node:os'
import { basename, dirname, join, relative, resolve, sep } from 'node:path'
import type { BigIntStats, Stats } from 'node:fs'

import { IppTunnelError } from '../errors/index.js'

/** The uid files and directories must belong to: the user this process runs as (0 for root). */
export function currentUid(): number {
  return userInfo().uid
}

function octal(mode: number): string {
  return (mode & 0o777).toString(8).padStart(4, '0')
}

/** What a non-regular file is, for messages: `a FIFO`, `a directory`, … */
export function kindOf(stats: Stats): string {
  if (stats.isFile()) return 'a regular file'
  if (stats.isDirectory()) return 'a directory'
  if (stats.isSymbolicLink()) return 'a symbolic link'
  if (stats.isFIFO()) return 'a FIFO'
  if (stats.isSocket()) return 'a socket'
  if (stats.isCharacterDevice()) return 'a character device'
  if (stats.isBlockDevice()) return 'a block device'
  return 'not a regular file'
}

/** Whether a socket is at `path` now (an ssh-agent's, an OpenSSH master's); false for anything else or nothing. */
export async function isSocket(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isSocket()
  } catch {
    return false
  }
}

function unsafe(dir: string, what: string, problem: string, todo: string): IppTunnelError {
  return new IppTunnelError('E_UNSAFE_PATH', `${dir}: ${what} ${problem}; ${todo}`)
}

function isMissing(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT'
}

async function lstatOrUndefined(path: string): Promise<Stats | undefined> {
  try {
    return await lstat(path)
  } catch (err) {
    if (isMissing(err)) return undefined
    throw err
  }
}

/** Creates `dir` and missing parents with mode 0700 whatever the umask; returns the directories it created. */
async function createMissing(dir: string): Promise<string[]> {
  const first = await mkdir(dir, { recursive: true, mode: 0o700 })
  if (first === undefined) return []
  const created = [first]
  for (const part of relative(first, dir)
    .split(sep)
    .filter((p) => p !== '')) {
    created.push(join(created[created.length - 1] ?? first, part))
  }
  for (const path of created) await chmod(path, 0o700)
  return created
}

/** A directory we created must be exactly ours: a real directory (no symlink), our uid, mode 0700. */
async function verifyCreated(dir: string, what: string): Promise<void> {
  const uid = currentUid()
  const s = await lstat(dir)
  if (!s.isDirectory()) throw unsafe(dir, what, `is ${kindOf(s)}, not a directory`, 'remove it and try again')
  if (s.uid !== uid)
    throw unsafe(dir, what, `is owned by uid ${s.uid}, not you (${uid})`, 'remove it and try again')
  if ((s.mode & 0o777) !== 0o700)
    throw unsafe(dir, what, `has mode ${octal(s.mode)}, not 0700`, 'remove it and try again')
}

export interface PrivateDirOptions {
  /** What the directory is, for messages (`runtime directory`). */
  readonly what: string
  /** What the user can do instead of removing it (`set IPP_TUNNEL_RUNTIME_DIR`). */
  readonly alternative?: string
}

/**
 * Creates `dir` (0700, parents too) unless it exists, then verifies with `lstat` that it is a real directory (not a
 * symlink), owned by the current uid, with mode exactly 0700: a directory another local user planted is refused
 * before anything in it is read or written.
 *
 * @throws IppTunnelError `E_UNSAFE_PATH` naming the directory and what is wrong.
 * @example
 * await ensurePrivateDir(runtimeDir(), { what: 'runtime directory', alternative: 'set IPP_TUNNEL_RUNTIME_DIR' })
 */
export async function ensurePrivateDir(dir: string, options: PrivateDirOptions): Promise<void> {
  const { what } = options
  const todo = `remove it${options.alternative !== undefined ? ` or ${options.alternative}` : ''}`
  await createMissing(dir)
  const uid = currentUid()
  const s = await lstat(dir)
  if (s.isSymbolicLink()) throw unsafe(dir, what, 'is a symbolic link', todo)
  if (!s.isDirectory()) throw unsafe(dir, what, `is ${kindOf(s)}, not a directory`, todo)
  if (s.uid !== uid) throw unsafe(dir, what, `is owned by uid ${s.uid}, not you (${uid})`, todo)
  if ((s.mode & 0o777) !== 0o700) {
    throw unsafe(dir, what, `has mode ${octal(s.mode)}, not 0700`, `chmod 700 ${dir}, or ${todo}`)
  }
}

/**
 * Checks a directory the program writes files into (an output directory) without creating it. When it exists, the
 * directory it resolves to must be owned by the current uid and not writable by group or others, and a symlink
 * naming it must belong to the user or root (not to another user who could point it elsewhere). A shared
 * directory with the sticky bit (`/tmp`), owned by the user or root, is accepted too: there no one else can
 * rename or remove the files we write (the temp file is created `O_EXCL | O_NOFOLLOW` and renamed into place).
 *
 * @throws IppTunnelError `E_UNSAFE_PATH` naming the directory and what is wrong.
 */
export async function checkWritableDir(dir: string, what = 'output directory'): Promise<void> {
  const uid = currentUid()
  const link = await lstatOrUndefined(dir)
  if (link === undefined) return
  if (link.isSymbolicLink() && link.uid !== uid && link.uid !== 0) {
    throw unsafe(
      dir,
      what,
      `is a symbolic link owned by uid ${link.uid}, not you (${uid})`,
      'choose another directory',
    )
  }
  let s: Stats
  try {
    s = await stat(dir)
  } catch (err) {
    if (isMissing(err))
      throw unsafe(dir, what, 'is a dangling symbolic link', 'remove it or choose another directory')
    throw err
  }
  if (!s.isDirectory())
    throw unsafe(dir, what, `is ${kindOf(s)}, not a directory`, 'choose another directory')
  const shared = (s.mode & 0o022) !== 0 && (s.mode & 0o1000) !== 0 && s.uid === 0
  if (s.uid !== uid && !shared) {
    throw unsafe(dir, what, `is owned by uid ${s.uid}, not you (${uid})`, 'choose a directory of your own')
  }
  if ((s.mode & 0o022) !== 0 && (s.mode & 0o1000) === 0) {
    throw unsafe(
      dir,
      what,
      `is writable by group or others (mode ${octal(s.mode)}) without the sticky bit`,
      `chmod go-w ${dir} or choose another directory`,
    )
  }
}

/**
 * Makes sure the program may write into `dir`: missing directories are created 0700 and verified (real directory,
 * own uid, mode 0700); an existing one passes {@link checkWritableDir}.
 *
 * @throws IppTunnelError `E_UNSAFE_PATH` naming the directory and what is wrong.
 */
export async function ensureWritableDir(dir: string, what = 'output directory'): Promise<void> {
  const created = await createMissing(dir)
  for (const path of created) await verifyCreated(path, what)
  if (created.length === 0) await checkWritableDir(dir, what)
}

/**
 * Creates missing directories of `dir` (0700, verified) and leaves an existing one as it is: for directories the
 * program only reads (watched directories).
 */
export async function ensureReadableDir(dir: string, what = 'watched directory'): Promise<void> {
  for (const path of await createMissing(dir)) await verifyCreated(path, what)
}

/**
 * A fresh private directory under the system temp directory (`mkdtemp`), verified like a directory we create:
 * real directory, own uid, mode 0700.
 *
 * @example
 * const dir = await makePrivateTempDir('ipp-tunnel-')
 */
export async function makePrivateTempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  try {
    await chmod(dir, 0o700)
    await verifyCreated(dir, 'private directory')
  } catch (err) {
    await rm(dir, { recursive: true, force: true }).catch(() => undefined)
    throw err
  }
  return dir
}

/**
 * The real path of `path`: `realpath` when it exists, else the real path of its nearest existing ancestor with the
 * missing components appended (what it will be once created).
 */
export async function realPathOf(path: string): Promise<string> {
  const absolute = resolve(path)
  const rest: string[] = []
  let current = absolute
  for (;;) {
    try {
      return join(await realpath(current), ...rest)
    } catch (err) {
      const parent = dirname(current)
      if (!isMissing(err) || parent === current) throw err
      rest.unshift(basename(current))
      current = parent
    }
  }
}

/**
 * What identifies a file whatever its path: device and inode, and the modification time in nanoseconds where it was
 * taken — a file system gives a freed inode number to the next file at once (remove a copy, write a file of your own
 * there: same inode), and the time tells the two apart.
 */
export interface FileIdentity {
  readonly dev: number
  readonly ino: number
  /** `mtimeNs` as a decimal string (JSON has no bigint); absent in identities recorded before it was kept. */
  readonly mtimeNs?: string
}

/** The identity of a file from its (bigint) stat. */
export function identityFrom(s: BigIntStats): FileIdentity {
  return { dev: Number(s.dev), ino: Number(s.ino), mtimeNs: String(s.mtimeNs) }
}

/** True when two identities name the same file: same device and inode, and the same time where both have one. */
export function sameIdentity(a: FileIdentity, b: FileIdentity): boolean {
  return (
    a.dev === b.dev &&
    a.ino === b.ino &&
    (a.mtimeNs === undefined || b.mtimeNs === undefined || a.mtimeNs === b.mtimeNs)
  )
}

/** The identity of what `path` names (following symlinks), or undefined when nothing is there. */
export async function identityOf(path: string): Promise<FileIdentity | undefined> {
  try {
    return identityFrom(await stat(path, { bigint: true }))
  } catch (err) {
    if (isMissing(err) || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined
    throw err
  }
}

/**
 * True when `a` and `b` are the same file: same device and inode where both exist, else the same real path.
 *
 * @example
 * if (await isSameFile(out, source)) throw …
 */
export async function isSameFile(a: string, b: string): Promise<boolean> {
  const [ia, ib] = await Promise.all([identityOf(a), identityOf(b)])
  if (ia !== undefined && ib !== undefined) return sameIdentity(ia, ib)
  return (await realPathOf(a)) === (await realPathOf(b))
}

/**
 * Removes `path` only if it is a regular file owned by the current uid and, when `identity` is given, the very file
 * the program wrote (same device and inode). Returns whether it removed it.
 */
export async function removeOwnFile(path: string, identity?: FileIdentity): Promise<boolean> {
  const s = await lstat(path, { bigint: true }).catch((err: unknown) => {
    if (isMissing(err)) return undefined
    throw err
  })
  if (s === undefined || !s.isFile() || Number(s.uid) !== currentUid()) return false
  if (identity !== undefined && !sameIdentity(identityFrom(s), identity)) return false
  await rm(path, { force: true })
  return true
}

/** `.NAME.<12 hex>.tmp`: the temp file of an atomic write of NAME. */
const TEMP_FILE = /^\.(.+)\.[0-9a-f]{12}\.tmp$/

/** The temp file name for an atomic write of `name`. */
export function tempNameFor(name: string, hex: string): string {
  return `.${name}.${hex}.tmp`
}

/**
 * Removes the temp files of interrupted atomic writes in `dir` (`.NAME.<hex>.tmp`, regular, owned by the current
 * uid), for every NAME `wanted` accepts. A missing directory is fine. Returns the removed paths.
 */
export async function removeStaleTemps(
  dir: string,
  wanted: (name: string) => boolean = () => true,
): Promise<string[]> {
  let names: string[]
  try {
    names = await readdir(dir)
  } catch (err) {
    if (isMissing(err) || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return []
    throw err
  }
  const removed: string[] = []
  for (const name of names) {
    const match = TEMP_FILE.exec(name)
    if (match?.[1] === undefined || !wanted(match[1])) continue
    const path = join(dir, name)
    if (await removeOwnFile(path)) removed.push(path)
  }
  return removed
}
