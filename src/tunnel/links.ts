import type { Link, LinkOptions, ResolvedTarget } from '../ssh/index.js'
import { Link as SshLink } from '../ssh/index.js'

/** A stable name for a route: every hop's `user@host:port`, jumps first. */
export function routeKey(target: ResolvedTarget): string {
  return target.hops.map((h) => `${h.username}@${h.host}:${h.port}`).join(' > ')
}

interface Entry {
  readonly link: Link
  readonly connecting: Promise<void>
  users: number
}

/**
 * Shares one ssh Link among every tunnel that names the same route, and closes it when the last one lets go.
 * The pool owns the links; tunnels hold leases.
 */
export class LinkPool {
  readonly #options: LinkOptions
  readonly #entries = new Map<string, Entry>()
  #closed = false

  constructor(options: LinkOptions) {
    this.#options = options
  }

  /** Connects (or joins) the link for `target`; resolves once it is up. Pair every acquire with a release. */
  async acquire(target: ResolvedTarget, signal?: AbortSignal): Promise<Link> {
    if (this.#closed) throw new Error('link pool is closed')
    const key = routeKey(target)
    let entry = this.#entries.get(key)
    if (!entry || entry.link.closed || entry.link.state === 'failed') {
      if (entry) void entry.link.close()
      const link = new SshLink(target, this.#options)
      entry = { link, connecting: link.connect(signal ? { signal } : {}), users: 0 }
      this.#entries.set(key, entry)
    }
    entry.users++
    try {
      await entry.connecting
    } catch (err) {
      await this.release(entry.link)
      throw err
    }
    return entry.link
  }

  /** Drops a lease; the link closes when no tunnel uses it. */
  async release(link: Link): Promise<void> {
    for (const [key, entry] of this.#entries) {
      if (entry.link !== link) continue
      entry.users--
      if (entry.users <= 0) {
        this.#entries.delete(key)
        await link.close()
      }
      return
    }
  }

  /** Every link in use, by route. */
  links(): ReadonlyMap<string, Link> {
    return new Map([...this.#entries].map(([k, e]) => [k, e.link]))
  }

  async close(): Promise<void> {
    this.#closed = true
    const links = [...this.#entries.values()].map((e) => e.link)
    this.#entries.clear()
    await Promise.all(links.map((l) => l.close()))
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}
