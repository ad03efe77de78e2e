import { setTimeout as sleep } from 'node:timers/promises'

import { isIppTunnelError, type ErrorCode, type IppTunnelError } from '../errors/index.js'
import { RemoteKernel, type RemoteKernelEvents, type RemoteKernelOptions } from '../kernels/index.js'
import { kernelFieldsOf, ServiceKernel, statusSocketPath, type KernelRequest } from '../service/index.js'
import { resolveTarget } from '../ssh/index.js'
import { routeKey } from '../tunnel/index.js'
import type { EventEmitter } from 'node:events'
import type { Output } from './output.js'

/** A kernel started by `ipp-tunnel kernel`, over a link of its own or through the running service. */
export type StartedKernel = Pick<RemoteKernel, 'name' | 'host' | 'pid' | 'exited' | 'interrupt' | 'close'> &
  Partial<Pick<RemoteKernel, 'slurm'>> &
  EventEmitter<RemoteKernelEvents>

/**
 * Failures a launcher waits out instead of exiting (Jupyter's restarter would start it again, each a new login):
 * a login that needs someone (no terminal here), a passphrase or certificate the user can add or renew, a server
 * out of reach. A wrong key or host key is not waited out.
 */
const WAITED_OUT: ReadonlySet<ErrorCode> = new Set([
  'E_AUTH_PROMPT',
  'E_PASSPHRASE',
  'E_CERT_EXPIRED',
  'E_CONNECT',
  'E_TIMEOUT',
  'E_LINK_DOWN',
])

/** What the service says about the kernel itself (not about its link): a link of our own would fare no better. */
const KERNEL_FAILURES = /^E_(CONNFILE_|SPAWN$|FORWARD$|REMOTE|CLOSED$)/u

/** Between attempts: network failures retried soon, logins no more than once a minute. */
const RETRY_MS = { first: 1000, network: 15_000, login: 60_000 }

function hint(err: IppTunnelError, destination: string): string {
  if (err.code === 'E_AUTH_PROMPT' || err.code === 'E_PASSPHRASE') {
    return `${err.message}; this launcher has no terminal: run \`ipp-tunnel watch\` and \`ipp-tunnel login ${destination}\` (the kernel then starts through the service), or open an OpenSSH ControlMaster; waiting`
  }
  return `${err.message}; waiting`
}

/**
 * Starts the kernel through the running service when there is one (its link to the destination, shared by every
 * kernel and tunnel, one login for all), else over a link of its own; a failure that someone can mend (a login,
 * the network) is said once and waited out, a service that appears meanwhile is used. `adopt`: follow again, over a
 * link of its own, the kernel this launcher started through a service that has gone away.
 */
export async function startKernel(
  options: RemoteKernelOptions & { readonly useService: boolean },
  output: Output,
  signal: AbortSignal,
  adopt?: { host: string; pid: number },
): Promise<StartedKernel> {
  const file = options.connectionFile
  let request: KernelRequest | undefined
  let delayMs = RETRY_MS.first
  let said: string | undefined
  for (;;) {
    signal.throwIfAborted()
    if (options.useService && adopt === undefined) {
      request ??= await kernelRequest(options)
      const viaService = await ServiceKernel.start(statusSocketPath(), request, {
        signal,
        onState: (s) => output.emit({ event: 'kernel-state', file, ...s }),
        ...(options.onWarning !== undefined && { onWarning: options.onWarning }),
      }).catch((err: unknown) => {
        // no service, or one that cannot reach DEST as we would (another route, its own keys): a link of our own
        if (!isIppTunnelError(err) || KERNEL_FAILURES.test(err.code)) throw err
        if (err.code !== 'E_SERVICE_DOWN') {
          output.emit({ event: 'warning', file, message: `through the service: ${err.message}` })
        }
        return undefined
      })
      if (viaService !== undefined) {
        output.emit({ event: 'via-service', file, destination: options.destination })
        return viaService as unknown as StartedKernel
      }
    }
    try {
      return adopt === undefined
        ? await RemoteKernel.start({ ...options, signal })
        : await RemoteKernel.adopt({ ...options, signal }, adopt)
    } catch (err) {
      if (signal.aborted || !isIppTunnelError(err) || !WAITED_OUT.has(err.code)) throw err
      const login = err.code !== 'E_CONNECT' && err.code !== 'E_TIMEOUT' && err.code !== 'E_LINK_DOWN'
      if (said !== err.message) {
        said = err.message
        output.emit({ event: 'waiting', file, code: err.code, message: hint(err, options.destination) })
      }
      await sleep(delayMs, undefined, { signal })
      delayMs = Math.min(login ? RETRY_MS.login : RETRY_MS.network, delayMs * 2)
    }
  }
}

async function kernelRequest(options: RemoteKernelOptions): Promise<KernelRequest> {
  const route = routeKey(await resolveTarget(options.destination, options))
  return { op: 'kernel', route, ...kernelFieldsOf(options) }
}
