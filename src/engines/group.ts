import { spawn, type ChildProcess } from 'node:child_process'
import { EventEmitter } from 'node:events'
import { createInterface } from 'node:readline'

import { IppTunnelError } from '../errors/index.js'
import { engineArgvs, mpiEnvironment, type EngineCommandOptions } from './command.js'

/** How one engine process (or the one mpiexec process of an MPI launch) ended. */
export interface EngineExit {
  readonly index: number
  readonly pid: number
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  /** True when it ended after {@link EngineGroup.stop} asked it to; false when it died on its own. */
  readonly stopped: boolean
}

/** Events of an {@link EngineGroup}. `index` numbers the processes started, from 0. */
export interface EngineGroupEvents {
  'engine-started': [{ index: number; pid: number; argv: readonly string[] }]
  /** An engine logged `Completed registration with id N` (Debian's ipengine does, at its default log level). */
  'engine-registered': [{ index: number; id: number }]
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
}

const REGISTERED = /Completed registration with id (\d+)/

interface Member {
  readonly index: number
  readonly child: ChildProcess
  readonly pid: number
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

  constructor() {
    super()
    this.#done = new Promise((resolve) => (this.#resolveDone = resolve))
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
      const member: Member = { index, child, pid }
      this.#members.push(member)
      for (const stream of [child.stdout, child.stderr]) {
        createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
          const registered = REGISTERED.exec(line)
          if (registered) this.emit('engine-registered', { index, id: Number(registered[1]) })
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
   * SIGINT and stops on SIGTERM) and SIGKILL after `killAfterMs`; resolves when all have ended.
   */
  async stop(
    signal: NodeJS.Signals = 'SIGTERM',
    options: { termAfterMs?: number; killAfterMs?: number } = {},
  ): Promise<readonly EngineExit[]> {
    if (!this.#stopping) {
      this.#stopping = true
      this.#signalAll(signal)
      if (this.#exits.length < this.#expected) {
        const term = setTimeout(() => this.#signalAll('SIGTERM'), options.termAfterMs ?? 1000)
        const kill = setTimeout(() => this.#signalAll('SIGKILL'), options.killAfterMs ?? 8000)
        term.unref()
        kill.unref()
        this.#timers.push(term, kill)
      }
    }
    return this.#done
  }

  /** SIGKILLs every process group at once, synchronously (for a process that is exiting now). */
  killNow(): void {
    this.#stopping = true
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
 * engines.on('engine-registered', (e) => console.log('engine id', e.id))
 * @throws IppTunnelError `E_USAGE` for a bad count or command line.
 */
export function launchEngines(options: LaunchEnginesOptions): EngineGroup {
  const argvs = engineArgvs(options)
  const base = options.env ?? process.env
  const env = options.mpi === true ? mpiEnvironment(base, options.root ?? false) : { ...base }
  env.PYTHONUNBUFFERED ??= '1'
  const group = new EngineGroup()
  // Start on the next tick so that callers can attach listeners first.
  setImmediate(() => group.start(argvs, env, options.cwd))
  return group
}
