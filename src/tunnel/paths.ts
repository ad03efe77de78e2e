import { tmpdir, userInfo } from 'node:os'
import { basename, dirname, join, resolve } from 'node:path'

import { tunnelledKernelFile } from '../connection-file/index.js'

/**
 * Where the loopback copy of files found in `dir` goes by default, so that the user's tools find it unchanged:
 * for an IPython profile's `profile_<name>/security` it is the sibling profile `profile_<name>-tunnel/security`
 * (`ipyparallel.Client(profile="<name>-tunnel")`); for any other directory it is the sibling `<dir>-tunnel`.
 * Never the source directory itself.
 */
export function defaultOutDir(dir: string): string {
  const security = resolve(dir)
  const profile = dirname(security)
  if (basename(security) === 'security' && basename(profile).startsWith('profile_')) {
    return join(dirname(profile), `${basename(profile)}-tunnel`, 'security')
  }
  return `${security}-tunnel`
}

/**
 * The default loopback path for one connection file: for a kernel file `kernel-<id>.json`, jupyter_client's own name
 * for a tunnelled copy beside it, `kernel-<id>-ssh.json` (so `jupyter console --existing` finds it); for any other,
 * the same file name in {@link defaultOutDir} of its directory.
 */
export function defaultOutPath(file: string): string {
  const path = resolve(file)
  return tunnelledKernelFile(path) ?? join(defaultOutDir(dirname(path)), basename(path))
}

/**
 * The program's private runtime directory (mode 0700): `$IPP_TUNNEL_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/ipp-tunnel`,
 * else `<tmp>/ipp-tunnel-<uid>`. The service keeps its status socket there, and `--listen unix` its socket directories.
 *
 * @example
 * runtimeDir({ XDG_RUNTIME_DIR: '/run/user/1000' }) // '/run/user/1000/ipp-tunnel'
 */
export function defaultRuntimeDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.IPP_TUNNEL_RUNTIME_DIR !== undefined) return env.IPP_TUNNEL_RUNTIME_DIR
  if (env.XDG_RUNTIME_DIR !== undefined && env.XDG_RUNTIME_DIR !== '')
    return join(env.XDG_RUNTIME_DIR, 'ipp-tunnel')
  return join(tmpdir(), `ipp-tunnel-${userInfo().uid}`)
}
