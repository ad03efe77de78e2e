/**
 * What `ipp-tunnel kernel` and the service say to each other on the service socket when the service starts a
 * remote kernel over its pooled link: one JSON object a line, the request first.
 */
import type { RemoteKernelOptions } from '../kernels/index.js'

/**
 * What of a {@link RemoteKernelOptions} a launcher hands to the service: what the kernel is and where, not how
 * this process logs in (the service logs in its own way).
 */
export const KERNEL_REQUEST_FIELDS = [
  'destination',
  'connectionFile',
  'python',
  'kernelCmd',
  'setup',
  'cwd',
  'env',
  'persistSeconds',
  'remoteDir',
  'remoteTransport',
  'slurm',
] as const satisfies readonly (keyof RemoteKernelOptions)[]

/** What the kernel is and where: the {@link KERNEL_REQUEST_FIELDS} of a {@link RemoteKernelOptions}. */
export type KernelFields = Pick<RemoteKernelOptions, (typeof KERNEL_REQUEST_FIELDS)[number]>

/** The {@link KERNEL_REQUEST_FIELDS} that are set in `from` (the launcher's options, or a request). */
export function kernelFieldsOf(from: KernelFields): KernelFields {
  const picked: Record<string, unknown> = {}
  for (const field of KERNEL_REQUEST_FIELDS) if (from[field] !== undefined) picked[field] = from[field]
  return picked as unknown as KernelFields
}

/** The request line: the kernel to start, as `ipp-tunnel kernel` was told. */
export type KernelRequest = KernelFields & {
  readonly op: 'kernel'
  /**
   * The route the launcher resolved DEST to with its own ssh options (`user@host:port` per hop): a service that
   * resolves it to another refuses (`E_USAGE`), and the launcher goes on with a link of its own.
   */
  readonly route?: string
}

/** Where a kernel the service holds is, as `status` shows it. */
export type ServiceKernelState =
  'connecting' | 'waiting-login' | 'starting' | 'pending' | 'running' | 'detached'

/** A kernel the service holds for a launcher, as `status` shows it. */
export interface KernelStatus {
  readonly destination: string
  readonly file: string
  readonly state: ServiceKernelState
  /** Where it runs, once started. */
  readonly host?: string
  readonly pid?: number
  /** Since when (ISO 8601). */
  readonly since: string
}

/** What the service sends the launcher. */
export type KernelServerMessage =
  | {
      readonly type: 'state'
      readonly state: ServiceKernelState
      readonly message?: string
      /** Under Slurm: the job (pending, running) and the node it runs on. */
      readonly job?: string
      readonly node?: string
    }
  | { readonly type: 'started'; readonly name: string; readonly host: string; readonly pid: number }
  /** The kernel's output, base64 (it need not be text, nor end on a character). */
  | { readonly type: 'output'; readonly stream: 'stdout' | 'stderr'; readonly data: string }
  /** What the user should know and nothing stops (the file's Curve keys withheld, and why). */
  | { readonly type: 'warning'; readonly message: string }
  | { readonly type: 'detached' }
  | { readonly type: 'reattached'; readonly downMs: number }
  | {
      readonly type: 'reconnecting'
      readonly attempt: number
      readonly delayMs: number
      readonly message: string
    }
  | { readonly type: 'exited'; readonly code: number | null; readonly signal: number | null }
  /** The kernel could not be started or followed; the connection closes after it. */
  | { readonly type: 'error'; readonly code: string; readonly message: string }

/**
 * What the launcher sends after its request: `interrupt` (SIGINT to the kernel), `stop` (stop it and remove its
 * files). Closing the connection without `stop` lets go: the kernel runs on for its `persistSeconds`.
 */
export type KernelClientMessage = { readonly type: 'interrupt' } | { readonly type: 'stop' }

/** Reads a request line's fields, refusing anything of the wrong type. */
export function parseKernelRequest(value: Record<string, unknown>): KernelRequest | undefined {
  const str = (key: string): boolean => value[key] === undefined || typeof value[key] === 'string'
  if (typeof value.destination !== 'string' || typeof value.connectionFile !== 'string') return undefined
  if (!['python', 'setup', 'cwd', 'remoteDir', 'route'].every(str)) return undefined
  const cmd = value.kernelCmd
  if (cmd !== undefined && !(Array.isArray(cmd) && cmd.every((w) => typeof w === 'string'))) return undefined
  const env = value.env
  if (
    env !== undefined &&
    (typeof env !== 'object' ||
      env === null ||
      Array.isArray(env) ||
      !Object.values(env).every((v) => typeof v === 'string'))
  ) {
    return undefined
  }
  if (
    value.remoteTransport !== undefined &&
    value.remoteTransport !== 'unix' &&
    value.remoteTransport !== 'tcp'
  ) {
    return undefined
  }
  const slurm = value.slurm as { srunArgs?: unknown; jobId?: unknown } | undefined | null
  if (
    slurm !== undefined &&
    (typeof slurm !== 'object' ||
      slurm === null ||
      (slurm.jobId !== undefined && typeof slurm.jobId !== 'string') ||
      (slurm.srunArgs !== undefined &&
        !(Array.isArray(slurm.srunArgs) && slurm.srunArgs.every((w) => typeof w === 'string'))))
  ) {
    return undefined
  }
  const persist = value.persistSeconds
  if (persist !== undefined && (typeof persist !== 'number' || !(persist > 0))) return undefined
  return value as unknown as KernelRequest
}
