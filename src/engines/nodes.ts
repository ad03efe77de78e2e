import { spawn, type ChildProcess } from 'node:child_process'
import { EventEmitter } from 'node:events'
import { readFile } from 'node:fs/promises'
import { createInterface } from 'node:readline'

import { IppTunnelError } from '../errors/index.js'
import { hostProblem } from '../ssh/index.js'
import { mpiEnvironment, splitCommand } from './command.js'
import { NODE_STEP_NAME } from './slurm.js'

/** Where engines run across hosts: OpenMPI's `--host a:4,b:4` or `--hostfile PATH`. */
export type HostList =
  { readonly kind: 'host'; readonly value: string } | { readonly kind: 'hostfile'; readonly path: string }

/** The mpiexec arguments that name a {@link HostList}. */
export function hostArgs(hosts: HostList): string[] {
  return hosts.kind === 'host' ? ['--host', hosts.value] : ['--hostfile', hosts.path]
}

/**
 * The distinct node names of a host list, in order: `a:4,b:4` (OpenMPI's `--host`), or the first word of every
 * line of a hostfile that is not blank or a `#` comment (`a slots=4`).
 *
 * @example await nodeNames({ kind: 'host', value: 'a:2,b:2,a:1' }) // ['a', 'b']
 * @throws IppTunnelError `E_USAGE` for an empty list, an unreadable hostfile, or a name that is not a plain host
 * name or address.
 */
export async function nodeNames(hosts: HostList): Promise<string[]> {
  let names: string[]
  if (hosts.kind === 'host') {
    names = hosts.value.split(',').map((h) => h.trim().replace(/:\d+$/, ''))
  } else {
    let text: string
    try {
      text = await readFile(hosts.path, 'utf8')
    } catch (cause) {
      throw new IppTunnelError('E_USAGE', `--hostfile ${hosts.path}: cannot read it`, { cause })
    }
    names = text.split('\n').map((line) => line.replace(/#.*/, '').trim().split(/\s+/)[0] ?? '')
  }
  const unique = [...new Set(names.filter((n) => n !== ''))]
  const what = hosts.kind === 'host' ? '--host' : `--hostfile ${hosts.path}`
  if (unique.length === 0) throw new IppTunnelError('E_USAGE', `${what} names no host`)
  // mpiexec hands each name to ssh (or its own launcher) on a command line
  for (const name of unique) {
    const problem = hostProblem(name)
    if (problem !== undefined) {
      const shown = JSON.stringify(name.length > 40 ? `${name.slice(0, 40)}…` : name)
      throw new IppTunnelError('E_USAGE', `${what}: node ${shown} is not a host name or address: ${problem}`)
    }
  }
  return unique
}

/** Stands for the node's own loopback file in an engine command run by {@link nodeEngineWrapper}. */
export const NODE_FILE = '@IPP_TUNNEL_NODE_FILE@'

/**
 * A `/bin/sh` prefix for each rank's engine command: prints `ipp-tunnel-node HOSTNAME` (which node this rank is
 * on), then runs the command with {@link NODE_FILE} replaced by `JOB_DIR/HOSTNAME/NAME`, the file the node
 * tunnel on that node wrote. No program of ours runs per rank.
 *
 * @example [...nodeEngineWrapper(jobDir, 'ipcontroller-engine.json'), python, '-m', 'ipyparallel.engine', `--file=${NODE_FILE}`]
 */
export function nodeEngineWrapper(jobDir: string, name: string): string[] {
  const script = [
    'h=$(uname -n); f="$0/$h/$1"; shift; echo "ipp-tunnel-node $h" >&2',
    'n=$#; while [ "$n" -gt 0 ]; do a=$1; shift',
    `case $a in *${NODE_FILE}*) a="\${a%%${NODE_FILE}*}$f\${a#*${NODE_FILE}}";; esac`,
    'set -- "$@" "$a"; n=$((n-1)); done; exec "$@"',
  ].join('\n')
  return ['/bin/sh', '-c', script, jobDir, name]
}

/**
 * The rank of a line tagged by OpenMPI's `--tag-output` (`[1,3]<stderr>:text`) or Slurm's `srun --label`
 * (`3: text`; its stream is then unknown, `''`).
 */
export function parseTagged(line: string): { rank: number; stream: string; text: string } | undefined {
  const m = /^\[\d+,(\d+)\]<(stdout|stderr)>:(.*)$/.exec(line)
  if (m !== null) return { rank: Number(m[1]), stream: m[2] ?? '', text: m[3] ?? '' }
  const label = /^\s*(\d+): (.*)$/.exec(line)
  if (label !== null) return { rank: Number(label[1]), stream: '', text: label[2] ?? '' }
  return undefined
}

/**
 * Inside a Slurm allocation: `srun` runs one task per allocated node (`--overlap`, so the engines' step can
 * share the nodes' CPUs), each line labelled with its task.
 */
export function slurmNodeLauncher(nodes: number, srun = 'srun'): string[] {
  const n = String(nodes)
  return [
    ...splitCommand(srun, '--srun'),
    '--overlap',
    '--nodes',
    n,
    '--ntasks',
    n,
    '--ntasks-per-node=1',
    `--job-name=${NODE_STEP_NAME}`,
    '--label',
    '--input=all',
  ]
}

/** One node tunnel, as its `node-ready` line described it. */
export interface NodeReady {
  readonly rank: number
  readonly host: string
  readonly ms: number
  readonly out: string
  readonly forwards: readonly unknown[]
}

/** Events of {@link NodeTunnels}. */
export interface NodeTunnelsEvents {
  'node-ready': [NodeReady]
  /** Any other JSON event a node tunnel printed (`reconnecting`, `reconnected`, `error`…), with its node. */
  'node-event': [{ rank: number; host: string; event: Record<string, unknown> }]
  /** A line that was not an event (mpiexec's own messages, a node tunnel's stderr). */
  'node-output': [{ rank: number | undefined; line: string }]
  exited: [{ code: number | null; signal: NodeJS.Signals | null }]
}

/** Options of {@link startNodeTunnels}. */
export interface NodeTunnelsOptions {
  /** The hosts for mpiexec; ignored with {@link NodeTunnelsOptions.launcher}. */
  readonly hosts?: HostList
  /** The whole launcher argv before the command (e.g. {@link slurmNodeLauncher}); default: mpiexec. */
  readonly launcher?: readonly string[]
  /** The distinct nodes of {@link NodeTunnelsOptions.hosts} (one node tunnel each). */
  readonly nodes: readonly string[]
  /** The `ipp-tunnel node-tunnel …` argv (absolute paths) each node runs. */
  readonly command: readonly string[]
  /** MPI launcher command line (default `mpiexec`). */
  readonly mpiexec?: string
  readonly env?: NodeJS.ProcessEnv
  readonly root?: boolean
  /**
   * Stop the node tunnels by closing their stdin (the command then takes `--until-eof`), not by a signal to
   * the launcher: srun cancels its step on SIGTERM, SIGKILLing the tasks before they can remove their files.
   */
  readonly stopByEof?: boolean
}

/**
 * One node tunnel per node, started by one `mpiexec --map-by ppr:1:node` kept running: each rank is
 * `ipp-tunnel node-tunnel`, which prints JSON events (`node-ready` first) that mpiexec forwards tagged with the
 * rank. Rank `i` runs on node `i` of the host list.
 *
 * @example
 * const tunnels = startNodeTunnels({ hosts, nodes, command })
 * await tunnels.ready(signal)
 * await tunnels.close()
 */
export class NodeTunnels extends EventEmitter<NodeTunnelsEvents> {
  readonly #child: ChildProcess
  readonly #nodes: readonly string[]
  readonly #ready = new Map<number, NodeReady>()
  readonly #exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  #failure: IppTunnelError | undefined
  #closing: Promise<void> | undefined
  #closed = false
  readonly #stopByEof: boolean

  constructor(options: NodeTunnelsOptions) {
    super()
    this.#stopByEof = options.stopByEof ?? false
    this.#nodes = options.nodes
    const launcher = options.launcher ?? [
      ...splitCommand(options.mpiexec ?? 'mpiexec', '--mpiexec'),
      ...(options.hosts === undefined ? [] : hostArgs(options.hosts)),
      '--map-by',
      'ppr:1:node',
      '-n',
      String(options.nodes.length),
      '--tag-output',
    ]
    const argv = [...launcher, ...options.command]
    const [program, ...args] = argv
    this.#child = spawn(program ?? 'mpiexec', args, {
      env: mpiEnvironment(options.env ?? process.env, options.root ?? false),
      detached: true,
      stdio: [this.#stopByEof ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    })
    this.#child.stdin?.on('error', () => undefined)
    this.#exited = new Promise((resolve) => {
      this.#child.once('close', (code: number | null, signal: NodeJS.Signals | null) => {
        this.#closed = true
        this.emit('exited', { code, signal })
        resolve({ code, signal })
      })
      this.#child.once('error', (cause) => {
        this.#failure = new IppTunnelError(
          'E_SPAWN',
          `cannot run ${program ?? 'mpiexec'}: ${cause.message}`,
          {
            cause,
          },
        )
        this.#closed = true
        resolve({ code: 127, signal: null })
      })
    })
    for (const stream of [this.#child.stdout, this.#child.stderr]) {
      if (stream !== null)
        createInterface({ input: stream, crlfDelay: Infinity }).on('line', (l) => this.#line(l))
    }
  }

  /** The node of rank `rank`: the host name it reported, else its entry in the host list. */
  hostOf(rank: number): string {
    return this.#ready.get(rank)?.host ?? this.#nodes[rank] ?? `rank ${String(rank)}`
  }

  /** The nodes ready so far, by rank. */
  get nodes(): NodeReady[] {
    return [...this.#ready.values()].sort((a, b) => a.rank - b.rank)
  }

  #line(line: string): void {
    const tagged = parseTagged(line)
    if (tagged !== undefined && tagged.stream !== 'stderr' && tagged.text.startsWith('{')) {
      let event: Record<string, unknown>
      try {
        event = JSON.parse(tagged.text) as Record<string, unknown>
      } catch {
        this.emit('node-output', { rank: tagged.rank, line: tagged.text })
        return
      }
      const { rank } = tagged
      if (event.event === 'node-ready') {
        const ready: NodeReady = {
          rank,
          host: typeof event.host === 'string' ? event.host : (this.#nodes[rank] ?? ''),
          ms: Number(event.ms),
          out: String(event.out),
          forwards: Array.isArray(event.forwards) ? (event.forwards as unknown[]) : [],
        }
        this.#ready.set(rank, ready)
        this.emit('node-ready', ready)
        return
      }
      if (event.event === 'error' && this.#failure === undefined) {
        const where = this.#nodes[rank] ?? this.hostOf(rank)
        this.#failure = new IppTunnelError(
          'E_NODE',
          `node ${where}: its tunnel failed: ${String(event.message)}${typeof event.code === 'string' ? ` (${event.code})` : ''}`,
        )
      }
      this.emit('node-event', { rank, host: this.hostOf(rank), event })
      return
    }
    this.emit('node-output', { rank: tagged?.rank, line: tagged?.text ?? line })
  }

  /**
   * Resolves once every node printed `node-ready`; rejects with `E_NODE` naming the first node whose tunnel
   * failed (or `E_NODE` naming the nodes not ready when mpiexec ended first), or when `signal` aborts.
   */
  async ready(signal?: AbortSignal): Promise<NodeReady[]> {
    if (this.#ready.size === this.#nodes.length) return this.nodes
    const all = new Promise<void>((resolve) => {
      const onReady = () => {
        if (this.#ready.size < this.#nodes.length) return
        this.off('node-ready', onReady)
        resolve()
      }
      this.on('node-ready', onReady)
    })
    const aborted = new Promise<never>((_, reject) => {
      if (signal === undefined) return
      const onAbort = () => reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'))
      if (signal.aborted) onAbort()
      else signal.addEventListener('abort', onAbort, { once: true })
    })
    const ended = this.#exited.then(({ code, signal: sig }) => {
      if (this.#failure !== undefined) throw this.#failure
      const missing = this.#nodes.filter((_, rank) => !this.#ready.has(rank))
      const how = sig !== null ? sig : `status ${String(code)}`
      throw new IppTunnelError(
        'E_NODE',
        `the node tunnels' mpiexec ended (${how}) before ${missing.length > 0 ? `node ${missing.join(', ')} was` : 'all nodes were'} ready; its output is above`,
      )
    })
    await Promise.race([all, ended, aborted])
    return this.nodes
  }

  /** How mpiexec ended, once it has. */
  get exited(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.#exited
  }

  /**
   * SIGTERM to mpiexec (which passes it to every node tunnel: each closes its connection and removes its file),
   * SIGKILL to its process group after `killAfterMs`. Safe to call twice.
   */
  close(options: { killAfterMs?: number } = {}): Promise<void> {
    this.#closing ??= (async () => {
      const pid = this.#child.pid
      if (pid === undefined || this.#closed) return
      const killAfterMs = options.killAfterMs ?? 5000
      const timers: NodeJS.Timeout[] = []
      if (this.#stopByEof) {
        this.#child.stdin?.end()
        timers.push(setTimeout(() => signalGroup(pid, 'SIGTERM'), killAfterMs))
        timers.push(setTimeout(() => signalGroup(pid, 'SIGKILL'), 2 * killAfterMs))
      } else {
        signalGroup(pid, 'SIGTERM')
        timers.push(setTimeout(() => signalGroup(pid, 'SIGKILL'), killAfterMs))
      }
      for (const timer of timers) timer.unref()
      await this.#exited
      for (const timer of timers) clearTimeout(timer)
      signalGroup(pid, 'SIGKILL')
    })()
    return this.#closing
  }

  /** SIGKILLs mpiexec's process group at once, synchronously (for a process that is exiting now). */
  killNow(): void {
    const pid = this.#child.pid
    if (pid !== undefined) signalGroup(pid, 'SIGKILL')
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal)
  } catch {
    // gone already
  }
}

/**
 * Starts one node tunnel per node (see {@link NodeTunnels}).
 *
 * @example
 * await using tunnels = startNodeTunnels({ hosts: { kind: 'host', value: 'a:2,b:2' }, nodes: ['a', 'b'], command })
 * await tunnels.ready()
 */
export function startNodeTunnels(options: NodeTunnelsOptions): NodeTunnels {
  return new NodeTunnels(options)
}
