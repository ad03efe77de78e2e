import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'

import { startController, type Controller } from './ipp.js'
import { createNetns, joinClusterNetwork, type Netns } from './netns.js'
import { startSshd, type Sshd } from './sshd.js'

const run = promisify(execFile)

/** A controller in a namespace of its own, reachable only through the sshd there, with no engines. */
export interface SshRemote {
  readonly ns: Netns
  readonly sshd: Sshd
  /** Its engine file's `ssh` field names {@link SshRemote.sshd}; it listens on the namespace's loopback. */
  readonly ctl: Controller
  /** Stops controller and sshd, then removes the namespace. Safe twice. */
  close(): Promise<void>
}

/** Options of the ssh servers these helpers start. */
export interface NodeSshdOptions {
  /** Lines appended to every sshd_config (e.g. `SetEnv HOME=…`, so that logins skip root's shell start-up). */
  readonly sshdConfig?: string
}

const extraConfigOf = (options: NodeSshdOptions) =>
  options.sshdConfig === undefined ? {} : { extraConfig: options.sshdConfig }

/**
 * Starts namespace, sshd and controller (`controllerArgs` appended to ipcontroller's command line).
 *
 * @example
 * const remote = await startSshRemote(['--HeartMonitor.period=500'])
 * t.after(() => remote.close())
 */
export async function startSshRemote(
  controllerArgs: readonly string[] = [],
  options: NodeSshdOptions = {},
): Promise<SshRemote> {
  const ns = await createNetns()
  const owned: { sshd?: Sshd; ctl?: Controller } = {}
  let closing: Promise<void> | undefined
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      await owned.ctl?.close()
      await owned.sshd?.close()
      await ns.close()
    })())
  try {
    const sshd = (owned.sshd = await startSshd({ netns: ns, ...extraConfigOf(options) }))
    const ctl = (owned.ctl = await startController({
      netns: ns,
      engineSsh: `root@${sshd.host}:${sshd.port}`,
      extraArgs: controllerArgs,
    }))
    return { ns, sshd, ctl, close }
  } catch (err) {
    await close()
    throw err
  }
}

/** A "node": a network namespace with a host name of its own (a UTS namespace for its sshd) and an sshd. */
export interface Node {
  readonly name: string
  readonly ns: Netns
  readonly sshd: Sshd
  /** Stops the sshd, then removes the namespace (killing whatever still runs in it). Safe twice. */
  close(): Promise<void>
}

/**
 * Starts a {@link Node} named `ippnode-<random>`: everything its sshd starts (OpenMPI's orted, a node tunnel,
 * engines) sees that host name.
 */
export async function startNode(options: NodeSshdOptions = {}): Promise<Node> {
  const name = `ippnode-${randomBytes(3).toString('hex')}`
  const netns = await createNetns()
  const uts: Netns = {
    ...netns,
    exec: (argv, options) =>
      netns.exec(['unshare', '--uts', '/bin/sh', '-c', 'hostname "$0" && exec "$@"', name, ...argv], options),
  }
  let sshd: Sshd | undefined
  let closing: Promise<void> | undefined
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      await sshd?.close()
      await netns.close()
    })())
  try {
    sshd = await startSshd({ netns: uts, ...extraConfigOf(options) })
    return { name, ns: netns, sshd, close }
  } catch (err) {
    await close()
    throw err
  }
}

/**
 * Writes an ssh config at `configPath` naming each node (its address, port, key, known_hosts) and returns the
 * environment with which OpenMPI's mpiexec reaches the nodes by name over ssh, on the namespaces' network.
 */
export async function mpiOverSsh(nodes: readonly Node[], configPath: string): Promise<NodeJS.ProcessEnv> {
  await writeFile(
    configPath,
    nodes
      .map(
        (n) =>
          `Host ${n.name}\n  HostName ${n.sshd.host}\n  Port ${String(n.sshd.port)}\n  User root\n` +
          `  IdentityFile ${n.sshd.clientKey}\n  IdentitiesOnly yes\n  UserKnownHostsFile ${n.sshd.knownHostsFile}\n` +
          `  StrictHostKeyChecking yes\n  BatchMode yes\n`,
      )
      .join(''),
  )
  return {
    OMPI_MCA_plm_rsh_agent: `ssh -F ${configPath}`,
    OMPI_MCA_plm_rsh_no_tree_spawn: '1',
    OMPI_MCA_oob_tcp_if_include: '10.231.0.0/16',
    OMPI_MCA_btl_tcp_if_include: '10.231.0.0/16',
    OMPI_MCA_btl: 'self,tcp',
  }
}

/** Two nodes and a controller's namespace, all routed to each other, plus OpenMPI's ssh settings for the nodes. */
export interface NodeCluster {
  readonly remote: SshRemote
  readonly nodes: readonly [Node, Node]
  /** Environment for mpiexec (or for our CLI, which runs it): see {@link mpiOverSsh}. */
  readonly env: NodeJS.ProcessEnv
  /** Removes the nodes, then the remote. Safe twice. */
  close(): Promise<void>
}

/**
 * Starts a {@link NodeCluster}: the controller (`controllerArgs` appended) reachable only through its sshd, and
 * two nodes with sshds of their own that mpiexec reaches by name.
 *
 * @example
 * const cluster = await startNodeCluster()
 * t.after(() => cluster.close())
 * // ipp-tunnel engines FILE --mpi --host `${cluster.nodes[0].name}:2,${cluster.nodes[1].name}:2`, env: cluster.env
 */
export async function startNodeCluster(
  controllerArgs: readonly string[] = [],
  options: NodeSshdOptions = {},
): Promise<NodeCluster> {
  const owned: { remote?: SshRemote; nodes: Node[] } = { nodes: [] }
  let closing: Promise<void> | undefined
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      for (const node of owned.nodes) await node.close()
      await owned.remote?.close()
    })())
  try {
    const remote = (owned.remote = await startSshRemote(controllerArgs, options))
    for (let i = 0; i < 2; i++) owned.nodes.push(await startNode(options))
    const [a, b] = owned.nodes
    if (a === undefined || b === undefined) throw new Error('two nodes expected')
    for (const ns of [remote.ns, a.ns, b.ns]) await joinClusterNetwork(ns)
    const env = await mpiOverSsh([a, b], join(remote.sshd.dir, 'mpi_ssh_config'))
    return { remote, nodes: [a, b], env, close }
  } catch (err) {
    await close()
    throw err
  }
}

/** Peer addresses of the ssh connections `sshd` (in `ns`) holds now, read with `ss` in the namespace. */
export async function sshPeers(ns: Netns, sshd: Sshd): Promise<string[]> {
  const { stdout } = await run('ip', [
    'netns',
    'exec',
    ns.name,
    'ss',
    '-Htn',
    'state',
    'established',
    `( sport = :${String(sshd.port)} )`,
  ])
  return stdout
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => (l.trim().split(/\s+/).at(-1) ?? '').replace(/:\d+$/, ''))
}
