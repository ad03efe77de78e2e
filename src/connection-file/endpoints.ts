import { IppTunnelError } from '../errors/index.js'
import type {
  ConnectionInfo,
  ConnectionKind,
  Endpoint,
  IppClientInfo,
  IppEngineInfo,
  KernelInfo,
} from './types.js'

const LOOPBACK = '127.0.0.1'
const ANY = new Set(['*', '0.0.0.0'])

/**
 * Where an ipyparallel controller is reached from the ssh server, by ipyparallel's
 * `disambiguate_ip_address`: an explicit interface address is kept; `*`/`0.0.0.0` mean `location`,
 * or loopback when there is no location. (ipyparallel also maps a location naming the machine it
 * runs on to loopback; seen from the ssh server that name resolves to the same place.)
 */
function ippHost(info: IppClientInfo | IppEngineInfo): string {
  const address = unbracket(info.interface.slice(info.interface.indexOf('://') + 3))
  if (!ANY.has(address)) return address
  return info.location === '' ? LOOPBACK : unbracket(info.location)
}

function kernelHost(info: KernelInfo): string {
  const ip = unbracket(info.ip)
  return ANY.has(ip) ? LOOPBACK : ip
}

function unbracket(host: string): string {
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host
}

type Ports = [channel: string, port: number][]

function ports(info: ConnectionInfo): Ports {
  switch (info.kind) {
    case 'ipp-client':
      return [
        ['registration', info.registration],
        ['control', info.control],
        ['mux', info.mux],
        ['task', info.task],
        ['iopub', info.iopub],
        ['notification', info.notification],
        ['broadcast', info.broadcast],
      ]
    case 'ipp-engine':
      return [
        ['registration', info.registration],
        ['control', info.control],
        ['mux', info.mux],
        ['task', info.task],
        ['iopub', info.iopub],
        ['hb_ping', info.hb_ping],
        ['hb_pong', info.hb_pong],
        ...info.broadcast.map((port, i): [string, number] => [`broadcast-${i}`, port]),
      ]
    case 'kernel':
      return [
        ['shell', info.shell_port],
        ['iopub', info.iopub_port],
        ['stdin', info.stdin_port],
        ['control', info.control_port],
        ['hb', info.hb_port],
      ]
  }
}

/**
 * The unix socket one channel of an `ipc` file listens on: ipykernel binds `ipc://{ip}-{port}`, and ipyparallel 7.1's
 * ipcontroller binds `interface + "-" + port` too — though its Client and ipengine connect to `interface + ":" +
 * port` (see {@link ippClientSocketPath}).
 *
 * @example
 * ipcSocketPath('kernel', '/run/k/kernel', 3) // '/run/k/kernel-3'
 */
export function ipcSocketPath(_kind: ConnectionKind, prefix: string, port: number): string {
  return `${prefix}-${port}`
}

/**
 * Where ipyparallel's Client and ipengine connect for a channel of an `ipc` file: `interface + ":" + port`. A
 * listener serving them must answer at this name too (the tunnel hard-links it to {@link ipcSocketPath}).
 *
 * @example
 * ippClientSocketPath('/run/x/client', 3) // '/run/x/client:3'
 */
export function ippClientSocketPath(prefix: string, port: number): string {
  return `${prefix}:${port}`
}

/** The path prefix of an `ipc` file's unix sockets, or undefined for a TCP file. */
function ipcPrefix(info: ConnectionInfo): string | undefined {
  if (info.kind === 'kernel') return info.transport === 'ipc' ? info.ip : undefined
  return info.interface.startsWith('ipc://') ? info.interface.slice('ipc://'.length) : undefined
}

/**
 * Every port the peer listens on, named by channel: for TCP files with its host as seen from the ssh server, for
 * `ipc` files (`interface: "ipc://…"`, `transport: "ipc"`) as a unix socket path on the ssh server's machine.
 */
export function endpoints(info: ConnectionInfo): Endpoint[] {
  const prefix = ipcPrefix(info)
  if (prefix !== undefined) {
    return ports(info).map(([channel, port]) => ({
      kind: 'unix',
      channel,
      path: ipcSocketPath(info.kind, prefix, port),
      port,
    }))
  }
  const host = info.kind === 'kernel' ? kernelHost(info) : ippHost(info)
  return ports(info).map(([channel, port]) => ({ channel, host, port }))
}

/** The ssh destination the file names (`ssh` field, or an `ssh` extra in a kernel file), if any. */
export function destinationOf(info: ConnectionInfo): string | undefined {
  const ssh = info.kind === 'kernel' ? info.extra['ssh'] : info.ssh
  return typeof ssh === 'string' && ssh !== '' ? ssh : undefined
}

/**
 * True when every endpoint is on this host's loopback (127.0.0.0/8, ::1, localhost) or a unix socket: a loopback
 * copy as a tunnel writes it, or a peer on this host, reached with no ssh.
 *
 * @example
 * isLoopbackOnly(tunnel.loopback) // true
 */
export function isLoopbackOnly(info: ConnectionInfo): boolean {
  return endpoints(info).every(
    (e) => e.kind === 'unix' || /^127\./u.test(e.host) || e.host === '::1' || e.host === 'localhost',
  )
}

/**
 * A copy of `info` pointing at loopback: each channel gets its port from `localPorts`, the address becomes
 * 127.0.0.1 (`tcp`), `ssh` is emptied; key, scheme, Curve keys and extras are kept. With `options.ipc` (a path
 * prefix) the copy names unix sockets instead: `interface: "ipc://<prefix>"` (each channel at `<prefix>-<port>` and, for its Client, `<prefix>:<port>`),
 * or for a kernel `transport: "ipc"` and `ip: <prefix>` (`<prefix>-<port>`); see {@link ipcSocketPath}.
 * `options.location` is the ipyparallel files' `location` (default 127.0.0.1): give this machine's host name, as
 * ipcontroller writes its own, so that ipyparallel's Client sees a controller on this host.
 *
 * @throws IppTunnelError `E_CONNFILE_FIELD` when a channel has no valid local port.
 */
export function toLoopback(
  info: ConnectionInfo,
  localPorts: ReadonlyMap<string, number>,
  options: { readonly ipc?: string | undefined; readonly location?: string | undefined } = {},
): ConnectionInfo {
  const ipc = options.ipc
  const location = options.location ?? LOOPBACK
  const iface = ipc === undefined ? `tcp://${LOOPBACK}` : `ipc://${ipc}`
  const local = (channel: string): number => {
    const port = localPorts.get(channel)
    if (port === undefined || !Number.isInteger(port) || port < 1 || port > 65535) {
      throw new IppTunnelError(
        'E_CONNFILE_FIELD',
        `loopback ${info.kind} file: channel "${channel}" needs a local port 1–65535, got ${port === undefined ? 'none' : String(port)}`,
      )
    }
    return port
  }
  switch (info.kind) {
    case 'ipp-client':
      return {
        ...info,
        ssh: '',
        interface: iface,
        location,
        registration: local('registration'),
        control: local('control'),
        mux: local('mux'),
        task: local('task'),
        iopub: local('iopub'),
        notification: local('notification'),
        broadcast: local('broadcast'),
      }
    case 'ipp-engine':
      return {
        ...info,
        ssh: '',
        interface: iface,
        location,
        registration: local('registration'),
        control: local('control'),
        mux: local('mux'),
        task: local('task'),
        iopub: local('iopub'),
        hb_ping: local('hb_ping'),
        hb_pong: local('hb_pong'),
        broadcast: info.broadcast.map((_, i) => local(`broadcast-${i}`)),
      }
    case 'kernel':
      return {
        ...info,
        ip: ipc ?? LOOPBACK,
        transport: ipc === undefined ? 'tcp' : 'ipc',
        shell_port: local('shell'),
        iopub_port: local('iopub'),
        stdin_port: local('stdin'),
        control_port: local('control'),
        hb_port: local('hb'),
        extra: Object.hasOwn(info.extra, 'ssh') ? { ...info.extra, ssh: '' } : info.extra,
      }
  }
}
