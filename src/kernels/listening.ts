import { createInterface } from 'node:readline'

import type { KernelInfo } from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'
import type { RemoteAttachment, RemoteProcesses } from '../remote/index.js'
import { PORT_FIELDS, REMOTE_FILE_NAME, writtenBack } from './remote-file.js'
import { parseSlurmStep, queueEvent, SLURM_FILE, type KernelSlurmStep } from './slurm.js'

/** Where a kernel under Slurm is: waiting in the queue (`pending`), or started on a compute node (`running`). */
export type KernelState =
  | { readonly state: 'pending'; readonly job: string }
  | { readonly state: 'running'; readonly job: string; readonly step: string; readonly node: string }

/** How long a started kernel has to bind its ports and write them back (a wait in Slurm's queue not counted). */
export const LISTEN_TIMEOUT_MS = 120_000

/**
 * Waits, on the server, until the TCP kernel `name` has written back the ports it bound (or has ended: an error
 * with the end of its stderr), and validates them: what the forwards go to. Under Slurm, also where it runs (the
 * task's slurm.json), and srun's word on the queue as {@link KernelState} events; the time limit is paused while
 * the job is pending.
 * @throws IppTunnelError `E_TIMEOUT`, `E_SPAWN` (the kernel or srun ended first), `E_CONNFILE_*` for a file
 *   that is not what the kernel was told.
 */
export async function awaitListening(
  procs: RemoteProcesses,
  name: string,
  info: KernelInfo,
  options: {
    readonly slurm: boolean
    /** The login node and the kernel's private directory there, for messages. */
    readonly host: string
    readonly dir: string
    readonly onState?: ((state: KernelState) => void) | undefined
    readonly signal?: AbortSignal | undefined
    readonly timeoutMs?: number
  },
): Promise<{ info: KernelInfo; step?: KernelSlurmStep }> {
  const limit = options.timeoutMs ?? LISTEN_TIMEOUT_MS
  const timeout = new AbortController()
  const signal = options.signal ? AbortSignal.any([options.signal, timeout.signal]) : timeout.signal
  let timer: NodeJS.Timeout | undefined
  const arm = (): void => {
    clearTimeout(timer)
    timer = setTimeout(() => {
      const what = options.slurm ? 'its job step started' : 'it started'
      timeout.abort(
        new IppTunnelError(
          'E_TIMEOUT',
          `the kernel on ${options.host} did not write its ports within ${String(limit / 1000)} s after ${what}`,
        ),
      )
    }, limit)
  }
  arm()
  let watch: RemoteAttachment | undefined
  try {
    if (options.slurm) {
      watch = await procs.attach(name, { signal })
      watch.stdout.resume()
      createInterface({ input: watch.stderr }).on('line', (line) => {
        const event = queueEvent(line)
        if (event?.state === 'pending') {
          clearTimeout(timer)
          options.onState?.({ state: 'pending', job: event.job })
        } else if (event?.state === 'allocated') arm()
      })
    }
    const got = await procs.waitFile(name, REMOTE_FILE_NAME, {
      keys: PORT_FIELDS,
      also: options.slurm ? [SLURM_FILE] : [],
      signal,
    })
    const where = `${options.host}:${options.dir}/${REMOTE_FILE_NAME}`
    if (!options.slurm) return { info: writtenBack(got.text, info, '127.0.0.1', where) }
    const step = parseSlurmStep(got.also[SLURM_FILE], `${options.host}:${options.dir}/${SLURM_FILE}`)
    const forward = writtenBack(got.text, info, step.addr, where)
    options.onState?.({ state: 'running', job: step.job, step: step.step, node: step.host })
    return { info: forward, step }
  } catch (err) {
    if (timeout.signal.aborted) throw timeout.signal.reason
    throw err
  } finally {
    clearTimeout(timer)
    await watch?.detach()
  }
}
