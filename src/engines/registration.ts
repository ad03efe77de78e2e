import { EventEmitter } from 'node:events'

/**
 * What the engines' supervision needs of the controller's hub: which engine ids it lists now, and a way to
 * drop one. `HubQuery` of the client folder is one, through the engine file's own tunnel.
 */
export interface HubView {
  engines(options?: { timeoutMs?: number }): Promise<{
    readonly ids: readonly number[]
    readonly identities: Readonly<Record<number, string>>
  }>
  unregister(id: number): Promise<void>
}

/** Events of an {@link EngineRegistry}. `index` is the process we started, `id` the controller's engine id. */
export interface EngineRegistryEvents {
  /** The controller lists engine `id`, which process `index` announced: it takes work from now on. */
  'engine-registered': [{ index: number; id: number }]
  /** The controller lists every expected engine. */
  registered: [{ ids: readonly number[] }]
  /** The hub did not answer a query (it is retried). */
  'hub-error': [{ error: Error }]
}

interface Claim {
  readonly index: number
  /** The engine's uuid as the hub listed it, once it did. */
  uuid?: string
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/**
 * Tracks registration the way the controller sees it. An engine logs `Completed registration` as soon as the
 * hub answered its request, but the hub lists it (and schedules work on it) only after its first heartbeat
 * arrived, up to a heartbeat period (3 s) later; so each claimed id is confirmed by asking the hub.
 *
 * @example
 * const registry = new EngineRegistry(hub, { expected: 2 })
 * group.on('engine-claimed', (e) => registry.claim(e.index, e.id))
 * registry.once('registered', () => console.log('the controller lists all engines'))
 * await registry.unregisterAll()
 */
export class EngineRegistry extends EventEmitter<EngineRegistryEvents> {
  readonly #hub: HubView
  readonly #expected: number
  readonly #pollMs: number
  readonly #claims = new Map<number, Claim>()
  readonly #listed = new Set<number>()
  #polling = false
  #closed = false
  #announced = false

  constructor(hub: HubView, options: { expected: number; pollMs?: number }) {
    super()
    this.#hub = hub
    this.#expected = options.expected
    this.#pollMs = options.pollMs ?? 100
  }

  /** Engine ids the controller listed for our processes, in order. */
  get ids(): number[] {
    return [...this.#listed].sort((a, b) => a - b)
  }

  /** Engine ids our processes announced (listed by the controller or not yet). */
  get claimed(): number[] {
    return [...this.#claims.keys()].sort((a, b) => a - b)
  }

  /** Process `index` announced engine id `id`; the registry asks the hub until it lists it. */
  claim(index: number, id: number): void {
    if (this.#closed || this.#claims.has(id)) return
    this.#claims.set(id, { index })
    void this.#poll()
  }

  async #poll(): Promise<void> {
    if (this.#polling) return
    this.#polling = true
    try {
      while (!this.#closed && this.#listed.size < this.#claims.size) {
        try {
          const { identities } = await this.#hub.engines()
          for (const [id, claim] of this.#claims) {
            const uuid = identities[id]
            if (uuid === undefined || this.#listed.has(id) || this.#isClosed()) continue
            claim.uuid = uuid
            this.#listed.add(id)
            this.emit('engine-registered', { index: claim.index, id })
          }
          if (!this.#announced && this.#listed.size >= this.#expected) {
            this.#announced = true
            this.emit('registered', { ids: this.ids })
          }
        } catch (err) {
          if (this.#isClosed()) return
          this.emit('hub-error', { error: err instanceof Error ? err : new Error(String(err)) })
        }
        if (this.#listed.size < this.#claims.size) await sleep(this.#pollMs)
      }
    } finally {
      this.#polling = false
    }
  }

  /**
   * Unregisters every engine we announced and waits until the hub lists none of them, for at most
   * `timeoutMs`. Resolves with the ids it still lists (empty when all are gone).
   */
  async unregisterAll(options: { timeoutMs?: number } = {}): Promise<number[]> {
    this.#closed = true
    const deadline = performance.now() + (options.timeoutMs ?? 1500)
    let remaining = this.claimed
    let first = true
    while (remaining.length > 0) {
      let identities: Readonly<Record<number, string>>
      try {
        ;({ identities } = await this.#hub.engines({
          timeoutMs: Math.max(1, Math.round(deadline - performance.now())),
        }))
      } catch {
        return remaining
      }
      remaining = remaining.filter((id) => {
        const uuid = identities[id]
        const known = this.#claims.get(id)?.uuid
        return uuid !== undefined && (known === undefined || known === uuid)
      })
      if (remaining.length === 0 || performance.now() >= deadline) break
      // The hub handles requests in order: after these, the next answer shows them gone.
      for (const id of remaining) await this.#hub.unregister(id).catch(() => undefined)
      if (!first) await sleep(Math.min(50, Math.max(0, deadline - performance.now())))
      first = false
    }
    return remaining
  }

  // A call, not a field read: the flag changes while a query is awaited.
  #isClosed(): boolean {
    return this.#closed
  }

  /** Stops asking the hub. Safe to call twice. */
  close(): void {
    this.#closed = true
  }
}
