import { readRegularFile, writeFileAtomic, type FileIdentity, type WriteOptions } from '../safe-fs/index.js'
import { parseConnectionFile } from './parse.js'
import { serializeConnectionFile } from './serialize.js'
import type { ConnectionInfo } from './types.js'

export { writeFileAtomic }

/**
 * Reads and parses a connection file. Only a regular file of at most 1 MiB is read (a FIFO, a device or a
 * directory is refused at once, without blocking). `warnings` says when the file is readable or writable by group
 * or others (it holds the session key); nothing is printed.
 *
 * @throws IppTunnelError `E_CONNFILE_READ` when the file cannot be read or is not a regular file, else as
 *   {@link parseConnectionFile}.
 */
export async function readConnectionFile(
  path: string,
): Promise<{ info: ConnectionInfo; warnings: string[] }> {
  const { text, stats } = await readRegularFile(path, { what: 'connection file' })
  const info = parseConnectionFile(text, path)
  const warnings: string[] = []
  if ((stats.mode & 0o066) !== 0) {
    const octal = (stats.mode & 0o777).toString(8).padStart(4, '0')
    warnings.push(
      `${path} is readable or writable by group or others (mode ${octal}) and holds the session key: chmod 600 ${path}`,
    )
  }
  return { info, warnings }
}

/**
 * Writes a connection file atomically: a temp file `.<name>.<random>.tmp` (mode 0600) in the same
 * directory, fsync, rename over `path`, fsync the directory. A missing directory is created 0700; an existing one
 * must be the user's and not group/other-writable. On failure the temp file is removed and any existing file at
 * `path` is left untouched. Returns the device and inode of the file written.
 *
 * `options` as for {@link writeFileAtomic}.
 *
 * @throws IppTunnelError `E_CONNFILE_WRITE` naming the path, `E_UNSAFE_PATH` for an unsafe directory.
 */
export async function writeConnectionFileAtomic(
  path: string,
  info: ConnectionInfo,
  options: WriteOptions = {},
): Promise<FileIdentity> {
  return writeFileAtomic(path, serializeConnectionFile(info), 'connection file', options)
}
