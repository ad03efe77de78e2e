/**
 * Engine launchers: N ipyparallel engines (or one mpiexec world of N ranks) on a loopback engine file, supervised.
 *
 * @example
 * const engines = launchEngines({ file: loopbackEngineFile, n: 2, mpi: true, root: true })
 * engines.on('engine-exited', (e) => console.error(e))
 */
export {
  DEFAULT_ENGINE_COMMAND,
  DEFAULT_MPIEXEC,
  engineArgvs,
  findProgram,
  mpiEnvironment,
  splitCommand,
  type EngineCommandOptions,
} from './command.js'
export {
  EngineGroup,
  launchEngines,
  type EngineExit,
  type EngineGroupEvents,
  type LaunchEnginesOptions,
} from './group.js'
export { isRoutineLog, redactLine } from './log.js'
export {
  hostArgs,
  NODE_FILE,
  nodeEngineWrapper,
  nodeNames,
  NodeTunnels,
  parseTagged,
  slurmNodeLauncher,
  startNodeTunnels,
  type HostList,
  type NodeReady,
  type NodeTunnelsEvents,
  type NodeTunnelsOptions,
} from './nodes.js'
export {
  batchScript,
  cancelJob,
  ENGINE_STEP_NAME,
  jobEnding,
  jobState,
  jobSteps,
  NODE_STEP_NAME,
  readNewLines,
  sbatchArgs,
  settleEngineSteps,
  shellLine,
  stopJob,
  submitBatch,
  type SlurmStep,
} from './slurm.js'
export { EngineRegistry, type EngineRegistryEvents, type HubView } from './registration.js'
export {
  SupervisedEngines,
  startEngines,
  type EnginesEnding,
  type SupervisedEnginesEvents,
  type StartEnginesOptions,
} from './engines.js'
export { type EngineFileCopy, type EngineFileOptions } from './engine-file.js'
export { nodeSshArgv, type NodeSshSettings } from './across.js'
export { EngineJob, submitEngines, type EngineJobEvents, type SubmitEnginesOptions } from './job.js'
