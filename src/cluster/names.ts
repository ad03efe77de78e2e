import { randomBytes } from 'node:crypto'

import { IppTunnelError } from '../errors/index.js'

/** A profile name we put in remote process names and paths: letters, digits, `. _ -`, not starting with one of those. */
const PROFILE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$/u

/** Refuses a profile name that could not be a remote process name or a path part of ours. */
export function checkProfile(profile: string): void {
  if (!PROFILE.test(profile)) {
    throw new IppTunnelError(
      'E_USAGE',
      `--profile ${JSON.stringify(profile)}: use letters, digits, '.', '_' or '-' (at most 40, starting with a letter or digit)`,
    )
  }
}

/** The remote process names of a cluster: its controller and its engines. */
export function processNames(profile: string): { controller: string; engines: string } {
  return { controller: `cluster-${profile}-controller`, engines: `cluster-${profile}-engines` }
}

/** The profile a remote process name of ours belongs to, if it is a controller's. */
export function profileOfController(name: string): string | undefined {
  return /^cluster-(.+)-controller$/u.exec(name)?.[1]
}

/**
 * The cluster id of a new cluster: its connection files are `ipcontroller-<id>-client.json`, never a file an earlier
 * run or the user's own controller left in the profile.
 */
export function newClusterId(): string {
  return `ipptunnel-${randomBytes(5).toString('hex')}`
}

/** The `--cluster-id=` a controller of ours was started with (its argv in the supervisor's state). */
export function clusterIdOf(argv: readonly string[] | undefined): string | undefined {
  const word = argv?.find((w) => w.startsWith('--cluster-id='))
  const id = word?.slice('--cluster-id='.length)
  return id !== undefined && /^ipptunnel-[0-9a-f]{10}$/u.test(id) ? id : undefined
}
