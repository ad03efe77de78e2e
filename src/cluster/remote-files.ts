import { posix } from 'node:path'

import { IppTunnelError } from '../errors/index.js'
import type { RemoteProcesses, RemoteProcessState } from '../remote/index.js'
import type { Link } from '../ssh/index.js'
import { clusterIdOf, processNames } from './names.js'

/** The last line a process wrote that says something. */
export function lastLine(text: string): string {
  return (
    text
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean)
      .at(-1) ?? ''
  )
}

/** Creates the remote IPython directory when it is missing (ipcontroller creates a profile, not the directory). */
export async function ensureRemoteDir(link: Link, dir: string): Promise<void> {
  const sftp = await link.sftp()
  await new Promise<void>((resolve, reject) =>
    sftp.stat(dir, (err: Error | null | undefined) => {
      if (!err) {
        resolve()
        return
      }
      sftp.mkdir(dir, { mode: 0o700 }, (mkdirError: Error | null | undefined) => {
        if (!mkdirError) resolve()
        else
          reject(
            new IppTunnelError(
              'E_REMOTE_DIR',
              `${link.destination}:${dir}: the IPython directory is missing and cannot be created (${mkdirError.message})`,
            ),
          )
      })
    }),
  )
}

/**
 * Removes the files the cluster's controller (and ipcluster engines) write in the profile, named by our cluster id
 * (ours, whoever else uses the profile); a controller stopped cleanly has removed them already.
 */
export async function removeConnectionFiles(
  link: Link,
  securityDir: string,
  clusterId: string,
): Promise<void> {
  const sftp = await link.sftp().catch(() => undefined)
  if (sftp === undefined) return
  const names = [`ipcontroller-${clusterId}-client.json`, `ipcontroller-${clusterId}-engine.json`]
  await Promise.all(
    names.map(
      (name) => new Promise<void>((resolve) => sftp.unlink(posix.join(securityDir, name), () => resolve())),
    ),
  )
}

/** The cluster of the profile there: its processes, cluster id and security directory (from its argv). */
export async function findCluster(
  procs: RemoteProcesses,
  profile: string,
  link: Link,
): Promise<{
  controller: RemoteProcessState
  engines: RemoteProcessState | undefined
  clusterId: string
  securityDir: string
}> {
  const names = processNames(profile)
  const controller = await procs.status(names.controller)
  const clusterId = clusterIdOf(controller.argv)
  const ipdir = controller.argv?.find((w) => w.startsWith('--ipython-dir='))?.slice('--ipython-dir='.length)
  if (controller.state === 'none' || clusterId === undefined || ipdir === undefined) {
    throw new IppTunnelError(
      'E_REMOTE_GONE',
      `no cluster of profile ${profile} of ours on ${link.destination}`,
    )
  }
  const engines = await procs.status(names.engines)
  return {
    controller,
    engines: engines.state === 'none' ? undefined : engines,
    clusterId,
    securityDir: posix.join(ipdir, `profile_${profile}`, 'security'),
  }
}
