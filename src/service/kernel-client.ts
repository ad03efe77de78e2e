import { EventEmitter } from 'node:events'
import { connect, type Socket } from 'node:net'
import { dirname } from 'node:path'

import { IppTunnelError } from '../errors/index.js'
import type {
  KernelClientMessage,
  KernelRequest,
  KernelServerMessage,
  ServiceKernelState,
} from './kernel-protocol.js'
import { LineReader } from './lines.js'
import { checkRuntimeDir } from './status-socket.js'

/** Events of a {@link ServiceKernel}: those of a `RemoteKernel`, plus where the service is with it. */
export interface ServiceKernelEvents {
  state: [info: { state: ServiceKernelState; message?: string; job?: string; node?: string }]
  warning: [info: { message: string }]
  output: [info: { stream: 'stdout' | 'stderr'; data: Buffer }]
  detached: [info: { error?: Error }]
  reattached: [info: { downMs: number }]
  'link:reconnecting': [info: { attempt: number; delayMs: number; error: Error }]
  exited: [info: { code: number | null; signal: number | null }]
}

type Ended = { code: number | null; signal: number | null; error?: IppTunnelError }

/** The service's lines can be long (a kernel's output): bounded all the same. */
const MAX_SERVICE_LINE = 4 * 1024 * 1024

/**
 * A remote kernel started by the running service over its pooled link, for `ipp-tunnel kernel`: the same surface
 * as a `RemoteKernel` (events, `interrupt`, `close`, `exited`), through the service socket.
 *
 * @example
 * const kernel = await ServiceKernel.start(statusSocketPath(), { op: 'kernel', destination, connectionFile })
 * process.on('SIGINT', () => void kernel.interrupt())
 */
export class ServiceKernel extends EventEmitter<ServiceKernelEvents> {
  name = ''
  host = ''
  pid = 0
  readonly exited: Promise<Ended>
  readonly #socket: Socket
  #resolveExited: (value: Ended) => void = () => undefined
  #closing: Promise<void> | undefined

  private constructor(socket: Socket) {
    super()
    this.#socket = socket
    this.exited = new Promise((resolve) => (this.#resolveExited = resolve))
  }

  /**
   * Asks the service on `path` to start the kernel; resolves once it runs. Until then `onState` hears where it is
   * (connecting, waiting for a login). Throws `E_SERVICE_DOWN` when nothing answers on `path`, and what the
   * service reports when the kernel cannot be started.
   */
  static async start(
    path: string,
    request: KernelRequest,
    options: {
      signal?: AbortSignal
      onState?: (info: { state: ServiceKernelState; message?: string; job?: string; node?: string }) => void
      onWarning?: (message: string) => void
    } = {},
  ): Promise<ServiceKernel> {
    // the socket's directory must be ours: another user's "service" would be handed the kernel
    await checkRuntimeDir(dirname(path))
    return new Promise((resolve, reject) => {
      const socket = connect(path)
      const kernel = new ServiceKernel(socket)
      let started = false
      let ended: Ended | undefined
      const end = (value: Ended): void => {
        if (ended !== undefined) return
        ended = value
        kernel.#resolveExited(value)
        if (!started) reject(value.error ?? new IppTunnelError('E_REMOTE', 'the service ended the kernel'))
      }
      const onAbort = (): void => {
        socket.write(`${JSON.stringify({ type: 'stop' } satisfies KernelClientMessage)}\n`)
        socket.end()
        end({ code: null, signal: null, error: options.signal?.reason as IppTunnelError })
      }
      options.signal?.addEventListener('abort', onAbort, { once: true })
      socket.once('connect', () => socket.write(`${JSON.stringify(request)}\n`))
      socket.once('error', (err: NodeJS.ErrnoException) => {
        if (!started && socket.bytesRead === 0) {
          end({
            code: null,
            signal: null,
            error: new IppTunnelError('E_SERVICE_DOWN', `no ipp-tunnel service answers on ${path}`, {
              cause: err,
            }),
          })
        }
      })
      socket.once('close', () => {
        options.signal?.removeEventListener('abort', onAbort)
        // after close() the service ends the connection once the kernel is stopped: that is the clean end
        end(
          kernel.#closing !== undefined
            ? { code: null, signal: null }
            : {
                code: null,
                signal: null,
                error: new IppTunnelError('E_SERVICE_DOWN', `the ipp-tunnel service on ${path} went away`),
              },
        )
      })
      const handle = (message: KernelServerMessage): void => {
        switch (message.type) {
          case 'state': {
            const info = {
              state: message.state,
              ...(message.message !== undefined && { message: message.message }),
              ...(message.job !== undefined && { job: message.job }),
              ...(message.node !== undefined && { node: message.node }),
            }
            kernel.emit('state', info)
            options.onState?.(info)
            break
          }
          case 'started':
            kernel.name = message.name
            kernel.host = message.host
            kernel.pid = message.pid
            started = true
            options.signal?.removeEventListener('abort', onAbort)
            resolve(kernel)
            break
          case 'output':
            kernel.emit('output', { stream: message.stream, data: Buffer.from(message.data, 'base64') })
            break
          case 'warning':
            kernel.emit('warning', { message: message.message })
            options.onWarning?.(message.message)
            break
          case 'detached':
            kernel.emit('detached', {})
            break
          case 'reattached':
            kernel.emit('reattached', { downMs: message.downMs })
            break
          case 'reconnecting':
            kernel.emit('link:reconnecting', {
              attempt: message.attempt,
              delayMs: message.delayMs,
              error: new Error(message.message),
            })
            break
          case 'exited':
            kernel.emit('exited', message)
            end({ code: message.code, signal: message.signal })
            break
          case 'error':
            end({
              code: null,
              signal: null,
              error: new IppTunnelError(errorCode(message.code), message.message),
            })
            break
        }
      }
      new LineReader(
        socket,
        (line) => {
          try {
            handle(JSON.parse(line) as KernelServerMessage)
          } catch {
            // not a line of the protocol: skip it
          }
        },
        () => socket.destroy(),
        { max: MAX_SERVICE_LINE },
      )
    })
  }

  /** SIGINT to the remote kernel's process group. */
  interrupt(): Promise<void> {
    this.#send({ type: 'interrupt' })
    return Promise.resolve()
  }

  /** Stops the kernel (or, `leaveRunning`, only lets go) and ends the connection to the service. */
  close(options: { leaveRunning?: boolean } = {}): Promise<void> {
    this.#closing ??= (async () => {
      if (options.leaveRunning !== true) this.#send({ type: 'stop' })
      if (options.leaveRunning === true || this.#socket.destroyed) this.#socket.destroy()
      // the service ends the connection once the kernel is stopped and its files removed
      await this.exited
    })()
    return this.#closing
  }

  #send(message: KernelClientMessage): void {
    if (!this.#socket.destroyed && this.#socket.writable) this.#socket.write(`${JSON.stringify(message)}\n`)
  }
}

function errorCode(code: string): ConstructorParameters<typeof IppTunnelError>[0] {
  return /^E_[A-Z_]+$/u.test(code) ? (code as ConstructorParameters<typeof IppTunnelError>[0]) : 'E_REMOTE'
}
