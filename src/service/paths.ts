import { homedir } from 'node:os'
import { join, resolve } from 'node:path'

import { IppTunnelError } from '../errors/index.js'
import { checkWritableDir, ensurePrivateDir, realPathOf } from '../safe-fs/index.js'
import { defaultOutDir, defaultRuntimeDir } from '../tunnel/index.js'

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
  return defaultRuntimeDir(env)
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

/**
 * The checks the service makes before it reads or writes anything: the runtime directory is created 0700 or
 * verified (a real directory, the user's, mode exactly 0700); no output directory is a watched directory, compared
 * by real path (a symlink to a watched directory is seen through); an existing output directory is the user's and
 * not group/other-writable. Returns the output directories.
 *
 * @throws IppTunnelError `E_UNSAFE_PATH` for a planted or open directory, `E_USAGE` for an output directory that
 *   is a watched one.
 */
export async function checkServiceDirs(
  dirs: readonly string[],
  options: { readonly runtimeDir: string; readonly outDir?: string | undefined },
): Promise<string[]> {
  await ensurePrivateDir(options.runtimeDir, {
    what: 'runtime directory',
    alternative: 'set IPP_TUNNEL_RUNTIME_DIR',
  })
  const outDir = options.outDir
  const outDirs = [...new Set(dirs.map((d) => (outDir !== undefined ? resolve(outDir) : defaultOutDir(d))))]
  const realDirs = await Promise.all(dirs.map((d) => realPathOf(d)))
  for (const out of outDirs) {
    const watched = dirs[realDirs.indexOf(await realPathOf(out))]
    if (watched !== undefined) {
      const through = watched === out ? '' : ` (${watched}, through a symlink)`
      throw new IppTunnelError(
        'E_USAGE',
        `output directory ${out} is a watched directory${through}; choose another --out-dir`,
      )
    }
    await checkWritableDir(out)
  }
  return outDirs
}
