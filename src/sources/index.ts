/**
 * Where connection files come from. A source says "this file (bytes) appeared, changed or went away, seen from
 * host H"; the service decides the rest. {@link LocalDirectorySource} follows local directories with chokidar;
 * {@link RemoteDirectorySource} polls a directory on an ssh server over the SFTP session of the same link that
 * carries the forwards. Both report the same {@link SourceFile}.
 *
 * @example
 * const source = new RemoteDirectorySource({ destination, dir: '~/.ipython/profile_default/security', sftp })
 * source.on('file', (f) => console.log(f.id))
 * source.start()
 * await source.close()
 */
export type { SourceEvents, SourceFile, SourceOrigin, SourceStatus } from './types.js'
export {
  DEFAULT_MAX_REMOTE_FILES,
  isPlainName,
  RemoteDirectorySource,
  type RemoteDirectoryOptions,
} from './remote.js'
export { parseRemoteSpec, remotePathOf, type RemoteSpec } from './spec.js'
export { localCopyDir, jupyterRuntimeDir, remoteDefaultDirs } from './places.js'
export { LocalDirectorySource } from './local.js'
export { DirectoryWatcher, type WatcherHandlers } from './watcher.js'
