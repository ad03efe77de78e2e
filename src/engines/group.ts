import { spawn, type ChildProcess } from 'node:child_process'
import { EventEmitter } from 'node:events'
import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'

import { IppTunnelError } from '../errors/index.js'
import { engineArgvs, mpiEnvironment, type EngineCommandOptions } from './command.js'
import { EngineRegistry, type HubView } from './registration.js'

/** How one engine process (or the one mpiexec process of an MPI launch) ended. */
export interface EngineExit {
  readonly index: number
  readonly pid: number
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  /** True when it ended after {@link EngineGroup.stop} asked it to; false when it died on its own. */
  readonly stopped: boolean
}

/**
 * Events of an {@link EngineGroup}. `index` numbers the processes started, from 0 (an mpiexec launch is one
 * process carrying every rank); `id` is the engine id the controller gave.
 */
export interface EngineGroupEvents {
  'engine-started': [{ index: number; pid: number; argv: readonly string[] }]
  /** An engine logged `Completed registration with id N` (Debian's ipengine does, at its default log level). */
  'engine-announced': [{ index: number; id: number }]
  /**
   * The controller lists engine `id` (with a `hub`: confirmed by asking it; without one: as announced). Work
   * sent to it from now on is scheduled.
   */
  'engine-registered': [{ index: number; id: number }]
  /** The controller lists `n` engines of this group (once). */
  registered: [{ ids: readonly number[] }]
  /** A query to the hub failed (it is retried). */
  'hub-error': [{ error: Error }]
  /** After {@link EngineGroup.stop}: the controller lists none of our engines, or these `remaining` ids. */
  unregistered: [{ remaining: readonly number[] }]
  /** One line an engine printed (stdout or stderr). */
  'engine-output': [{ index: number; line: string }]
  'engine-exited': [EngineExit]
  /** A process could not be started at all. */
  'engine-error': [{ index: number; error: IppTunnelError }]
  /** Every process has ended. */
  'all-exited': [readonly EngineExit[]]
}

export interface LaunchEnginesOptions extends EngineCommandOptions {
  /** Base environment of the engines (default: this process's). */
  readonly env?: NodeJS.ProcessEnv
  /** Whether this process runs as root (OpenMPI then needs its allow-root variables). */
  readonly root?: boolean
  /** Working directory of the engines. */
  readonly cwd?: string
  /**
   * The controller's hub, reached through the same tunnel as the engines (e.g. `HubQuery.open(tunnel.loopback)`):
   * registration is then what the hub lists, and {@link EngineGroup.stop} unregisters every engine and
   * waits until the hub lists none of them.
   */
  readonly hub?: HubView
}

const REGISTERED = /Completed registration with id (\d+)/
const NANNY = /\[KernelNanny\.\d+\] Starting kernel nanny for engine \d+, pid=\d+, nanny pid=(\d+)/

interface Member {
  readonly index: number
  readonly child: ChildProcess
  readonly pid: number
  /** Pids of the engines' nannies, from their `nanny pid=N` log line. */
  readonly nannies: number[]
  exit?: EngineExit
}

/**
 * Engine processes started on one engine file, each in a process group of its own (so an mpiexec and its ranks
 * are signalled together and a terminal's Ctrl-C reaches them only through {@link EngineGroup.stop}).
 *
 * @example
 * const engines = launchEngines({ file: tunnel.out, n: 4 })
 * engines.on('engine-exited', (e) => console.error(`engine ${e.index} exited ${e.code}`))
 * await engines.stop('SIGTERM')
 */
export class EngineGroup extends EventEmitter<EngineGroupEvents> {
  /** Milliseconds since the group was launched, for timing events. */
  readonly startedAt = performance.now()
  readonly #members: Member[] = []
  readonly #exits: EngineExit[] = []
  readonly #done: Promise<readonly EngineExit[]>
  #resolveDone: (exits: readonly EngineExit[]) => void = () => undefined
  #expected = 0
  #stopping = false
  #timers: NodeJS.Timeout[] = []
  readonly #registry: EngineRegistry | undefined
  readonly #announced = new Set<number>()
  readonly #engines: number
  #stopped: Promise<readonly EngineExit[]> | undefined

  /** `engines`: how many engines the group runs in all (the ranks of an MPI launch count). */
  constructor(options: { engines?: number; hub?: HubView } = {}) {
    super()
    this.#done = new Promise((resolve) => (this.#resolveDone = resolve))
    this.#engines = options.engines ?? 0
    if (options.hub !== undefined) {
      const registry = new EngineRegistry(options.hub, { expected: this.#engines })
      registry.on('engine-registered', (e) => this.emit('engine-registered', e))
      registry.on('registered', (e) => this.emit('registered', e))
      registry.on('hub-error', (e) => this.emit('hub-error', e))
      this.#registry = registry
    }
  }

  /** Engine ids the controller listed for this group (with a hub), or that the engines announced. */
  get ids(): number[] {
    return this.#registry?.ids ?? [...this.#announced].sort((a, b) => a - b)
  }

  /** Resolves once every process has ended, with how each ended. */
  get done(): Promise<readonly EngineExit[]> {
    return this.#done
  }

  /** Pids of the processes still running. */
  get running(): number[] {
    return this.#members.filter((m) => m.exit === undefined).map((m) => m.pid)
  }

  /** Whether {@link stop} was called. */
  get stopping(): boolean {
    return this.#stopping
  }

  /** Starts the processes; called once by {@link launchEngines}. */
  start(argvs: readonly (readonly string[])[], env: NodeJS.ProcessEnv, cwd: string | undefined): void {
    if (this.#stopping) {
      this.#resolveDone([])
      return
    }
    this.#expected = argvs.length
    argvs.forEach((argv, index) => {
      const [program, ...args] = argv
      if (program === undefined) return
      const child = spawn(program, args, {
        env,
        detached: true,
        stdio: ['ignore', 'pipe', 'pipe'],
        ...(cwd !== undefined && { cwd }),
      })
      const pid = child.pid
      if (pid === undefined) {
        child.once('error', (cause) => {
          const error = new IppTunnelError('E_SPAWN', `cannot run ${program}: ${cause.message}`, { cause })
          this.emit('engine-error', { index, error })
          this.#record({ index, pid: 0, code: 127, signal: null, stopped: false })
        })
        return
      }
      const member: Member = { index, child, pid, nannies: [] }
      this.#members.push(member)
      for (const stream of [child.stdout, child.stderr]) {
        createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
          const registered = REGISTERED.exec(line)
          if (registered) this.#announce(index, Number(registered[1]))
          const nanny = NANNY.exec(line)
          if (nanny) member.nannies.push(Number(nanny[1]))
          this.emit('engine-output', { index, line })
        })
      }
      child.once('exit', (code, signal) => {
        const exit = { index, pid, code, signal, stopped: this.#stopping }
        member.exit = exit
        this.#record(exit)
      })
      this.emit('engine-started', { index, pid, argv })
    })
    if (this.#expected === 0) this.#resolveDone([])
  }

  #announce(index: number, id: number): void {
    this.emit('engine-announced', { index, id })
    if (this.#registry !== undefined) {
      this.#registry.claim(index, id)
      return
    }
    if (this.#announced.has(id)) return
    this.#announced.add(id)
    this.emit('engine-registered', { index, id })
    if (this.#announced.size === this.#engines) this.emit('registered', { ids: this.ids })
  }

  #record(exit: EngineExit): void {
    this.#exits.push(exit)
    this.emit('engine-exited', exit)
    if (this.#exits.length === this.#expected) {
      for (const timer of this.#timers) clearTimeout(timer)
      this.#timers = []
      this.#sweep()
      this.emit('all-exited', this.#exits)
      this.#resolveDone(this.#exits)
    }
  }

  /**
   * Sends `signal` to every process group still running, then SIGTERM after `termAfterMs` (ipengine ignores
   * SIGINT and stops on SIGTERM) and SIGKILL after `killAfterMs`. With a hub, it also asks the hub at once to
   * drop every engine of the group, and again once all processes have ended, waiting each time (at most
   * `unregisterMs`) until the hub lists none of them: an engine's nanny does the same, but only reaches the
   * hub if the tunnel outlives it. Resolves with how each process ended; the pipes are then no longer read
   * and the nannies left behind are ended. Safe to call twice.
   */
  stop(
    signal: NodeJS.Signals = 'SIGTERM',
    options: { termAfterMs?: number; killAfterMs?: number; unregisterMs?: number } = {},
  ): Promise<readonly EngineExit[]> {
    if (!this.#stopping) {
      this.#stopping = true
      this.#signalAll(signal)
      if (this.#exits.length < this.#expected) {
        const timers: NodeJS.Timeout[] = []
        if (signal !== 'SIGTERM' && signal !== 'SIGKILL') {
          timers.push(setTimeout(() => this.#signalAll('SIGTERM'), options.termAfterMs ?? 1000))
        }
        timers.push(setTimeout(() => this.#signalAll('SIGKILL'), options.killAfterMs ?? 8000))
        for (const timer of timers) timer.unref()
        this.#timers.push(...timers)
      }
    }
    this.#stopped ??= this.#finishStop(
      options.unregisterMs === undefined ? {} : { timeoutMs: options.unregisterMs },
    )
    return this.#stopped
  }

  async #finishStop(timeout: { timeoutMs?: number }): Promise<readonly EngineExit[]> {
    const registry = this.#registry
    // The engines are going: the hub stops scheduling on them now, not once Python has wound down.
    const early = registry?.unregisterAll(timeout)
    const exits = await this.#done
    if (registry !== undefined) {
      await early
      const remaining = await registry.unregisterAll(timeout)
      this.emit('unregistered', { remaining })
    }
    this.#releaseOutput()
    return exits
  }

  /**
   * Stops reading the engines' pipes and ends the nannies still there: an engine's nanny (a process of its own
   * session) tells the hub its engine is gone, and lingers up to 3 s when the tunnel is already closed,
   * holding the pipes open. The hub has been told by now.
   */
  #releaseOutput(): void {
    for (const m of this.#members) {
      m.child.stdout?.destroy()
      m.child.stderr?.destroy()
      for (const pid of m.nannies) if (isNanny(pid)) signalProcess(pid, 'SIGTERM')
    }
  }

  /** SIGKILLs every process group at once, synchronously (for a process that is exiting now). */
  killNow(): void {
    this.#stopping = true
    this.#registry?.close()
    for (const m of this.#members) signalGroup(m.pid, 'SIGKILL')
  }

  #signalAll(signal: NodeJS.Signals): void {
    for (const m of this.#members) if (m.exit === undefined) signalGroup(m.pid, signal)
  }

  /** Once a group's leader has ended, kills whatever it left behind in its group (e.g. MPI ranks). */
  #sweep(): void {
    for (const m of this.#members) signalGroup(m.pid, 'SIGKILL')
  }

  /** Stops every engine (SIGTERM, then SIGKILL) and waits for them. Safe to call twice. */
  async close(): Promise<void> {
    await this.stop('SIGTERM')
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}

/** Whether `pid` is (still) an ipyparallel nanny, not a process that reused its pid. */
function isNanny(pid: number): boolean {
  try {
    return readFileSync(`/proc/${String(pid)}/cmdline`, 'latin1').includes('ipyparallel.engine.nanny')
  } catch {
    return false
  }
}

function signalProcess(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal)
  } catch {
    // gone already
  }
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal)
  } catch {
    // the group is gone already
  }
}

/**
 * Starts N engines on `options.file` (or one `mpiexec -n N … --mpi`), each process in its own process group.
 *
 * @example
 * await using engines = launchEngines({ file: '/tmp/loopback/ipcontroller-engine.json', n: 2, mpi: true })
 * engines.on('engine-registered', (e) => console.log('process', e.index, 'is engine id', e.id))
 * @throws IppTunnelError `E_USAGE` for a bad count or command line.
 */
export function launchEngines(options: LaunchEnginesOptions): EngineGroup {
  const argvs = engineArgvs(options)
  const base = options.env ?? process.env
  const env = options.mpi === true ? mpiEnvironment(base, options.root ?? false) : { ...base }
  env.PYTHONUNBUFFERED ??= '1'
  // debugpy's four-line frozen-modules warning from every engine, at every start
  env.PYDEVD_DISABLE_FILE_VALIDATION ??= '1'
  // ipyparallel 8+'s engine reads this before its --file: the controller's own endpoints, not the file we give it
  delete env.IPP_CONNECTION_INFO
  const group = new EngineGroup({
    engines: options.n,
    ...(options.hub !== undefined && { hub: options.hub }),
  })
  // Start on the next tick so that callers can attach listeners first.
  setImmediate(() => group.start(argvs, env, options.cwd))
  return group
}
