import type { Socket } from 'node:net'
import { isAbsolute } from 'node:path'

import { IppTunnelError } from '../errors/index.js'
import { checkJobId, RemoteKernel, type KernelSlurmOptions } from '../kernels/index.js'
import { KeptSupervisor } from '../remote/index.js'
import { resolveTarget, type Link, type ResolveOptions } from '../ssh/index.js'
import { routeKey, type LinkPool } from '../tunnel/index.js'
import {
  kernelFieldsOf,
  type KernelClientMessage,
  type KernelRequest,
  type KernelServerMessage,
  type ServiceKernelState,
  type KernelStatus,
} from './kernel-protocol.js'
import { LineReader, refuseLongLine } from './lines.js'
import type { LoginRelay } from './login-relay.js'

/**
 * How long the service keeps a destination's link — and the remote supervisor kept on it — after the last kernel
 * on it stopped: a restarted kernel (a new launcher, a moment later) or the next notebook starts with no new login
 * (no second one-time code) and no new supervisor.
 */
export const KERNEL_LINK_LINGER_MS = 10 * 60_000

interface Held {
  readonly request: KernelRequest
  readonly socket: Socket
  state: ServiceKernelState
  kernel: RemoteKernel | undefined
  readonly since: string
  done: Promise<void>
}

/**
 * Starts remote kernels for `ipp-tunnel kernel` launchers over the service's pooled links: every kernel and tunnel
 * to a destination shares one SSH connection (one login, one one-time code, for all of them), and a link waiting
 * for a login says so to the launcher and in `status`. The launcher's connection is the kernel's lease: a `stop`
 * line stops it; a connection that closes without one lets go (the kernel runs on for its `persistSeconds`, as
 * when a launcher of its own is killed).
 */
export class KernelHost {
  readonly #pool: LinkPool
  readonly #relay: LoginRelay
  readonly #options: ResolveOptions
  readonly #held = new Set<Held>()
  /** The supervisors kept on each link, by remote python and setup lines; closed with their link. */
  readonly #kept = new Map<Link, Map<string, KeptSupervisor>>()
  /** Releases of links whose kernels have stopped, due after {@link KERNEL_LINK_LINGER_MS}. */
  readonly #lingering = new Map<NodeJS.Timeout, Link>()
  #closed = false

  constructor(pool: LinkPool, relay: LoginRelay, options: ResolveOptions) {
    this.#pool = pool
    this.#relay = relay
    this.#options = options
  }

  /** The kernels held now, for `status`. */
  status(): KernelStatus[] {
    return [...this.#held].map((h) => ({
      destination: h.request.destination,
      file: h.request.connectionFile,
      state: h.state,
      ...(h.kernel !== undefined && { host: h.kernel.host, pid: h.kernel.pid }),
      since: h.since,
    }))
  }

  /** Serves one launcher: its request line read, `rest` what came after it. */
  serve(socket: Socket, request: KernelRequest, rest: Buffer): void {
    const held: Held = {
      request,
      socket,
      state: 'connecting',
      kernel: undefined,
      since: new Date().toISOString(),
      done: Promise.resolve(),
    }
    const send = (message: KernelServerMessage): void => {
      if (!socket.destroyed && socket.writable) socket.write(`${JSON.stringify(message)}\n`)
    }
    const setState = (state: ServiceKernelState, message?: string): void => {
      if (held.state === state) return
      held.state = state
      send({ type: 'state', state, ...(message !== undefined && { message }) })
    }
    const abort = new AbortController()
    let stopRequested = false
    let interruptPending = false
    const reader = new LineReader(
      socket,
      (line) => {
        const type = messageType(line)
        if (type === 'stop') {
          stopRequested = true
          abort.abort(new IppTunnelError('E_CLOSED', 'the launcher stopped the kernel'))
          void held.kernel?.close()
        } else if (type === 'interrupt' && held.kernel === undefined) {
          interruptPending = true
        } else if (type === 'interrupt') {
          void held.kernel?.interrupt().catch(() => undefined)
        }
      },
      () => {
        refuseLongLine(socket, 'message')
      },
      { first: rest },
    )
    socket.on('close', () => {
      reader.stop()
      abort.abort(new IppTunnelError('E_CLOSED', 'the launcher went away'))
      void held.kernel?.close({ leaveRunning: !stopRequested })
    })
    this.#held.add(held)
    held.done = this.#run(held, send, setState, abort.signal, () => interruptPending)
      .catch((err: unknown) => {
        const error =
          err instanceof IppTunnelError
            ? err
            : new IppTunnelError('E_REMOTE', err instanceof Error ? err.message : String(err))
        send({ type: 'error', code: error.code, message: error.message })
      })
      .finally(() => {
        this.#held.delete(held)
        socket.end()
      })
  }

  async #run(
    held: Held,
    send: (message: KernelServerMessage) => void,
    setState: (state: ServiceKernelState, message?: string) => void,
    signal: AbortSignal,
    interruptPending: () => boolean,
  ): Promise<void> {
    const request = held.request
    if (this.#closed) throw new IppTunnelError('E_CLOSED', 'the service is stopping')
    if (!isAbsolute(request.connectionFile)) {
      throw new IppTunnelError(
        'E_USAGE',
        `${request.connectionFile}: the connection file must be an absolute path`,
      )
    }
    const target = await resolveTarget(request.destination, this.#options)
    if (request.route !== undefined && request.route !== routeKey(target)) {
      throw new IppTunnelError(
        'E_USAGE',
        `the service reaches ${request.destination} as ${routeKey(target)}, the launcher's ssh options as ${request.route}`,
      )
    }
    const last = target.hops.at(-1)
    const asks = `${last?.username ?? ''}@${last?.host ?? ''}:${String(last?.port ?? '')}`
    const isOurs = (destination: string): boolean =>
      destination === asks || destination.startsWith(`${asks} `)
    const onNeed = (login: { destination: string }): void => {
      if (isOurs(login.destination)) {
        setState('waiting-login', `${login.destination} waits for a login: run ipp-tunnel login`)
      }
    }
    this.#relay.on('auth-needed', onNeed)
    for (const login of this.#relay.pending()) onNeed(login)
    let link: Link
    try {
      link = await this.#pool.acquire(target, signal)
    } finally {
      this.#relay.off('auth-needed', onNeed)
    }
    try {
      setState('starting')
      const supervisor = this.#supervisor(link, request.python, request.setup)
      const kernel = await RemoteKernel.start({
        ...kernelFieldsOf(request),
        link,
        supervisor,
        signal,
        onWarning: (message) => send({ type: 'warning', message }),
        ...(request.slurm !== undefined && { slurm: slurmOf(request.slurm) }),
        onState: (s) => {
          held.state = s.state
          send({ type: 'state', ...s })
        },
      })
      held.kernel = kernel
      if (signal.aborted) {
        await kernel.close({ leaveRunning: false })
        return
      }
      kernel.on('output', ({ stream, data }) =>
        send({ type: 'output', stream, data: data.toString('base64') }),
      )
      kernel.on('detached', () => {
        held.state = 'detached'
        send({ type: 'detached' })
      })
      kernel.on('reattached', ({ downMs }) => {
        held.state = 'running'
        send({ type: 'reattached', downMs })
      })
      kernel.on('link:reconnecting', (e) =>
        send({ type: 'reconnecting', attempt: e.attempt, delayMs: e.delayMs, message: e.error.message }),
      )
      held.state = 'running'
      send({ type: 'started', name: kernel.name, host: kernel.host, pid: kernel.pid })
      if (interruptPending()) void kernel.interrupt().catch(() => undefined)
      const ended = await kernel.exited
      await kernel.close()
      if (ended.error !== undefined) throw ended.error
      // a launcher that stopped it or went away is told nothing more; one whose service stops hears it go
      if (!isAborted(signal) && !this.closing)
        send({ type: 'exited', code: ended.code, signal: ended.signal })
    } finally {
      this.#releaseLater(link)
    }
  }

  /** The supervisor kept on `link` for this python and setup: started by its first call, ended with the link. */
  #supervisor(link: Link, python: string | undefined, setup: string | undefined): KeptSupervisor {
    let byHow = this.#kept.get(link)
    if (byHow === undefined) {
      const mine = new Map<string, KeptSupervisor>()
      byHow = mine
      this.#kept.set(link, mine)
      link.once('closed', () => {
        for (const kept of mine.values()) kept.close()
        this.#kept.delete(link)
      })
    }
    const key = JSON.stringify([python ?? null, setup ?? null])
    let kept = byHow.get(key)
    if (kept === undefined || kept.closed) {
      kept = new KeptSupervisor(link, {
        ...(python !== undefined && { python }),
        ...(setup !== undefined && { setup }),
      })
      byHow.set(key, kept)
    }
    return kept
  }

  /** Lets go of a kernel's link after {@link KERNEL_LINK_LINGER_MS} (at once when the service stops). */
  #releaseLater(link: Link): void {
    if (this.#closed) {
      void this.#pool.release(link)
      return
    }
    const timer = setTimeout(() => {
      this.#lingering.delete(timer)
      void this.#pool.release(link)
    }, KERNEL_LINK_LINGER_MS)
    this.#lingering.set(timer, link)
  }

  /** True once {@link close} was called. */
  get closing(): boolean {
    return this.#closed
  }

  /**
   * Lets every kernel go (each runs on for its `persistSeconds`, and its launcher goes on over a link of its own):
   * the service is stopping.
   */
  async close(): Promise<void> {
    this.#closed = true
    const held = [...this.#held]
    // the forwards closed before the launchers hear of it: each takes the kernel's ports over at once
    await Promise.all(held.map((h) => h.kernel?.close({ leaveRunning: true }) ?? Promise.resolve()))
    for (const h of held) h.socket.destroy()
    await Promise.all(held.map((h) => h.done))
    const lingering = [...this.#lingering]
    this.#lingering.clear()
    for (const [timer] of lingering) clearTimeout(timer)
    await Promise.all(lingering.map(([, link]) => this.#pool.release(link)))
  }
}

/** Read afresh: the signal may have aborted while the kernel ran. */
function isAborted(signal: AbortSignal): boolean {
  return signal.aborted
}

/** A request's Slurm options, the job id checked as the command line checks it. */
function slurmOf(slurm: NonNullable<KernelRequest['slurm']>): KernelSlurmOptions {
  return {
    ...(slurm.srunArgs !== undefined && { srunArgs: slurm.srunArgs }),
    ...(slurm.jobId !== undefined && { jobId: checkJobId(slurm.jobId) }),
  }
}

/** The `type` of a launcher's line, if it is one of ours; anything else (not JSON, not an object) is ignored. */
function messageType(line: string): KernelClientMessage['type'] | undefined {
  let value: unknown
  try {
    value = JSON.parse(line)
  } catch {
    return undefined
  }
  const type = typeof value === 'object' && value !== null ? (value as { type?: unknown }).type : undefined
  return type === 'stop' || type === 'interrupt' ? type : undefined
}
