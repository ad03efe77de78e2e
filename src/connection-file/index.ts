/**
 * Connection files of IPython Parallel (`ipcontroller[-id]-client.json`, `ipcontroller[-id]-engine.json`)
 * and Jupyter kernels (`kernel-*.json`): parse and validate into a union on `kind`, find the endpoints
 * as seen from the ssh server, rewrite to loopback, and write atomically with mode 0600.
 * Everything here is pure except {@link readConnectionFile} and {@link writeConnectionFileAtomic}.
 *
 * @example
 * const { info, warnings } = await readConnectionFile(file)
 * for (const { channel, host, port } of endpoints(info)) console.log(channel, host, port)
 */

/**
 * Connection file types: `ConnectionInfo` is a union on `kind` (`'ipp-client' | 'ipp-engine' | 'kernel'`).
 * Unknown fields are kept in `extra`.
 *
 * @example
 * function describe(info: ConnectionInfo): string {
 *   return info.kind === 'kernel' ? `kernel ${info.kernel_name}` : `controller at ${info.interface}`
 * }
 */
export type {
  ConnectionInfo,
  ConnectionKind,
  Endpoint,
  IppClientInfo,
  IppCommonInfo,
  IppEngineInfo,
  KernelInfo,
  TcpEndpoint,
  UnixEndpoint,
} from './types.js'

/**
 * `kindFromFileName(name)`: the kind a file name announces (`ipcontroller[-id]-client.json` →
 * `'ipp-client'`, `…-engine.json` → `'ipp-engine'`, `kernel-*.json` → `'kernel'`), else `undefined`.
 *
 * @example
 * kindFromFileName('/home/me/.ipython/profile_default/security/ipcontroller-engine.json') // 'ipp-engine'
 *
 * `parseConnectionFile(text, fileName)`: pure parse and validation. Throws `IppTunnelError` with
 * `E_CONNFILE_JSON`, `E_CONNFILE_KIND` or `E_CONNFILE_FIELD`; messages name the file and the field and
 * never contain keys.
 *
 * @example
 * const info = parseConnectionFile(text, 'ipcontroller-client.json')
 * if (info.kind === 'ipp-client') console.log(info.task_scheme)
 *
 * `isZ85Key(text)`: true for a Z85-encoded 32-byte Curve key.
 *
 * @example
 * isZ85Key(info.curve_serverkey ?? '')
 */
export { isZ85Key, kindFromFileName, MAX_LIST_PORTS, parseConnectionFile } from './parse.js'

/**
 * `endpoints(info)`: every port the peer listens on, named by channel (client: registration, control,
 * mux, task, iopub, notification, broadcast; engine: registration, control, mux, task, iopub, hb_ping,
 * hb_pong, broadcast-0…; kernel: shell, iopub, stdin, control, hb), with the host as seen from the ssh
 * server by ipyparallel's rules.
 *
 * @example
 * endpoints(info) // [{ channel: 'registration', host: '127.0.0.1', port: 51439 }, …]
 * endpoints(ipcKernel) // [{ kind: 'unix', channel: 'shell', path: '/run/k/kernel-1', port: 1 }, …]
 *
 * `destinationOf(info)`: the `ssh` destination the file names, or `undefined`.
 *
 * @example
 * const destination = options.ssh ?? destinationOf(info)
 *
 * `isLoopbackOnly(info)`: every endpoint on this host's loopback or a unix socket (no ssh needed).
 *
 * @example
 * isLoopbackOnly(tunnel.loopback) // true
 *
 * `toLoopback(info, localPorts, { ipc? })`: the file for local users, with 127.0.0.1 (or, with `ipc`, unix sockets
 * under that path prefix), the local ports by channel and `ssh` emptied. `ipcSocketPath(kind, prefix, port)`: the
 * socket a channel of an ipc file is at.
 *
 * @example
 * const local = toLoopback(info, new Map(endpoints(info).map((e) => [e.channel, listenerPort(e)])))
 * const unix = toLoopback(info, new Map([['shell', 1], …]), { ipc: '/run/user/1000/ipp-tunnel/u1-ab/kernel' })
 */
export {
  destinationOf,
  endpoints,
  ipcSocketPath,
  ippClientSocketPath,
  isLoopbackOnly,
  toLoopback,
} from './endpoints.js'

/**
 * `serializeConnectionFile(info)`: JSON as the peers write it (indent 2), extras preserved.
 *
 * @example
 * parseConnectionFile(serializeConnectionFile(info), name) // deep-equals info
 *
 * `redact(info)`: a copy safe for logs and status, secrets replaced by `"<redacted>"`.
 *
 * @example
 * console.log(JSON.stringify(redact(info)))
 */
export { redact, serializeConnectionFile } from './serialize.js'

/**
 * `readConnectionFile(path)`: read and parse; `warnings` lists a too-open file mode.
 * Throws `E_CONNFILE_READ` naming the path when the file cannot be read.
 *
 * @example
 * const { info, warnings } = await readConnectionFile(path)
 * warnings.forEach((w) => emit({ type: 'warning', message: w }))
 *
 * `writeConnectionFileAtomic(path, info)`: temp file (0600) + fsync + rename + directory fsync;
 * creates the directory 0700. Throws `E_CONNFILE_WRITE` and leaves an existing file untouched on failure.
 *
 * @example
 * await writeConnectionFileAtomic(join(outDir, 'ipcontroller-client.json'), toLoopback(info, ports))
 */
export { readConnectionFile, writeConnectionFileAtomic, writeFileAtomic } from './io.js'

/**
 * `connectionInfoFromEnv(env)`: ipyparallel 8+'s `IPP_CONNECTION_INFO` (`CONNECTION_INFO_ENV`), validated as a file,
 * errors naming the variable; `undefined` when unset.
 *
 * @example
 * const info = connectionInfoFromEnv(process.env)
 */
export { CONNECTION_INFO_ENV, connectionInfoFromEnv } from './io.js'

/**
 * `siblingClientFile(enginePath)` / `siblingEngineFile(clientPath)`: the other file of the same cluster in the same
 * directory (`ipcontroller[-id]-engine.json` ↔ `ipcontroller[-id]-client.json`); pure name mapping.
 *
 * @example
 * siblingClientFile('/s/ipcontroller-engine.json') // '/s/ipcontroller-client.json'
 */
export { siblingClientFile, siblingEngineFile } from './names.js'

/**
 * `tunnelledKernelFile(path)`: jupyter_client's name for a tunnelled kernel file beside it (`kernel-<id>-ssh.json`);
 * `isTunnelledKernelName(path)`: the name is such a copy (never a source).
 *
 * @example
 * tunnelledKernelFile('/run/kernel-abc.json') // '/run/kernel-abc-ssh.json'
 */
export { isTunnelledKernelName, tunnelledKernelFile } from './names.js'
