import { randomBytes } from 'node:crypto'
import { tmpdir } from 'node:os'
import { basename, join, resolve } from 'node:path'

import { IppTunnelError } from '../errors/index.js'
import { parseDestination, type HostKeyPolicy } from '../ssh/index.js'
import type { EngineCommandOptions } from './command.js'
import type { EngineGroup } from './group.js'
import {
  hostArgs,
  NODE_FILE,
  nodeEngineWrapper,
  nodeNames,
  parseTagged,
  slurmNodeLauncher,
  startNodeTunnels,
  type HostList,
  type NodeTunnels,
} from './nodes.js'
import { ENGINE_STEP_NAME, settleEngineSteps } from './slurm.js'

/**
 * The ssh settings each node tunnel (`ipp-tunnel node-tunnel` on every node) is started with, as its flags take
 * them: paths, not providers, since another process on another node reads them.
 */
export interface NodeSshSettings {
  readonly ssh?: string | undefined
  readonly identity?: string | undefined
  readonly knownHosts?: string | undefined
  readonly hostKeyCheck?: HostKeyPolicy | undefined
  readonly passphraseFile?: string | undefined
  readonly configFile?: string | undefined
}

/**
 * The `ipp-tunnel` flags for {@link NodeSshSettings} (paths made absolute).
 *
 * @example nodeSshArgv({ identity: 'id_ed25519' }) // ['--identity', '/home/me/id_ed25519']
 * @throws IppTunnelError `E_DESTINATION` naming `--ssh` when it is not `[user@]host[:port]`.
 */
export function nodeSshArgv(settings: NodeSshSettings): string[] {
  const argv: string[] = []
  const pairs = [
    ['--ssh', settings.ssh],
    ['--identity', settings.identity],
    ['--known-hosts', settings.knownHosts],
    ['--host-key-check', settings.hostKeyCheck],
    ['--passphrase-file', settings.passphraseFile],
    ['--ssh-config', settings.configFile],
  ] as const
  for (const [flag, value] of pairs) {
    if (value === undefined) continue
    if (flag === '--ssh') parseDestination(value, '--ssh')
    argv.push(flag, flag === '--ssh' || flag === '--host-key-check' ? value : resolve(value))
  }
  return argv
}

/** Where the engines run when not all on this host: OpenMPI's host list, or the Slurm allocation. */
export interface AcrossNodes {
  readonly hosts: HostList | undefined
  readonly slurmNodes: number | undefined
  /** One name per node tunnel. */
  readonly nodes: readonly string[]
}

/**
 * Checks the host options and names the nodes; undefined when every engine runs on this host.
 *
 * @throws IppTunnelError `E_USAGE` for hosts without `mpi`, hosts with `slurm`, `slurm` outside an allocation, or a
 * bad host list.
 */
export async function nodesOf(options: {
  readonly hosts?: HostList | undefined
  readonly slurm?: boolean | undefined
  readonly mpi?: boolean | undefined
  readonly env: NodeJS.ProcessEnv
}): Promise<AcrossNodes | undefined> {
  const { hosts } = options
  if (hosts !== undefined && options.slurm === true) {
    throw new IppTunnelError(
      'E_USAGE',
      '--slurm runs on the allocated nodes: leave out --host and --hostfile',
    )
  }
  if (hosts !== undefined && options.mpi !== true) {
    throw new IppTunnelError('E_USAGE', '--host and --hostfile run the engines under one mpiexec: add --mpi')
  }
  const slurmNodes = options.slurm === true ? slurmNodeCount(options.env) : undefined
  if (hosts !== undefined) return { hosts, slurmNodes, nodes: await nodeNames(hosts) }
  if (slurmNodes === undefined) return undefined
  const nodes = Array.from({ length: slurmNodes }, (_, i) => `slurm node #${String(i)}`)
  return { hosts, slurmNodes, nodes }
}

/** The number of nodes of the Slurm allocation this runs in. */
function slurmNodeCount(env: NodeJS.ProcessEnv): number {
  if ((env.SLURM_JOB_ID ?? '') === '') {
    throw new IppTunnelError(
      'E_USAGE',
      '--slurm runs inside a Slurm allocation (SLURM_JOB_ID is not set): run it under salloc or in an sbatch script',
    )
  }
  const nodes = Number(env.SLURM_JOB_NUM_NODES ?? env.SLURM_NNODES ?? '1')
  if (!Number.isInteger(nodes) || nodes < 1) {
    throw new IppTunnelError(
      'E_USAGE',
      `SLURM_JOB_NUM_NODES is not a node count: ${String(env.SLURM_JOB_NUM_NODES)}`,
    )
  }
  return nodes
}

/** The node tunnels, started, and what the engines' launch needs to run on them. */
export interface NodeLaunch {
  readonly tunnels: NodeTunnels
  /** Options for {@link launchEngines}: the node's file, the wrapper, the hosts, the launcher. */
  readonly across: Partial<EngineCommandOptions>
  /** Follows the group's output to learn which node each engine is on. */
  follow(group: EngineGroup): void
  /** The engine ids of each node. */
  nodesOf(ids: readonly number[]): Record<string, number[]>
}

/**
 * Starts one node tunnel per node (`ipp-tunnel node-tunnel` through mpiexec or srun); the caller waits for
 * {@link NodeTunnels.ready} before launching the engines with `across`.
 */
export function startAcross(
  where: AcrossNodes,
  options: {
    readonly file: string
    readonly ippTunnel: readonly string[]
    readonly ssh: NodeSshSettings
    readonly mpi: boolean
    readonly mpiexec?: string | undefined
    readonly root: boolean
    readonly env: NodeJS.ProcessEnv
  },
): NodeLaunch {
  const { hosts, slurmNodes, nodes } = where
  // A path of the same name on every node; each node tunnel makes its own <hostname> directory in it.
  const jobDir = join(tmpdir(), `ipp-tunnel-job-${randomBytes(6).toString('hex')}`)
  const tunnels = startNodeTunnels({
    ...(hosts !== undefined && { hosts }),
    ...(slurmNodes !== undefined && { launcher: slurmNodeLauncher(slurmNodes) }),
    nodes,
    command: [
      ...options.ippTunnel,
      'node-tunnel',
      options.file,
      '--job-dir',
      jobDir,
      ...(slurmNodes !== undefined ? ['--until-eof'] : []),
      ...nodeSshArgv(options.ssh),
    ],
    stopByEof: slurmNodes !== undefined,
    ...(options.mpiexec !== undefined && { mpiexec: options.mpiexec }),
    root: options.root,
    env: options.env,
  })
  const across = {
    file: NODE_FILE,
    // Under Slurm, OpenMPI's mpiexec runs its ranks on the allocation's nodes by itself.
    mpiArgs: [...(hosts === undefined ? [] : hostArgs(hosts)), '--tag-output'],
    wrapper: nodeEngineWrapper(jobDir, basename(options.file)),
    ...(slurmNodes !== undefined &&
      !options.mpi && { launcher: ['srun', '--overlap', '--label', `--job-name=${ENGINE_STEP_NAME}`] }),
  }
  const hostOfRank = new Map<number, string>()
  const announcedBy = new Map<number, number>()
  return {
    tunnels,
    across,
    follow(group) {
      group.on('engine-output', (e) => {
        const tagged = parseTagged(e.line)
        if (tagged === undefined) return
        const node = /^ipp-tunnel-node (\S+)/.exec(tagged.text)
        if (node) hostOfRank.set(tagged.rank, node[1] ?? '')
        const id = /Completed registration with id (\d+)/.exec(tagged.text)
        if (id) announcedBy.set(Number(id[1]), tagged.rank)
      })
    },
    nodesOf(ids) {
      const per: Record<string, number[]> = {}
      for (const id of ids) {
        const rank = announcedBy.get(id)
        const host = (rank === undefined ? undefined : hostOfRank.get(rank)) ?? 'unknown'
        ;(per[host] ??= []).push(id)
      }
      return per
    },
  }
}

/**
 * Under Slurm, a launcher killed after its grace period (srun, or mpiexec's srun of its daemons) leaves its step
 * while the tasks wind down on the nodes: wait for it, cancel it if it lingers, and say so if it stays.
 */
export async function settleSteps(env: NodeJS.ProcessEnv, warn: (message: string) => void): Promise<void> {
  const job = env.SLURM_JOB_ID ?? ''
  try {
    const left = await settleEngineSteps(job, env)
    if (left.length > 0) {
      warn(
        `job steps ${left.map((s) => s.id).join(', ')} still run after scancel; Slurm kills them after its KillWait`,
      )
    }
  } catch (err) {
    warn(`waiting for the engines' job steps: ${String(err)}`)
  }
}
