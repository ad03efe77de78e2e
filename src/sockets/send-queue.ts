import { IppTunnelError } from '../errors/index.js'

/** The part of a zeromq socket a {@link SendQueue} needs. */
export interface Sendable {
  send(frames: Buffer[]): Promise<void>
}

/**
 * Sends on one zeromq socket one message at a time, in call order. zeromq.js allows a single pending
 * `send()` per socket (a second one rejects with EBUSY); callers may send concurrently through this queue.
 *
 * @example
 * const queue = new SendQueue(dealer, 'mux')
 * await Promise.all([queue.send(a), queue.send(b)]) // a goes out before b
 */
export class SendQueue {
  readonly #socket: Sendable
  readonly #channel: string
  #tail: Promise<void> = Promise.resolve()
  #closed = false
  #sent = 0

  constructor(socket: Sendable, channel: string) {
    this.#socket = socket
    this.#channel = channel
  }

  get closed(): boolean {
    return this.#closed
  }

  /** Messages sent so far. */
  get sent(): number {
    return this.#sent
  }

  /** Queues `frames`; resolves once zeromq took them. Rejects with `E_CLOSED` after {@link SendQueue.close}. */
  send(frames: Buffer[]): Promise<void> {
    if (this.#closed) return Promise.reject(this.#closedError())
    const next = this.#tail.then(async () => {
      if (this.#closed) throw this.#closedError()
      try {
        await this.#socket.send(frames)
      } catch (cause) {
        if (this.closed) throw this.#closedError()
        throw new IppTunnelError('E_CLOSED', `cannot send on channel "${this.#channel}": ${String(cause)}`, {
          cause,
        })
      }
      this.#sent++
    })
    // The chain goes on whether or not this send failed; the caller sees the failure through `next`.
    this.#tail = next.catch(() => undefined)
    return next
  }

  /** Refuses further sends; queued ones reject with `E_CLOSED`. */
  close(): void {
    this.#closed = true
  }

  #closedError(): IppTunnelError {
    return new IppTunnelError('E_CLOSED', `channel "${this.#channel}" is closed`)
  }
}
