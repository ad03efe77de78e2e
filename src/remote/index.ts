/**
 * Processes on the ssh server that outlive the link: started detached under a small supervisor (Python, sent with
 * each command), with their state, output and a lease in a private remote directory. Kernels and clusters stand on
 * this.
 *
 * @example
 * import { RemoteProcesses } from '../remote/index.js'
 * const procs = new RemoteProcesses(link, { setup: "module load python" })
 * await procs.start({ name: "job", argv: ["sleep", "60"], persistSeconds: 1800 })
 */
export {
  RemoteAttachment,
  RemoteProcesses,
  type RemoteNode,
  type RemoteProcessesOptions,
  type RemoteProcessSpec,
  type RemoteProcessState,
} from './processes.js'
export {
  DEFAULT_REMOTE_DIR,
  remoteCommand,
  shellWord,
  supervisorCommand,
  type RemoteExecutor,
  type SupervisorOptions,
} from './command-line.js'
export { KeptSupervisor, type SupervisorAnswer } from './kept.js'
export { linkUp, RemoteFollower, type FollowEnd, type RemoteFollowerEvents } from './follow.js'
export { PYTHON_VERSIONS } from './python-versions.js'
