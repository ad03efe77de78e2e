/**
 * Jupyter kernels started on the ssh server: the launcher a kernelspec runs ({@link RemoteKernel}) and the
 * kernelspecs of ours (install, list, remove).
 *
 * @example
 * import { RemoteKernel } from '../kernels/index.js'
 * const kernel = await RemoteKernel.start({ destination: 'me@cluster', connectionFile: file })
 * await kernel.exited
 */
export {
  RemoteKernel,
  remoteKernelName,
  type RemoteKernelEvents,
  type RemoteKernelOptions,
} from './remote-kernel.js'
export { atLeast, CURVE_IPYKERNEL, CURVE_JUPYTER_CLIENT, curveRefusal } from './curve.js'
export { LISTEN_TIMEOUT_MS, type KernelState } from './listening.js'
export type { RemoteTransport } from './remote-file.js'
export { checkJobId, KERNEL_JOB_NAME, type KernelSlurmOptions, type KernelSlurmStep } from './slurm.js'
export {
  installKernelspec,
  jupyterDataDir,
  kernelDirs,
  kernelspecDir,
  listKernelspecs,
  removeKernelspec,
  type InstalledKernelspec,
  type KernelspecMetadata,
  type KernelspecPlace,
} from './kernelspec.js'
