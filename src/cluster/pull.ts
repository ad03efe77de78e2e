import { join, posix } from 'node:path'

import { IppTunnelError, isIppTunnelError } from '../errors/index.js'
import { RemoteFollower, type RemoteProcesses, type RemoteProcessState } from '../remote/index.js'
import { ipythonDir, PulledTunnel } from '../service/index.js'
import type { Link } from '../ssh/index.js'
import type { LinkPool } from '../tunnel/index.js'
import type { ClusterOptions } from './options.js'
import { processNames } from './names.js'
import { lastLine } from './remote-files.js'

const CONTROLLER_FILE_WAIT_MS = 120_000
const SCHEDULERS_WAIT_MS = 30_000

/**
 * Follows the controller and waits for its client file: tunnels it and writes the copy where
 * `Client(profile="NAME-tunnel")` looks. A controller that dies first ends the wait with what it said last.
 */
export async function pullClientFile(
  options: ClusterOptions,
  pool: LinkPool,
  link: Link,
  procs: RemoteProcesses,
  controller: RemoteProcessState,
  parts: { profile: string; clusterId: string; securityDir: string },
  wait: {
    /** How long to wait for the file; default 120 s (a batch job's controller: until the job ends). */
    readonly fileMs?: number | undefined
    /** What the controller process says meanwhile. */
    readonly onOutput?: ((e: { stream: 'stdout' | 'stderr'; data: Buffer }) => void) | undefined
  } = {},
): Promise<{ follower: RemoteFollower; pulled: PulledTunnel }> {
  const follower = new RemoteFollower(procs, link, processNames(parts.profile).controller, controller)
  let said = ''
  const onOutput = (e: { data: Buffer }): void => {
    said = (said + e.data.toString('utf8')).slice(-2048)
  }
  follower.on('output', onOutput)
  if (wait.onOutput !== undefined) follower.on('output', wait.onOutput)
  const abort = new AbortController()
  const onAbort = (): void => abort.abort(options.signal?.reason)
  options.signal?.addEventListener('abort', onAbort, { once: true })
  // a controller that dies before its file appears ends the wait at once
  void follower.ended.then((end) =>
    abort.abort(
      end.error ??
        new IppTunnelError(
          'E_SPAWN',
          `the controller exited before writing its connection file (status ${String(end.code ?? end.signal)}): ${lastLine(said) || 'it said nothing'}`,
        ),
    ),
  )
  const localDir = join(options.ipythonDir ?? ipythonDir(), `profile_${parts.profile}-tunnel`, 'security')
  let pulled: PulledTunnel
  try {
    const spec = {
      destination: options.destination,
      path: posix.join(parts.securityDir, `ipcontroller-${parts.clusterId}-client.json`),
    }
    let refusedSince: number | undefined
    for (;;) {
      try {
        pulled = await PulledTunnel.open(spec, {
          ...options,
          pool,
          out: join(localDir, 'ipcontroller-client.json'),
          waitForFileMs: wait.fileMs ?? CONTROLLER_FILE_WAIT_MS,
          // looked for often while the controller starts (one SFTP look costs a few round trips), then followed
          // (a restarted controller) once a second
          waitPollMs: 50,
          signal: abort.signal,
        })
        break
      } catch (err) {
        // ipcontroller writes its file before its schedulers (other processes) listen: a port not yet
        // listening is waited for while the controller runs
        const early = isIppTunnelError(err) && err.code === 'E_FORWARD'
        refusedSince ??= performance.now()
        if (!early || abort.signal.aborted || performance.now() - refusedSince > SCHEDULERS_WAIT_MS) throw err
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    }
  } catch (err) {
    // what ended the wait, read before closing the follower (which ends it too)
    const why = abort.signal.aborted && isIppTunnelError(abort.signal.reason) ? abort.signal.reason : err
    await follower.close()
    throw why
  } finally {
    options.signal?.removeEventListener('abort', onAbort)
    follower.off('output', onOutput)
    if (wait.onOutput !== undefined) follower.off('output', wait.onOutput)
  }
  return { follower, pulled }
}
