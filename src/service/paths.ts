import { homedir, tmpdir, userInfo } from 'node:os'
import { join } from 'node:path'

/**
 * `$IPYTHONDIR`, else `~/.ipython`.
 *
 * @example
 * ipythonDir({ IPYTHONDIR: '/srv/ipython' }) // '/srv/ipython'
 */
export function ipythonDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.IPYTHONDIR ?? join(homedir(), '.ipython')
}

/**
 * The security directory of an IPython profile, where ipcontroller writes its connection files.
 *
 * @example
 * profileSecurityDir('default') // '/home/me/.ipython/profile_default/security'
 */
export function profileSecurityDir(profile: string, env: NodeJS.ProcessEnv = process.env): string {
  return join(ipythonDir(env), `profile_${profile}`, 'security')
}

/**
 * The service's private directory (mode 0700): `$XDG_RUNTIME_DIR/ipp-tunnel`, else `<tmp>/ipp-tunnel-<uid>`.
 * It holds the status socket and the list of copies the running service wrote. `$IPP_TUNNEL_RUNTIME_DIR` overrides it.
 *
 * @example
 * runtimeDir({ XDG_RUNTIME_DIR: '/run/user/1000' }) // '/run/user/1000/ipp-tunnel'
 */
export function runtimeDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.IPP_TUNNEL_RUNTIME_DIR !== undefined) return env.IPP_TUNNEL_RUNTIME_DIR
  if (env.XDG_RUNTIME_DIR !== undefined && env.XDG_RUNTIME_DIR !== '')
    return join(env.XDG_RUNTIME_DIR, 'ipp-tunnel')
  return join(tmpdir(), `ipp-tunnel-${userInfo().uid}`)
}

/** File name of the status socket inside the runtime directory. */
export const STATUS_SOCKET = 'service.sock'

/**
 * The unix socket the service answers `status` on.
 *
 * @example
 * const report = await queryStatus(statusSocketPath())
 */
export function statusSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(runtimeDir(env), STATUS_SOCKET)
}
