import type { IppTunnelError } from '../../errors/index.js'

interface Waiter {
  resolve(): void
  reject(err: IppTunnelError): void
}

/**
 * The calls (`forwardOut`, `sftp`, `exec`) waiting for a {@link Link} that is (re)connecting: each goes on when the
 * link is up, rejects when it fails or closes, when its signal aborts, or when it waited too long.
 *
 * @example
 * const waiters = new Waiters()
 * await waiters.wait(signal, 10_000, () => new IppTunnelError('E_LINK_DOWN', 'gave up waiting'))
 */
export class Waiters {
  readonly #waiters = new Set<Waiter>()

  /** The link is up: every waiting call goes on. */
  resolveAll(): void {
    for (const w of this.#waiters) w.resolve()
    this.#waiters.clear()
  }

  /** The link failed or closed: every waiting call rejects with `error`. */
  rejectAll(error: IppTunnelError): void {
    for (const w of this.#waiters) w.reject(error)
    this.#waiters.clear()
  }

  /**
   * Waits for {@link resolveAll} or {@link rejectAll}; rejects with the signal's reason when it aborts first, or with
   * `late()` after `waitMs`.
   */
  wait(signal: AbortSignal | undefined, waitMs: number, late: () => IppTunnelError): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
        this.#waiters.delete(waiter)
      }
      const waiter: Waiter = {
        resolve: () => {
          done()
          resolve()
        },
        reject: (err) => {
          done()
          reject(err)
        },
      }
      const onAbort = (): void => {
        done()
        reject(signal?.reason as Error)
      }
      const timer = setTimeout(() => {
        waiter.reject(late())
      }, waitMs)
      signal?.addEventListener('abort', onAbort, { once: true })
      this.#waiters.add(waiter)
    })
  }
}
