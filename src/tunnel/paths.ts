import { basename, dirname, join, resolve } from 'node:path'

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

/** The default loopback path for one connection file: same file name, in {@link defaultOutDir} of its directory. */
export function defaultOutPath(file: string): string {
  return join(defaultOutDir(dirname(resolve(file))), basename(file))
}
