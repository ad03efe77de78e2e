import { IppTunnelError } from '../errors/index.js'
import { resolveTarget, type Link, type ResolveOptions } from '../ssh/index.js'
import type { LinkPool } from '../tunnel/index.js'

/** The lease on the link to one remote destination, and when it last failed for good. */
interface Lease {
  readonly link: Promise<Link>
  failedAt: number
  delayMs: number
  error: Error | undefined
}

/**
 * The service's leases on the links its remote sources read through: one per destination, from the pool (shared
 * with the tunnels that go there), held while the service runs. A link that failed for good (host key,
 * authentication) is given back and asked for again, no sooner than a growing delay, so that a source polling every
 * second does not log in every second.
 */
export class RemoteLinks {
  readonly #pool: LinkPool
  readonly #options: ResolveOptions
  readonly #leases = new Map<string, Lease>()

  constructor(pool: LinkPool, options: ResolveOptions) {
    this.#pool = pool
    this.#options = options
  }

  /** The live link to `destination`, connecting it if needed; throws the last failure while backing off. */
  async get(destination: string, signal: AbortSignal): Promise<Link> {
    const held = this.#leases.get(destination)
    if (held !== undefined) {
      const link = await held.link.catch(() => undefined)
      if (link !== undefined && !link.closed && link.state !== 'failed') return link
      if (performance.now() - held.failedAt < held.delayMs) {
        throw (
          link?.error ?? held.error ?? new IppTunnelError('E_LINK_DOWN', `SSH link to ${destination} is down`)
        )
      }
      if (this.#leases.get(destination) === held) {
        this.#leases.delete(destination)
        if (link !== undefined) await this.#pool.release(link)
      }
    }
    const again = this.#leases.get(destination)
    if (again !== undefined) return again.link
    const lease: Lease = {
      link: resolveTarget(destination, this.#options).then((target) => this.#pool.acquire(target, signal)),
      failedAt: Infinity,
      delayMs: Math.min(30_000, (held?.delayMs ?? 500) * 2),
      error: undefined,
    }
    this.#leases.set(destination, lease)
    lease.link.then(
      (link) => {
        lease.delayMs = 1000
        link.once('failed', () => (lease.failedAt = performance.now()))
      },
      (err: unknown) => {
        lease.failedAt = performance.now()
        lease.error = err instanceof Error ? err : new Error(String(err))
      },
    )
    return lease.link
  }
}
