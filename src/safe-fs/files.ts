import { constants, type Stats } from 'node:fs'
import { link, open, rename, rm, type FileHandle } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { basename, dirname, join } from 'node:path'

import { IppTunnelError, type ErrorCode } from '../errors/index.js'
import { ensureWritableDir, identityFrom, kindOf, tempNameFor, type FileIdentity } from './dirs.js'

/** The largest file the program reads (connection files are a few hundred bytes). */
export const MAX_FILE_BYTES = 1024 * 1024

/** A short reason for an fs error, for one-line messages. */
export function reason(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code
  switch (code) {
    case 'ENOENT':
      return 'no such file or directory'
    case 'EACCES':
    case 'EPERM':
      return 'permission denied'
    case 'EISDIR':
      return 'it is a directory'
    case 'ENOTDIR':
      return 'a parent is not a directory'
    case 'ELOOP':
      return 'it is a symbolic link'
    case 'ENOSPC':
      return 'no space left on device'
    case 'EROFS':
      return 'read-only file system'
    case undefined:
      return err instanceof Error ? err.message : String(err)
    default:
      return code
  }
}

export interface ReadOptions {
  /** What the file is, for messages (`connection file`). */
  readonly what?: string
  /** The error code to throw. Default `E_CONNFILE_READ`. */
  readonly code?: ErrorCode
  /** Refuse a symlink at `path` itself (for files inside the program's own directories). */
  readonly noFollow?: boolean
  readonly maxBytes?: number
}

/**
 * Reads a regular file safely: opened with `O_NONBLOCK` (a FIFO cannot block the thread pool), `fstat`ed, refused
 * unless it is a regular file of at most `maxBytes` (1 MiB), and read from the handle, never past the cap.
 * A `cause` with `code: 'ENOENT'` means the file is gone.
 *
 * @throws IppTunnelError `E_CONNFILE_READ` (or `options.code`) naming the path and, for a FIFO, a device or a
 *   directory, what it is.
 * @example
 * const { text, stats } = await readRegularFile(path, { what: 'connection file' })
 */
export async function readRegularFile(
  path: string,
  options: ReadOptions = {},
): Promise<{ text: string; stats: Stats }> {
  const what = options.what ?? 'connection file'
  const code = options.code ?? 'E_CONNFILE_READ'
  const max = options.maxBytes ?? MAX_FILE_BYTES
  let handle: FileHandle
  try {
    const flags =
      constants.O_RDONLY | constants.O_NONBLOCK | (options.noFollow === true ? constants.O_NOFOLLOW : 0)
    handle = await open(path, flags)
  } catch (err) {
    throw new IppTunnelError(code, `${path}: cannot read ${what} (${reason(err)})`, { cause: err })
  }
  try {
    const stats = await handle.stat()
    if (!stats.isFile()) {
      const not = stats.isDirectory() ? '' : ', not a regular file'
      throw new IppTunnelError(code, `${path}: cannot read ${what} (it is ${kindOf(stats)}${not})`)
    }
    const tooBig = `${path}: cannot read ${what} (it is larger than ${max} bytes; is it the right file?)`
    if (stats.size > max) throw new IppTunnelError(code, tooBig)
    // Sized by fstat, one byte more to see EOF; grown to the cap only if the file grows while it is read.
    let buffer = Buffer.alloc(stats.size + 1)
    let length = 0
    for (;;) {
      if (length === buffer.length) {
        const larger = Buffer.alloc(max + 1)
        buffer.copy(larger)
        buffer = larger
      }
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, length)
      if (bytesRead === 0) break
      length += bytesRead
      if (length > max) throw new IppTunnelError(code, tooBig)
    }
    return { text: buffer.subarray(0, length).toString('utf8'), stats }
  } catch (err) {
    if (err instanceof IppTunnelError) throw err
    throw new IppTunnelError(code, `${path}: cannot read ${what} (${reason(err)})`, { cause: err })
  } finally {
    await handle.close().catch(() => undefined)
  }
}

async function syncDirectory(dir: string): Promise<void> {
  // Best effort: the rename has happened; some file systems refuse fsync on a directory.
  try {
    const handle = await open(dir, 'r')
    try {
      await handle.sync()
    } finally {
      await handle.close()
    }
  } catch {
    // ignored on purpose
  }
}

export interface WriteOptions {
  /** Called with the identity of the file written before it takes its name. */
  readonly beforePlacing?: (identity: FileIdentity) => Promise<void>
  /** Never replace a file at the path: fail (cause code `EEXIST`) instead. */
  readonly noReplace?: boolean
}

/**
 * Writes a private text file atomically: a temp file `.<name>.<12 hex>.tmp` (mode 0600, created exclusively) in the
 * same directory, fsync, rename over `path`, fsync the directory. The directory is created 0700 when missing and
 * must pass the output-directory checks (own uid, not group/other-writable). On any failure the temp file is
 * removed and an existing file at `path` is left untouched. Returns the identity of the file written.
 *
 * `options.beforePlacing` is told the identity of the file before it takes the name (so that a record of it exists
 * even if the process dies right after); with `options.noReplace` an existing file at `path` is left alone and
 * the write fails with a `cause` whose code is `EEXIST`.
 *
 * @throws IppTunnelError `E_UNSAFE_PATH` for an unsafe directory, `E_CONNFILE_WRITE` naming the path otherwise.
 * @example
 * const written = await writeFileAtomic(join(dir, 'copies.json'), '[]\n', 'copy ledger')
 */
export async function writeFileAtomic(
  path: string,
  text: string,
  what = 'file',
  options: WriteOptions = {},
): Promise<FileIdentity> {
  const dir = dirname(path)
  const temp = join(dir, tempNameFor(basename(path), randomBytes(6).toString('hex')))
  let handle: FileHandle | undefined
  let created = false
  let identity: FileIdentity
  try {
    await ensureWritableDir(dir)
    handle = await open(
      temp,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    )
    created = true
    await handle.chmod(0o600)
    await handle.writeFile(text, 'utf8')
    await handle.sync()
    identity = identityFrom(await handle.stat({ bigint: true }))
    await handle.close()
    handle = undefined
    await options.beforePlacing?.(identity)
    if (options.noReplace === true) {
      await link(temp, path)
      await rm(temp, { force: true })
    } else await rename(temp, path)
    created = false
  } catch (err) {
    await handle?.close().catch(() => undefined)
    if (created) await rm(temp, { force: true }).catch(() => undefined)
    if (err instanceof IppTunnelError) throw err
    throw new IppTunnelError('E_CONNFILE_WRITE', `${path}: cannot write ${what} (${reason(err)})`, {
      cause: err,
    })
  }
  await syncDirectory(dir)
  return identity
}
