import { parseConnectionFile, type KernelInfo } from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'

/** How the remote kernel listens: unix sockets in its private directory, or TCP ports it picks. */
export type RemoteTransport = 'unix' | 'tcp'

/** The remote connection file's name in the kernel's private directory, and its path in argv. */
export const REMOTE_FILE_NAME = 'kernel.json'
export const REMOTE_FILE = `{dir}/${REMOTE_FILE_NAME}`
/** The fields the kernel writes back once it has bound its TCP ports. */
export const PORT_FIELDS = ['shell_port', 'iopub_port', 'stdin_port', 'control_port', 'hb_port'] as const

/**
 * The remote connection file: the same key and scheme; unix sockets in the kernel's private directory `dir`, or TCP
 * on 127.0.0.1 with ports 0 (ipykernel binds free ports and writes them back into the file).
 */
export function remoteInfoOf(info: KernelInfo, dir: string, transport: RemoteTransport): KernelInfo {
  const unix = transport === 'unix'
  return {
    ...info,
    transport: unix ? 'ipc' : 'tcp',
    ip: unix ? `${dir}/kernel` : '127.0.0.1',
    shell_port: unix ? 1 : 0,
    iopub_port: unix ? 2 : 0,
    stdin_port: unix ? 3 : 0,
    control_port: unix ? 4 : 0,
    hb_port: unix ? 5 : 0,
  }
}

/**
 * The file the remote kernel wrote back, as data from the server: parsed and validated like any connection file
 * (ports 1–65535), TCP on exactly `ip`, with our key. Resolves with what the forwards go to: the local file's key,
 * scheme and extras, the remote address and ports.
 * @throws IppTunnelError `E_CONNFILE_*` naming `where` and the field.
 */
export function writtenBack(text: string, info: KernelInfo, ip: string, where: string): KernelInfo {
  const back = parseConnectionFile(text, where)
  if (back.kind !== 'kernel') {
    throw new IppTunnelError('E_CONNFILE_KIND', `${where}: not a kernel connection file`)
  }
  if (back.transport !== 'tcp' || back.ip !== ip) {
    throw new IppTunnelError(
      'E_CONNFILE_FIELD',
      `${where}: field "ip" is ${JSON.stringify(back.ip)} over ${back.transport}: the kernel was told tcp ${ip}`,
    )
  }
  if (back.key !== info.key || back.signature_scheme !== info.signature_scheme) {
    throw new IppTunnelError(
      'E_CONNFILE_FIELD',
      `${where}: field "${back.key !== info.key ? 'key' : 'signature_scheme'}" differs from the one the kernel was given`,
    )
  }
  return {
    ...info,
    transport: 'tcp',
    ip,
    shell_port: back.shell_port,
    iopub_port: back.iopub_port,
    stdin_port: back.stdin_port,
    control_port: back.control_port,
    hb_port: back.hb_port,
  }
}
