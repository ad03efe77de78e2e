import { randomBytes } from 'node:crypto'
import { chmod, mkdir, open, rename, rm, type FileHandle } from 'node:fs/promises'
import { basename, dirname, join, relative, sep } from 'node:path'

import { IppTunnelError } from '../errors/index.js'
import { parseConnectionFile } from './parse.js'
import { serializeConnectionFile } from './serialize.js'
import type { ConnectionInfo } from './types.js'

function reason(err: unknown): string {
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

/**
 * Reads and parses a connection file. `warnings` says when the file is readable or writable by group
 * or others (it holds the session key); nothing is printed.
 *
 * @throws IppTunnelError `E_CONNFILE_READ` when the file cannot be read, else as {@link parseConnectionFile}.
 */
export async function readConnectionFile(
  path: string,
): Promise<{ info: ConnectionInfo; warnings: string[] }> {
  let text: string
  let mode: number
  try {
    const handle = await open(path, 'r')
    try {
      mode = (await handle.stat()).mode
      text = await handle.readFile('utf8')
    } finally {
      await handle.close()
    }
  } catch (err) {
    throw new IppTunnelError('E_CONNFILE_READ', `${path}: cannot read connection file (${reason(err)})`, {
      cause: err,
    })
  }
  const info = parseConnectionFile(text, path)
  const warnings: string[] = []
  if ((mode & 0o066) !== 0) {
    const octal = (mode & 0o777).toString(8).padStart(4, '0')
    warnings.push(
      `${path} is readable or writable by group or others (mode ${octal}) and holds the session key: chmod 600 ${path}`,
    )
  }
  return { info, warnings }
}

/** Creates `dir` and any missing parents with mode 0700 (exactly, whatever the umask). */
async function makeDirectory(dir: string): Promise<void> {
  const first = await mkdir(dir, { recursive: true, mode: 0o700 })
  if (first === undefined) return
  let current = first
  const rest = relative(first, dir)
    .split(sep)
    .filter((part) => part !== '')
  await chmod(current, 0o700)
  for (const part of rest) {
    current = join(current, part)
    await chmod(current, 0o700)
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

/**
 * Writes a connection file atomically: a temp file `.<name>.<random>.tmp` (mode 0600) in the same
 * directory, fsync, rename over `path`, fsync the directory. A missing directory is created 0700.
 * On failure the temp file is removed and any existing file at `path` is left untouched.
 *
 * @throws IppTunnelError `E_CONNFILE_WRITE` naming the path.
 */
export async function writeConnectionFileAtomic(path: string, info: ConnectionInfo): Promise<void> {
  await writeFileAtomic(path, serializeConnectionFile(info), 'connection file')
}

/**
 * Writes any private text file the same way as {@link writeConnectionFileAtomic}: 0600, atomic, directory 0700.
 *
 * @throws IppTunnelError `E_CONNFILE_WRITE` naming the path.
 */
export async function writeFileAtomic(path: string, text: string, what = 'file'): Promise<void> {
  const dir = dirname(path)
  const temp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`)
  let handle: FileHandle | undefined
  let created = false
  try {
    await makeDirectory(dir)
    handle = await open(temp, 'wx', 0o600)
    created = true
    await handle.chmod(0o600)
    await handle.writeFile(text, 'utf8')
    await handle.sync()
    await handle.close()
    handle = undefined
    await rename(temp, path)
  } catch (err) {
    await handle?.close().catch(() => undefined)
    if (created) await rm(temp, { force: true }).catch(() => undefined)
    throw new IppTunnelError('E_CONNFILE_WRITE', `${path}: cannot write ${what} (${reason(err)})`, {
      cause: err,
    })
  }
  await syncDirectory(dir)
}
