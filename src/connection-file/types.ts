/** Which peer wrote a connection file, and so which fields it has. */
export type ConnectionKind = 'ipp-client' | 'ipp-engine' | 'kernel'

/** Fields the ipyparallel controller writes into both its client and its engine file. */
export interface IppCommonInfo {
  /** `[user@]host[:port]` of the ssh server to tunnel through; `''` when none. */
  readonly ssh: string
  /** `tcp://IP` or `tcp://*` — where the controller listens; or `ipc:///path`, its unix sockets being `/path:<port>`. */
  readonly interface: string
  /** The controller's external IP or host name (its hostname by default); `''` when absent. */
  readonly location: string
  readonly registration: number
  readonly control: number
  readonly mux: number
  readonly task: number
  readonly iopub: number
  /** The HMAC key for signing messages; `''` means no signing (as with Curve). */
  readonly key: string
  /** `hmac-<digest>`, e.g. `hmac-sha256`. */
  readonly signature_scheme: string
  readonly pack: string
  readonly unpack: string
  /** The controller's Curve public key (Z85, 40 characters), or `null` without Curve. */
  readonly curve_serverkey: string | null
  /** Fields this version does not know, kept as read and written back untouched. */
  readonly extra: Readonly<Record<string, unknown>>
}

/** `ipcontroller[-<cluster_id>]-client.json`. */
export interface IppClientInfo extends IppCommonInfo {
  readonly kind: 'ipp-client'
  readonly task_scheme: string
  readonly notification: number
  readonly broadcast: number
}

/** `ipcontroller[-<cluster_id>]-engine.json`: no task_scheme or notification; heartbeat ports; one broadcast port per leaf scheduler. */
export interface IppEngineInfo extends IppCommonInfo {
  readonly kind: 'ipp-engine'
  readonly hb_ping: number
  readonly hb_pong: number
  readonly broadcast: readonly number[]
}

/** A Jupyter kernel's `kernel-*.json`, as jupyter_client writes it. */
export interface KernelInfo {
  readonly kind: 'kernel'
  readonly shell_port: number
  readonly iopub_port: number
  readonly stdin_port: number
  readonly control_port: number
  readonly hb_port: number
  /** An address for `tcp`; for `ipc` the path prefix of the unix sockets, `<ip>-<port>` (jupyter_client). */
  readonly ip: string
  readonly transport: 'tcp' | 'ipc'
  readonly key: string
  readonly signature_scheme: string
  /** `''` when the file has none. */
  readonly kernel_name: string
  readonly curve_publickey?: string
  readonly curve_secretkey?: string
  readonly extra: Readonly<Record<string, unknown>>
}

/** A parsed connection file of any kind; switch on `kind`. */
export type ConnectionInfo = IppClientInfo | IppEngineInfo | KernelInfo

/** A TCP port the peer listens on, named by channel, with the host as seen from the ssh server. */
export interface TcpEndpoint {
  /** Absent or `'tcp'`. */
  readonly kind?: 'tcp'
  channel: string
  host: string
  port: number
}

/**
 * A unix socket the peer listens on (an `ipc://` file), named by channel: `path` is on the ssh server's machine;
 * `port` is the number the file gives the channel, the suffix of the path.
 */
export interface UnixEndpoint {
  readonly kind: 'unix'
  channel: string
  path: string
  port: number
}

/** Where one channel of the peer listens: a TCP port or a unix socket; switch on `kind === 'unix'`. */
export type Endpoint = TcpEndpoint | UnixEndpoint

/** Known fields per kind, in the order the peers write them. */
export const FIELD_ORDER: Readonly<Record<ConnectionKind, readonly string[]>> = {
  'ipp-client': [
    'ssh',
    'interface',
    'registration',
    'control',
    'mux',
    'task',
    'task_scheme',
    'iopub',
    'notification',
    'broadcast',
    'key',
    'curve_serverkey',
    'location',
    'pack',
    'unpack',
    'signature_scheme',
  ],
  'ipp-engine': [
    'ssh',
    'interface',
    'registration',
    'control',
    'mux',
    'task',
    'iopub',
    'hb_ping',
    'hb_pong',
    'broadcast',
    'key',
    'curve_serverkey',
    'location',
    'pack',
    'unpack',
    'signature_scheme',
  ],
  kernel: [
    'shell_port',
    'iopub_port',
    'stdin_port',
    'control_port',
    'hb_port',
    'ip',
    'key',
    'transport',
    'signature_scheme',
    'kernel_name',
    'curve_publickey',
    'curve_secretkey',
  ],
}
