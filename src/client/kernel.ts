import type { ConnectionInfo } from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'
import { connect, type ConnectOptions, type Connection } from '../sockets/index.js'
import type { KernelInfoReplyContent } from '../wire/index.js'
import { OutputRouter, type ExecuteOptions, type ExecuteResult } from './execute.js'

/** A kernel's `kernel_info_reply` content plus how long it took. */
export type KernelInfoResult = KernelInfoReplyContent & { readonly roundTripMs: number }

/**
 * A small Jupyter kernel client over a {@link Connection}: `kernel_info_request` and `execute_request` on
 * shell, output collected from iopub, heartbeat on hb.
 *
 * @example
 * await using kernel = await KernelClient.open('kernel-1234.json')
 * const r = await kernel.execute('1 + 1')
 * console.log(r.result) // '2'
 */
export class KernelClient {
  readonly kind = 'kernel'
  readonly connection: Connection<'kernel'>
  readonly #router: OutputRouter

  constructor(connection: Connection<'kernel'>) {
    this.connection = connection
    this.#router = new OutputRouter(connection)
  }

  /**
   * Connects (through a tunnel when the file or `options.ssh` names an ssh server) and returns a client that
   * owns the connection.
   *
   * @throws IppTunnelError `E_CONNFILE_KIND` when the file is not a kernel file; see `connect`.
   * @example const kernel = await KernelClient.open(file, { ssh: 'me@gpu-box' })
   */
  static async open(source: string | ConnectionInfo, options: ConnectOptions = {}): Promise<KernelClient> {
    const connection = await connect(source, options)
    if (connection.kind !== 'kernel') {
      await connection.close()
      throw new IppTunnelError(
        'E_CONNFILE_KIND',
        `${connection.where}: this is an ipyparallel file; use IppClient`,
      )
    }
    const client = new KernelClient(connection)
    try {
      await client.#untilIopubHears(options.handshakeTimeoutMs ?? 30_000)
    } catch (err) {
      await connection.close()
      throw err
    }
    return client
  }

  /**
   * A subscription reaches the kernel's PUB socket some time after the handshake, and output published before it
   * is lost (ZeroMQ's slow joiner). As jupyter_client's `wait_for_ready` does, ask `kernel_info` until its status
   * messages arrive on iopub: from then on, nothing the kernel publishes is missed.
   */
  async #untilIopubHears(timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs
    for (;;) {
      await this.connection.request('shell', 'kernel_info_request', {}, { timeoutMs })
      if (await this.#router.heard(200)) return
      if (performance.now() > deadline) {
        throw new IppTunnelError(
          'E_TIMEOUT',
          `${this.connection.where}: the kernel answers on shell, but nothing arrives on iopub within ${String(timeoutMs)} ms`,
        )
      }
    }
  }

  /**
   * Asks the kernel who it is.
   *
   * @example const { implementation, language_info } = await kernel.kernelInfo()
   */
  async kernelInfo(options: { timeoutMs?: number } = {}): Promise<KernelInfoResult> {
    const started = performance.now()
    const reply = await this.connection.request('shell', 'kernel_info_request', {}, options)
    const roundTripMs = performance.now() - started
    return { ...(reply.content as KernelInfoReplyContent), roundTripMs }
  }

  /**
   * Runs `code` and resolves with its reply and output. Exceptions raised by the code are in `error`.
   *
   * @example
   * const r = await kernel.execute('1/0')
   * if (r.status === 'error') console.log(r.error?.ename) // ZeroDivisionError
   */
  async execute(code: string, options: ExecuteOptions = {}): Promise<ExecuteResult> {
    const { session } = this.connection
    return this.#router.execute(
      (request) =>
        this.connection.requestMessage('shell', request, {
          ...(options.timeoutMs !== undefined && { timeoutMs: options.timeoutMs }),
          ...(options.signal !== undefined && { signal: options.signal }),
        }),
      (content) => session.msg('execute_request', content),
      code,
      options,
    )
  }

  /**
   * Interrupts what the kernel runs (`interrupt_request` on control, which ipykernel answers while busy):
   * running code raises `KeyboardInterrupt`.
   *
   * @throws IppTunnelError `E_TIMEOUT` when the kernel does not answer, `E_REMOTE` when it refuses.
   * @example await kernel.interrupt()
   */
  async interrupt(options: { timeoutMs?: number } = {}): Promise<void> {
    const reply = await this.connection.request('control', 'interrupt_request', {}, options)
    const content = reply.content as Record<string, unknown>
    if (content.status !== undefined && content.status !== 'ok') {
      throw new IppTunnelError(
        'E_REMOTE',
        `${this.connection.where}: the kernel refused interrupt_request (${JSON.stringify(content.status)})`,
      )
    }
  }

  /**
   * Heartbeat round trip in ms.
   *
   * @example console.log(await kernel.heartbeat(), 'ms')
   */
  heartbeat(timeoutMs?: number): Promise<number> {
    return this.connection.heartbeat(timeoutMs)
  }

  /** Closes the connection and its tunnel. */
  async close(): Promise<void> {
    this.#router.close()
    await this.connection.close()
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}
