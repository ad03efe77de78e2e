/**
 * A small client for ipyparallel controllers and Jupyter kernels on top of `connect()`: engine ids, queue
 * status, `execute_request` with output and `user_expressions`; kernel info and heartbeat. Remote
 * exceptions come back as structured values (`ename`, `evalue`, `traceback`).
 *
 * @example
 * import { openClient } from '../client/index.js'
 * await using client = await openClient('ipcontroller-client.json')
 * if (client.kind === 'ipp-client') console.log((await client.engines()).ids)
 */
import type { ConnectionInfo } from '../connection-file/index.js'
import { connect, type ConnectOptions } from '../sockets/index.js'
import { IppClient } from './ipp.js'
import { KernelClient } from './kernel.js'

export {
  OutputRouter,
  type ExecuteOptions,
  type ExecuteResult,
  type ExpressionValue,
  type RemoteError,
} from './execute.js'
export { HubQuery } from './hub.js'
export {
  IppClient,
  type Engines,
  type InterruptOutcome,
  type IppExecuteOptions,
  type SettledExecution,
  type Targets,
} from './ipp.js'
export { KernelClient, type KernelInfoResult } from './kernel.js'

/**
 * Connects to whatever the file describes and wraps it in the matching client; narrow on `kind`.
 *
 * @example
 * await using client = await openClient(file, { ssh: 'me@login' })
 * const results = client.kind === 'kernel' ? [await client.execute('1+1')] : await client.execute('1+1')
 */
export async function openClient(
  source: string | ConnectionInfo,
  options: ConnectOptions = {},
): Promise<IppClient | KernelClient> {
  const connection = await connect(source, options)
  return connection.kind === 'kernel' ? new KernelClient(connection) : new IppClient(connection)
}
