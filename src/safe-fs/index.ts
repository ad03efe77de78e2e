/**
 * Files and directories another local user may touch, handled as OpenSSH's `safe_path()` and systemd's `chase()`
 * do: directories are created 0700 and then verified with `lstat` (type, owner, mode); files are read only when
 * `fstat` says they are regular and small; writes are atomic and private; removals check the file is the one
 * written. Every refusal is an `IppTunnelError` naming the path and what to do.
 *
 * @example
 * await ensurePrivateDir(dir, { what: 'runtime directory' })
 * const { text } = await readRegularFile(join(dir, 'copies.json'), { noFollow: true })
 * const written = await writeFileAtomic(join(dir, 'copies.json'), text)
 * await removeOwnFile(join(dir, 'copies.json'), written)
 */
export {
  checkWritableDir,
  currentUid,
  ensurePrivateDir,
  ensureReadableDir,
  ensureWritableDir,
  identityFrom,
  identityOf,
  isSameFile,
  isSocket,
  kindOf,
  makePrivateTempDir,
  realPathOf,
  removeOwnFile,
  removeStaleTemps,
  sameIdentity,
  tempNameFor,
  type FileIdentity,
  type PrivateDirOptions,
} from './dirs.js'
export {
  MAX_FILE_BYTES,
  readRegularFile,
  reason,
  writeFileAtomic,
  type ReadOptions,
  type WriteOptions,
} from './files.js'
