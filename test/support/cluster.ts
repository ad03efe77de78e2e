import type { ChildProcess } from 'node:child_process'
import { join } from 'node:path'

import { JsonLines, spawnCli } from './cli.js'
import { startController, startEngines, type Controller, type Engines } from './ipp.js'
import { createNetns, type Netns } from './netns.js'
import { startSshd, type Sshd } from './sshd.js'

/** A cluster behind a login host: sshd, ipcontroller and engines in a network namespace of their own. */
export interface Cluster {
  readonly ns: Netns
  readonly sshd: Sshd
  /** Its files' `ssh` field names {@link Cluster.sshd}; it listens on the namespace's loopback only. */
  readonly controller: Controller
  readonly engines: Engines
  /** Stops engines, controller, sshd, then removes the namespace. */
  close(): Promise<void>
}

/**
 * Starts a {@link Cluster} with `engines` real ipengines, reachable from this host only through its sshd.
 *
 * @example
 * let cluster: Cluster
 * before(async () => (cluster = await startCluster({ engines: 2 })))
 * after(() => cluster.close())
 */
export async function startCluster(options: { engines: number; curve?: boolean }): Promise<Cluster> {
  const ns = await createNetns()
  try {
    const sshd = await startSshd({ netns: ns })
    const controller = await startController({
      netns: ns,
      ssh: `${sshd.user}@${sshd.host}:${sshd.port}`,
      ...(options.curve !== undefined && { curve: options.curve }),
    })
    const engines = startEngines(controller.engineFile, options.engines, { netns: ns })
    return {
      ns,
      sshd,
      controller,
      engines,
      async close() {
        await engines.close()
        await controller.close()
        await sshd.close()
        await ns.close()
      },
    }
  } catch (err) {
    await ns.close()
    throw err
  }
}

/**
 * The destination and options every `cluster` test gives `cluster start|attach|list|stop`: the sshd's key and
 * known_hosts, Debian's python there, the remote state and IPython dirs under `root`.
 *
 * @example
 * const listed = await runCli(['cluster', 'list', ...remoteClusterArgs(sshd, root), '--json'], env)
 */
export function remoteClusterArgs(sshd: Sshd, root: string): string[] {
  return [
    `root@${sshd.host}:${sshd.port}`,
    '--identity',
    sshd.clientKey,
    '--known-hosts',
    sshd.knownHostsFile,
    '--python',
    '/usr/bin/python3',
    '--remote-dir',
    join(root, 'remote'),
    '--remote-ipython-dir',
    join(root, 'remote-ipython'),
  ]
}

/**
 * Spawns `ipp-tunnel cluster start REMOTE… --local-python /usr/bin/python3 --json --debug EXTRA…` with `env`
 * (`remote`: {@link remoteClusterArgs} and what a test adds to it); its events are collected as they come. The
 * caller stops it.
 *
 * @example
 * const { child, events } = spawnClusterStart(remoteClusterArgs(sshd, root), ['-n', '2'], env)
 */
export function spawnClusterStart(
  remote: readonly string[],
  extra: readonly string[],
  env: NodeJS.ProcessEnv,
): { child: ChildProcess; events: JsonLines } {
  const child = spawnCli(
    ['cluster', 'start', ...remote, '--local-python', '/usr/bin/python3', '--json', '--debug', ...extra],
    env,
  )
  return { child, events: new JsonLines(child) }
}
