import { lookup } from 'node:dns/promises'
import { isIP } from 'node:net'

import type { Link, LinkOptions, ResolvedTarget } from '../ssh/index.js'
import { Link as SshLink } from '../ssh/index.js'
import { IppTunnelError } from '../errors/index.js'
import { ChannelBudget, rootBudget } from './budget.js'

/** The addresses a host name resolves to (itself for an address); none when it does not resolve. */
async function addressesOf(host: string): Promise<Set<string>> {
  if (isIP(host) !== 0) return new Set([host])
  try {
    return new Set((await lookup(host, { all: true })).map((a) => a.address))
  } catch {
    return new Set()
  }
}

/**
 * Whether two routes reach the same server the same way: as many hops, each with the same user and port, and hosts
 * that are the same name or resolve to a common address (an alias and the address it names).
 *
 * @example
 * await sameServer(await resolveTarget('cluster'), await resolveTarget('me@10.0.0.2:22'))
 */
export async function sameServer(a: ResolvedTarget, b: ResolvedTarget): Promise<boolean> {
  if (routeKey(a) === routeKey(b)) return true
  if (a.hops.length !== b.hops.length) return false
  for (const [i, hop] of a.hops.entries()) {
    const other = b.hops[i]
    if (other === undefined || hop.port !== other.port || hop.username !== other.username) return false
    if (hop.proxyCommand !== other.proxyCommand) return false
    if (hop.host.toLowerCase() === other.host.toLowerCase()) continue
    const [mine, theirs] = await Promise.all([addressesOf(hop.host), addressesOf(other.host)])
    if (![...mine].some((address) => theirs.has(address))) return false
  }
  return true
}

/** A stable name for a route: every hop's `user@host:port`, jumps first. */
export function routeKey(target: ResolvedTarget): string {
  return target.hops.map((h) => `${h.username}@${h.host}:${h.port}`).join(' > ')
}

interface Entry {
  readonly link: Link
  readonly connecting: Promise<void>
  users: number
}

/** Options of a {@link LinkPool}. */
export interface LinkPoolOptions {
  /** Connections carried at once by every tunnel of the pool; default: the descriptor limit less a reserve. */
  readonly budget?: ChannelBudget
  /** The fraction of `budget` one tunnel (one file) may hold; default 0.5, so one file cannot starve the rest. */
  readonly tunnelShare?: number
}

/** Rejects with the signal's reason as soon as it aborts; otherwise settles as `promise` does. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise
  if (signal.aborted) return Promise.reject(signal.reason as Error)
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason as Error)
    signal.addEventListener('abort', onAbort, { once: true })
    promise.finally(() => signal.removeEventListener('abort', onAbort)).then(resolve, reject)
  })
}

/**
 * Shares one ssh Link among every tunnel that names the same route, and closes it when the last one lets go.
 * The pool owns the links; tunnels hold leases.
 */
export class LinkPool {
  readonly #options: LinkOptions
  readonly #entries = new Map<string, Entry>()
  readonly #budget: ChannelBudget
  readonly #share: number
  #closed = false

  constructor(options: LinkOptions, pool: LinkPoolOptions = {}) {
    this.#options = options
    this.#budget = pool.budget ?? rootBudget()
    this.#share = Math.min(1, Math.max(0, pool.tunnelShare ?? 0.5))
  }

  /** A budget for the connections of one more tunnel: its share of the pool's. */
  tunnelBudget(): ChannelBudget {
    const limit =
      this.#budget.limit === Infinity ? Infinity : Math.max(1, Math.ceil(this.#budget.limit * this.#share))
    return new ChannelBudget(limit, this.#budget)
  }

  /**
   * Connects (or joins) the link for `target`; resolves once it is up. Pair every acquire with a release.
   * On abort it rejects at once with the signal's reason; the link closes when no one else waits for it.
   */
  async acquire(target: ResolvedTarget, signal?: AbortSignal): Promise<Link> {
    if (this.#closed) throw new IppTunnelError('E_CLOSED', 'The link pool is closed')
    signal?.throwIfAborted()
    const key = routeKey(target)
    let entry = this.#entries.get(key)
    if (!entry || entry.link.closed || entry.link.state === 'failed') {
      if (entry) void entry.link.close()
      const link = new SshLink(target, this.#options)
      entry = { link, connecting: link.connect(), users: 0 }
      entry.connecting.catch(() => undefined)
      this.#entries.set(key, entry)
    }
    entry.users++
    try {
      // a signal of its own: many files waiting on one link must not pile listeners onto a shared signal
      await abortable(entry.connecting, signal && AbortSignal.any([signal]))
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
