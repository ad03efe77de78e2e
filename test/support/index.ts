/**
 * Real peers for tests: network namespaces, echo servers, OpenSSH sshd.
 *
 * @example
 * const ns = await createNetns()
 * const sshd = await startSshd({ netns: ns })
 * const echo = await startEchoServer(ns)
 */
export {
  comeBackAs,
  createNetns,
  cutOff,
  joinClusterNetwork,
  portPrinted,
  silence,
  silenceTowards,
  startEchoServer,
  type Netns,
  type EchoServer,
} from './netns.js'
export { startSshd, hopOf, sshArgsOf, sshOptionsOf, type Sshd, type SshdOptions } from './sshd.js'
export {
  canConnect,
  freePort,
  kernelListeners,
  portOf,
  writeListenersFile,
  type KernelListeners,
} from './net.js'
export { appears, exists } from './fs.js'
export { alive, pidsWhere, processesWith, type ProcessInfo } from './proc.js'
export { hasCode } from './errors.js'
export { remoteClusterArgs, spawnClusterStart, startCluster, type Cluster } from './cluster.js'
export {
  mpiOverSsh,
  sshPeers,
  startNode,
  startNodeCluster,
  startSshRemote,
  type Node,
  type NodeCluster,
  type NodeSshdOptions,
  type SshRemote,
} from './nodes.js'
