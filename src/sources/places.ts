import { homedir } from 'node:os'
import { join, posix } from 'node:path'

import type { ConnectionKind } from '../connection-file/index.js'

type Env = Readonly<Record<string, string | undefined>>

/**
 * This machine's Jupyter runtime directory, as jupyter_core finds it: `$JUPYTER_RUNTIME_DIR`, else
 * `$JUPYTER_DATA_DIR/runtime`, else `$XDG_DATA_HOME/jupyter/runtime`, else `~/.local/share/jupyter/runtime`.
 *
 * @example
 * jupyterRuntimeDir({ JUPYTER_RUNTIME_DIR: '/run/jupyter' }) // '/run/jupyter'
 */
export function jupyterRuntimeDir(env: Env): string {
  if (env.JUPYTER_RUNTIME_DIR) return env.JUPYTER_RUNTIME_DIR
  if (env.JUPYTER_DATA_DIR) return join(env.JUPYTER_DATA_DIR, 'runtime')
  const data = env.XDG_DATA_HOME ? env.XDG_DATA_HOME : join(homedir(), '.local', 'share')
  return join(data, 'jupyter', 'runtime')
}

/**
 * Where the local copy of a file pulled from `remotePath` goes, by the rules local files follow: a remote
 * `…/profile_<name>/security/X` lands in `<ipythonDir>/profile_<name>-tunnel/security/`, a kernel file in this
 * machine's Jupyter runtime directory, anything else nowhere (undefined: the user must give `--out-dir`).
 * `outDir` overrides all of it.
 *
 * @example
 * localCopyDir('/home/me/.ipython/profile_mpi/security/ipcontroller-client.json', 'ipp-client', {
 *   ipythonDir: '/home/you/.ipython',
 *   runtimeDir: '/home/you/.local/share/jupyter/runtime',
 * }) // '/home/you/.ipython/profile_mpi-tunnel/security'
 */
export function localCopyDir(
  remotePath: string,
  kind: ConnectionKind | undefined,
  places: { ipythonDir: string; runtimeDir: string; outDir?: string | undefined },
): string | undefined {
  if (places.outDir !== undefined) return places.outDir
  if (kind === 'kernel') return places.runtimeDir
  const security = posix.dirname(remotePath)
  const profile = posix.basename(posix.dirname(security))
  if (posix.basename(security) === 'security' && /^profile_./u.test(profile)) {
    return join(places.ipythonDir, `${profile}-tunnel`, 'security')
  }
  return undefined
}

/**
 * The directories `--remote host` follows when no directory is given: the security directory of the ipyparallel
 * profile (default `default`) and the Jupyter runtime directory, both under the remote home directory.
 *
 * @example
 * remoteDefaultDirs('mpi') // ['~/.ipython/profile_mpi/security', '~/.local/share/jupyter/runtime']
 */
export function remoteDefaultDirs(profile = 'default'): string[] {
  return [`~/.ipython/profile_${profile}/security`, '~/.local/share/jupyter/runtime']
}
