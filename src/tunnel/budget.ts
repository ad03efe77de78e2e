import { readFileSync } from 'node:fs'

/**
 * A bound on connections carried at once, nested: a connection counts against its budget and every parent's.
 * Each carried connection holds one file descriptor (its local socket), so the root budget of a pool is the
 * process's descriptor limit minus a reserve that listeners, ssh connections, connection files and the status
 * socket keep for themselves; a per-file share below it keeps one busy or hostile file from starving the others.
 */
export class ChannelBudget {
  readonly limit: number
  readonly #parent: ChannelBudget | undefined
  #open = 0

  constructor(limit: number, parent?: ChannelBudget) {
    this.limit = limit
    this.#parent = parent
  }

  get open(): number {
    return this.#open
  }

  /** Counts one more connection, unless this budget or a parent is full. */
  take(): boolean {
    if (this.#open >= this.limit) return false
    if (this.#parent !== undefined && !this.#parent.take()) return false
    this.#open++
    return true
  }

  give(): void {
    if (this.#open <= 0) return
    this.#open--
    this.#parent?.give()
  }

  /** The tightest limit on the way up, for messages. */
  describe(): string {
    const here = this.#open >= this.limit ? this : undefined
    return String((here ?? this.#full() ?? this).limit)
  }

  #full(): ChannelBudget | undefined {
    const p = this.#parent
    if (p === undefined) return undefined
    return p.#open >= p.limit ? p : p.#full()
  }
}

/** The soft limit on open file descriptors (RLIMIT_NOFILE) from /proc, or undefined where that cannot be read. */
export function descriptorLimit(): number | undefined {
  try {
    const limits = readFileSync('/proc/self/limits', 'utf8')
    const match = /^Max open files\s+(\d+|unlimited)/m.exec(limits)
    if (match?.[1] === undefined || match[1] === 'unlimited') return undefined
    return Number(match[1])
  } catch {
    return undefined
  }
}

/**
 * The budget for connections of every tunnel of one pool: the descriptor limit less a reserve of an eighth
 * (at least 64, at most 1024) for everything that is not a carried connection, plus `reserved` more (the
 * listeners of files pulled from remote directories, which the caller bounds).
 */
export function rootBudget(limit = descriptorLimit(), reserved = 0): ChannelBudget {
  if (limit === undefined) return new ChannelBudget(Infinity)
  const reserve = Math.min(1024, Math.max(64, Math.floor(limit / 8))) + reserved
  return new ChannelBudget(Math.max(1, limit - reserve))
}
