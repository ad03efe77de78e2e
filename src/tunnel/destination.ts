import {
  destinationOf,
  readConnectionFile,
  siblingClientFile,
  type ConnectionInfo,
} from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'

/** The ssh server a file is tunnelled through, and where that name came from. */
export interface DestinationChoice {
  readonly destination: string
  /** The sibling client file the destination was taken from, when the file itself named none. */
  readonly sshFrom?: string
}

/**
 * The ssh server for a connection file: `ssh` (an explicit `--ssh`) if given, else the file's own `ssh` field, else —
 * for an engine file, whose `ssh` ipcontroller leaves empty — the `ssh` of the client file of the same cluster beside
 * it (`ipcontroller[-id]-client.json`), reported as `sshFrom`.
 *
 * @throws IppTunnelError `E_DESTINATION` when none of them names a server; `hint` says what to do.
 *
 * @example
 * const { destination, sshFrom } = await chooseDestination(info, file, args.ssh, 'pass --ssh user@host')
 * const tunnel = await openTunnel(info, { ...options, ssh: destination })
 */
export async function chooseDestination(
  info: ConnectionInfo,
  file: string | undefined,
  ssh: string | undefined,
  hint: string,
): Promise<DestinationChoice> {
  const own = ssh ?? destinationOf(info)
  if (own !== undefined) return { destination: own }
  const sibling = info.kind === 'ipp-engine' && file !== undefined ? siblingClientFile(file) : undefined
  if (sibling !== undefined) {
    const client = await readConnectionFile(sibling).then(
      ({ info: i }) => i,
      () => undefined,
    )
    const fromClient = client?.kind === 'ipp-client' ? destinationOf(client) : undefined
    if (fromClient !== undefined) return { destination: fromClient, sshFrom: sibling }
  }
  const where = file ?? 'connection info'
  const also = sibling === undefined ? '' : ` and ${sibling} names none either (or is missing)`
  throw new IppTunnelError(
    'E_DESTINATION',
    `${where}: field "ssh" is empty${also}; ${hint} to say which server to forward through`,
  )
}
