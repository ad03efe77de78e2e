import { IppTunnelError } from '../errors/index.js'
import {
  MAX_FILE_BYTES,
  readRegularFile,
  writeFileAtomic,
  type FileIdentity,
  type WriteOptions,
} from '../safe-fs/index.js'
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

/** The environment variable ipyparallel 8+ passes an engine's connection info in: the JSON of its engine file. */
export const CONNECTION_INFO_ENV = 'IPP_CONNECTION_INFO'

/**
 * The connection info in `env.IPP_CONNECTION_INFO`, validated exactly as a file's (at most 1 MiB, then
 * {@link parseConnectionFile}), its errors naming the variable instead of a path; `undefined` when unset or empty.
 *
 * @example
 * const info = connectionInfoFromEnv(process.env) // what ipcluster (ipyparallel 8+) gave its engines
 */
export function connectionInfoFromEnv(
  env: Readonly<Record<string, string | undefined>>,
): ConnectionInfo | undefined {
  const text = env[CONNECTION_INFO_ENV]
  if (text === undefined || text === '') return undefined
  if (Buffer.byteLength(text) > MAX_FILE_BYTES) {
    throw new IppTunnelError(
      'E_CONNFILE_READ',
      `${CONNECTION_INFO_ENV}: larger than ${MAX_FILE_BYTES} bytes; is it the engine connection info?`,
    )
  }
  return parseConnectionFile(text, CONNECTION_INFO_ENV)
}
