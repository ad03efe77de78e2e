import { EventEmitter } from 'node:events'
import { fileURLToPath } from 'node:url'

import { CONNECTION_INFO_ENV } from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'
import type { Tunnel } from '../tunnel/index.js'
import { nodesOf, settleSteps, startAcross, type NodeLaunch, type NodeSshSettings } from './across.js'
import { engineArgvs, findProgram } from './command.js'
import { EngineFile, type EngineFileOptions } from './engine-file.js'
import { launchEngines, type EngineExit, type EngineGroup } from './group.js'
import { isRoutineLog, redactLine } from './log.js'
import { parseTagged, type HostList, type NodeReady, type NodeTunnels } from './nodes.js'
import { ENGINE_STEP_NAME } from './slurm.js'

/** Options of {@link startEngines}: the engine file (see {@link EngineFileOptions}), the engines, where they run. */
export interface StartEnginesOptions extends EngineFileOptions {
  /** Number of engines (1 to 4096). */
  readonly n: number
  /** One `mpiexec -n N … --mpi` launch: the engines share an MPI world. */
  readonly mpi?: boolean | undefined
  /** Engine command line; `{}` names the loopback file (default `/usr/bin/python3 -m ipyparallel.engine`). */
  readonly engineCommand?: string | undefined
  /** MPI launcher command line (default `mpiexec`). */
  readonly mpiexec?: string | undefined
  /** Extra arguments for every engine. */
  readonly extraArgs?: readonly string[] | undefined
  /** With `mpi`: across these hosts (OpenMPI's `a:4,b:4` or a hostfile), one node tunnel per host. */
  readonly hosts?: HostList | undefined
  /** Inside a Slurm allocation: one node tunnel per allocated node (srun), then the engines (srun, or mpiexec). */
  readonly slurm?: boolean | undefined
  /** The ssh settings of the node tunnels (with `hosts` or `slurm`). */
  readonly nodeSsh?: NodeSshSettings | undefined
  /** The command that runs ipp-tunnel's CLI on the nodes (default: node and this package's bin/ipp-tunnel.js). */
  readonly ippTunnel?: readonly string[] | undefined
  /** Environment of the engines and launchers, and where `IPP_CONNECTION_INFO` is read (default: this process's). */
  readonly env?: NodeJS.ProcessEnv | undefined
  /** Whether this runs as root (OpenMPI then needs its allow-root variables); default: asks the process. */
  readonly root?: boolean | undefined
  /** Aborting it is {@link SupervisedEngines.stop}. */
  readonly signal?: AbortSignal | undefined
}

/**
 * Events of {@link SupervisedEngines}. `index` is the process we started (an mpiexec launch is one process carrying every
 * rank); `id` is the engine id the controller gave.
 */
export interface SupervisedEnginesEvents {
  /** The engine file's tunnel is open (`direct`: the file is on this host's loopback, none is needed). */
  ready: [{ out: string; direct: boolean; tunnel: Tunnel | undefined; sshFrom?: string }]
  /** The file's warnings; under Slurm, engine job steps still there after `scancel`. */
  warning: [{ message: string }]
  /** A query to the hub failed (it is retried). */
  'hub-error': [{ error: Error }]
  'node-ready': [NodeReady]
  /** Any other JSON event a node tunnel printed (`reconnecting`, `reconnected`, `error`, `warning`…). */
  'node-event': [{ rank: number; host: string; event: Record<string, unknown> }]
  /** A line of the node tunnels' launcher that is not an event (`host` undefined: the launcher's own). */
  'node-output': [{ host: string | undefined; line: string }]
  'engine-started': [{ index: number; pid: number; argv: readonly string[] }]
  'engine-registered': [{ index: number; id: number }]
  /** The controller lists all `n` engines, `ms` after launch; across nodes, the engine ids of each node. */
  registered: [{ ids: readonly number[]; ms: number; nodes?: Record<string, number[]> }]
  /**
   * One line an engine printed, with the HMAC key redacted; across nodes, the MPI/Slurm `rank` that printed it.
   * `routine`: the engines' INFO/DEBUG logging, which the CLI shows only with `--verbose`.
   */
  'engine-output': [{ index: number; rank: number | undefined; text: string; routine: boolean }]
  /** A process could not be started at all (the same for each of them). */
  'engine-error': [{ index: number; error: IppTunnelError }]
  'engine-exited': [EngineExit]
  /** After a stop: the controller lists none of our engines, or these; `ms` after {@link SupervisedEngines.stop}. */
  unregistered: [{ remaining: readonly number[]; ms?: number }]
}

/** How the engines ended, once everything is stopped and closed. */
export interface EnginesEnding {
  /** `stopped` by {@link SupervisedEngines.stop}; `exited`: every engine ended on its own; `link-failed`: the link gave up. */
  readonly reason: 'stopped' | 'exited' | 'link-failed'
  readonly exits: readonly EngineExit[]
  /**
   * Set when this is a failure: the link's (or the node tunnels') error; `E_ENGINE_EXIT` when engines died on their
   * own; `E_SPAWN` when none could be started.
   */
  readonly error?: Error
}

/**
 * The hub drops our engines the moment we stop (see EngineGroup.stop), so an engine still winding Python
 * down after 1 s (it takes 1–2 s on a busy host) is SIGKILLed; then at most 1 s for the hub to confirm.
 */
const STOP = { killAfterMs: 1000, unregisterMs: 1000 } as const

const BIN = fileURLToPath(new URL('../../../bin/ipp-tunnel.js', import.meta.url))

/**
 * N engines on a controller's engine file, supervised: the file tunnelled through its ssh server (one connection),
 * node tunnels for engines on other hosts, registration as the hub reports it, and a stop in order (engines, hub
 * told, node tunnels, tunnel, files). Created by {@link startEngines}.
 */
export class SupervisedEngines extends EventEmitter<SupervisedEnginesEvents> {
  readonly #options: StartEnginesOptions
  readonly #abort = new AbortController()
  readonly #engineFile = new EngineFile()
  readonly #done: Promise<EnginesEnding>
  #resolveStopped: () => void = () => undefined
  readonly #stopped = new Promise<void>((resolve) => (this.#resolveStopped = resolve))
  #file: string | undefined
  #group: EngineGroup | undefined
  #nodes: NodeTunnels | undefined
  #stopAt: number | undefined

  constructor(options: StartEnginesOptions) {
    super()
    this.#options = options
    // Start on the next tick so that callers can attach listeners first.
    this.#done = new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.#run())
    this.#done.catch(() => undefined)
    const { signal } = options
    if (signal?.aborted === true) void this.stop(signal.reason)
    else signal?.addEventListener('abort', () => void this.stop(signal.reason), { once: true })
  }

  /** How events name the engine file (its path, `IPP_CONNECTION_INFO`, a copy's name), once it is open. */
  get file(): string | undefined {
    return this.#file
  }

  /** Engine ids the controller lists for our engines. */
  get ids(): number[] {
    return this.#group?.ids ?? []
  }

  /**
   * Resolves once the engines ended and everything is closed, with how; rejects when the start failed (after
   * undoing it), e.g. `E_USAGE`, `E_CONNFILE_*`, `E_SPAWN`, `E_NODE`, or what opening the tunnel throws.
   */
  get done(): Promise<EnginesEnding> {
    return this.#done
  }

  /**
   * Stops the engines (SIGTERM, SIGKILL after 1 s; the hub is told at once to drop them), then the node tunnels,
   * the tunnel, and removes every file; a start in progress is abandoned. Resolves when all is done (see
   * {@link done} for how it ended); never rejects. Safe to call twice.
   */
  stop(reason?: unknown): Promise<void> {
    if (this.#stopAt === undefined) {
      this.#stopAt = performance.now()
      this.#resolveStopped()
      this.#abort.abort(
        reason instanceof Error ? reason : new IppTunnelError('E_CLOSED', 'stopped while starting'),
      )
      // ipengine ignores SIGINT: SIGTERM (mpiexec passes it on to its ranks).
      void this.#group?.stop('SIGTERM', STOP)
      if (this.#group === undefined) void this.#nodes?.close()
    }
    return this.#done.then(
      () => undefined,
      () => undefined,
    )
  }

  /** Same as {@link stop}. */
  close(): Promise<void> {
    return this.stop()
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop()
  }

  /**
   * SIGKILLs every engine and node tunnel and removes our private files at once, synchronously: for a process
   * that is exiting now (a second Ctrl-C).
   */
  killNow(): void {
    this.#group?.killNow()
    this.#nodes?.killNow()
    this.#engineFile.removeNow()
  }

  async #run(): Promise<EnginesEnding> {
    const o = this.#options
    const env = o.env ?? process.env
    const root = o.root ?? process.getuid?.() === 0
    const mpi = o.mpi ?? false
    const signal = this.#abort.signal
    const launch = {
      n: o.n,
      mpi,
      ...(o.engineCommand !== undefined && { engineCommand: o.engineCommand }),
      ...(o.mpiexec !== undefined && { mpiexec: o.mpiexec }),
      extraArgs: o.extraArgs ?? [],
    }
    let launchOn: NodeLaunch | undefined
    try {
      const where = await nodesOf({ hosts: o.hosts, slurm: o.slurm, mpi, env })
      const named = o.copy?.text ?? o.file ?? CONNECTION_INFO_ENV
      const [program] = engineArgvs({ ...launch, file: named })[0] ?? [] // bad command lines fail here, before any connection
      if (program !== undefined) await findProgram(program, env.PATH)
      if (where !== undefined && (o.file === undefined || o.copy !== undefined)) {
        throw new IppTunnelError(
          'E_USAGE',
          `--host, --hostfile and --slurm: each node reads a local engine file; ${o.copy === undefined ? `write $${CONNECTION_INFO_ENV} to one on a filesystem they share` : `${o.copy.text} is on an ssh server`}`,
        )
      }
      const opened = await this.#engineFile.open({ ...o, env, acrossNodes: where !== undefined }, signal, {
        onNamed: (file) => (this.#file = file),
        onWarning: (message) => this.emit('warning', { message }),
        onReady: (e) => this.emit('ready', e),
      })
      if (where !== undefined) {
        launchOn = startAcross(where, {
          file: opened.file,
          ippTunnel: o.ippTunnel ?? [process.execPath, BIN],
          ssh: o.nodeSsh ?? {},
          mpi,
          mpiexec: o.mpiexec,
          root,
          env,
        })
        this.#followNodes((this.#nodes = launchOn.tunnels))
        await launchOn.tunnels.ready(signal)
      }
      // mpiexec launches its daemons with srun: a step of that name too (see settleEngineSteps).
      const engineEnv =
        where?.slurmNodes !== undefined && mpi
          ? {
              ...env,
              OMPI_MCA_plm_slurm_args: env.OMPI_MCA_plm_slurm_args ?? `--job-name=${ENGINE_STEP_NAME}`,
            }
          : env
      const group = (this.#group = launchEngines({
        ...launch,
        root,
        env: engineEnv,
        file: opened.out,
        ...launchOn?.across,
        ...(opened.hub !== undefined && { hub: opened.hub }),
      }))
      launchOn?.follow(group)
      const spawnError = this.#followGroup(group, launchOn, [opened.info.key])
      return await this.#supervise(group, opened.linkFailed, spawnError)
    } catch (err) {
      if (this.#group !== undefined) await this.#group.stop('SIGTERM', STOP)
      if (this.#group !== undefined && o.slurm === true) await this.#settle(env)
      await this.#nodes?.close()
      throw err
    } finally {
      await this.#nodes?.close()
      await this.#engineFile.close()
    }
  }

  /** Waits for a stop, the engines' end or the link's failure; then stops in order. */
  async #supervise(
    group: EngineGroup,
    linkFailed: Promise<Error>,
    spawnError: () => IppTunnelError | undefined,
  ): Promise<EnginesEnding> {
    const nodes = this.#nodes
    const nodesEnded = new Promise<Error>((resolveEnded) => {
      void nodes?.exited.then(({ code, signal }) => {
        const how = signal !== null ? signal : `status ${String(code)}`
        resolveEnded(new IppTunnelError('E_NODE', `the node tunnels ended (${how}); their output is above`))
      })
    })
    type Ending = { reason: 'stopped' | 'exited' } | { reason: 'link-failed'; error: Error }
    const ending = await Promise.race<Ending>([
      this.#stopped.then(() => ({ reason: 'stopped' })),
      group.done.then(() => ({ reason: 'exited' })),
      linkFailed.then((error) => ({ reason: 'link-failed', error })),
      nodesEnded.then((error) => ({ reason: 'link-failed', error })),
    ])
    // Also after the engines exited on their own: the hub is told before the tunnels close.
    const exits = await group.stop('SIGTERM', STOP)
    const env = this.#options.env ?? process.env
    if (this.#options.slurm === true) await this.#settle(env)
    await this.#nodes?.close()
    await this.#engineFile.close()
    if (ending.reason === 'link-failed') return { ...ending, exits }
    const died = exits.filter((e) => !e.stopped && (e.code !== 0 || e.signal !== null))
    const first = died[0]
    if (first === undefined) return { reason: ending.reason, exits }
    if (died.every((e) => e.pid === 0)) {
      const error = spawnError() ?? new IppTunnelError('E_SPAWN', 'no engine process could be started')
      return { reason: ending.reason, exits, error }
    }
    const how = first.signal === null ? `status ${String(first.code)}` : first.signal
    const error = new IppTunnelError(
      'E_ENGINE_EXIT',
      `${String(died.length)} of ${String(exits.length)} engine processes died on their own (first: process #${String(first.index)}, ${how}); their output is above`,
    )
    return { reason: ending.reason, exits, error }
  }

  async #settle(env: NodeJS.ProcessEnv): Promise<void> {
    await settleSteps(env, (message) => this.emit('warning', { message }))
  }

  #followNodes(nodes: NodeTunnels): void {
    nodes.on('node-ready', (e) => this.emit('node-ready', e))
    nodes.on('node-event', (e) => this.emit('node-event', e))
    nodes.on('node-output', (e) =>
      this.emit('node-output', {
        host: e.rank === undefined ? undefined : nodes.hostOf(e.rank),
        line: e.line,
      }),
    )
  }

  /** Passes the group's events on; returns the first spawn failure, if any. */
  #followGroup(
    group: EngineGroup,
    launchOn: NodeLaunch | undefined,
    secrets: readonly string[],
  ): () => IppTunnelError | undefined {
    group.on('engine-started', (e) => this.emit('engine-started', e))
    group.on('engine-registered', (e) => this.emit('engine-registered', e))
    group.on('registered', (e) =>
      this.emit('registered', {
        ids: e.ids,
        ms: Math.round(performance.now() - group.startedAt),
        ...(launchOn !== undefined && { nodes: launchOn.nodesOf(e.ids) }),
      }),
    )
    group.on('engine-output', (e) => {
      // Across hosts, mpiexec tags each line with its rank (--tag-output).
      const tagged = launchOn === undefined ? undefined : parseTagged(e.line)
      const text = tagged?.text ?? e.line
      const routine = isRoutineLog(text) || text.startsWith('ipp-tunnel-node ')
      this.emit('engine-output', {
        index: e.index,
        rank: tagged?.rank,
        text: redactLine(text, secrets),
        routine,
      })
    })
    let spawnError: IppTunnelError | undefined
    group.on('engine-error', (e) => {
      spawnError ??= e.error
      this.emit('engine-error', e)
    })
    group.on('engine-exited', (e) => this.emit('engine-exited', e))
    group.on('unregistered', (e) => {
      const since = this.#stopAt
      this.emit('unregistered', {
        remaining: e.remaining,
        ...(since !== undefined && { ms: Math.round(performance.now() - since) }),
      })
    })
    group.on('hub-error', (e) => this.emit('hub-error', e))
    return () => spawnError
  }
}

/**
 * Starts N engines on a controller's engine file and supervises them until {@link SupervisedEngines.stop} (what
 * `ipp-tunnel engines` runs). Starts on the next tick: attach listeners first.
 *
 * @example
 * const engines = startEngines({ file: 'ipcontroller-engine.json', n: 2 })
 * engines.on('registered', ({ ids }) => console.log('the controller lists engines', ids))
 * // … later
 * await engines.stop()
 * @throws never: start failures reject {@link SupervisedEngines.done}.
 */
export function startEngines(options: StartEnginesOptions): SupervisedEngines {
  return new SupervisedEngines(options)
}
