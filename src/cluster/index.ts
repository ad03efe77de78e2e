/**
 * Whole ipyparallel clusters on an ssh server, started, followed and stopped over one link: the controller and
 * its engines run there under our supervisor; the client file is tunnelled and copied where
 * `Client(profile="NAME-tunnel")` looks.
 *
 * @example
 * import { RemoteCluster } from '../cluster/index.js'
 * const cluster = await RemoteCluster.start({ destination: 'me@cluster', n: 4 })
 * await cluster.stop()
 */
export {
  RemoteCluster,
  type ClusterStartOptions,
  type ClusterEngines,
  type ClusterState,
  type ControllerKind,
  type RemoteClusterEvents,
} from './cluster.js'
export type { ClusterOptions } from './options.js'
export type { EnginesKind } from './engines.js'
export type { JobNode, JobProgress } from './slurm.js'
export { checkCompatible, localVersions, type PythonVersions } from './versions.js'
