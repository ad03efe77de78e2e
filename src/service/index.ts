/**
 * The service: watches security directories for connection files and keeps, for each, tunnels and a loopback
 * copy (sharing one ssh connection per destination); answers `status` on a unix socket; and the systemd user
 * unit that keeps it running.
 *
 * @example
 * const service = await TunnelService.start({ dirs: [profileSecurityDir('default')], runtimeDir: runtimeDir() })
 * service.on('ready', (e) => console.log(`${e.file} -> ${e.out}`))
 * const report = await queryStatus(statusSocketPath())
 * await service.close()
 */
export { TunnelService } from './service.js'
export type {
  FileStatus,
  ForwardStatus,
  ReadyFields,
  ServiceEvents,
  RemoteDir,
  RemoteFields,
  ServiceOptions,
} from './types.js'
export {
  StatusServer,
  loginToService,
  queryStatus,
  type LoginClientHandlers,
  type LoginHandler,
  type SocketRequest,
  type StatusReport,
} from './status-socket.js'
export {
  LoginRelay,
  type LoginClientMessage,
  type LoginRelayEvents,
  type LoginServerMessage,
  type PendingLogin,
} from './login-relay.js'
export { ipythonDir, profileSecurityDir, runtimeDir, statusSocketPath, STATUS_SOCKET } from './paths.js'
export { UNIT_NAME, installUnit, renderUnit, userUnitPath, type UnitOptions } from './unit.js'
export { CopyLedger } from './ledger.js'
export { PulledTunnel, type PulledTunnelEvents, type PulledTunnelOptions } from './pulled.js'
export { ServiceKernel, type ServiceKernelEvents } from './kernel-client.js'
export {
  kernelFieldsOf,
  type KernelRequest,
  type ServiceKernelState,
  type KernelStatus,
} from './kernel-protocol.js'
