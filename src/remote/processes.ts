import { PassThrough, type Readable } from 'node:stream'
import { IppTunnelError, type ErrorCode } from '../errors/index.js'
import type { RemoteCommand, RemoteExit } from '../ssh/index.js'
import {
  DEFAULT_REMOTE_DIR,
  supervisorCommand,
  type RemoteExecutor,
  type SupervisorOptions,
} from './command-line.js'
import type { KeptSupervisor } from './kept.js'

/** A process to start on the ssh server. */
export interface RemoteProcessSpec {
  /** Its name among this user's remote processes: letters, digits, `.`, `_`, `-` (at most 64, not first). */
  readonly name: string
  /** Program and arguments, run as they are (no shell); `{dir}` in them is the process's private directory. */
  readonly argv: readonly string[]
  /**
   * Files written (0600) into the process's private directory before it starts, by name (`kernel.json`), `{dir}`
   * in them replaced as in `argv`: how a secret such as a kernel's key reaches the server without appearing on a
   * command line.
   */
  readonly files?: Readonly<Record<string, string>>
  /** Working directory; default the remote home. */
  readonly cwd?: string
  /** Added to the supervisor's environment (which `setup` prepared). */
  readonly env?: Readonly<Record<string, string>>
  /**
   * How long it runs with no one attached before the supervisor stops it (the lease); default: until `stop()`.
   * An attached {@link RemoteAttachment} renews the lease every `heartbeatMs`.
   */
  readonly persistSeconds?: number
  /** Between SIGTERM and SIGKILL when it is stopped; default 5 s. */
  readonly graceSeconds?: number
  /**
   * Stop a process of the same name first (on this node; one command instead of `stop` + `start`), as a restarted
   * kernel's launcher does; without it such a process is `E_REMOTE_EXISTS`.
   */
  readonly replace?: boolean
}

/** A remote node: its host name and boot id (a pid means something only on the same node and boot). */
export interface RemoteNode {
  readonly host: string
  readonly bootId: string
}

/**
 * A remote process as its supervisor reports it. `running`, `exited` (its exit is kept until `stop()` or the lease
 * runs out), `stale` (its supervisor is gone: killed, or the node rebooted), `elsewhere` (started on another node
 * than the one this command reached, e.g. behind a round-robin login alias), `none`.
 */
export interface RemoteProcessState {
  readonly name: string
  readonly state: 'running' | 'exited' | 'stale' | 'elsewhere' | 'none'
  readonly node?: RemoteNode
  readonly pid?: number
  readonly startedAt?: Date
  readonly persistSeconds?: number | null
  readonly exit?: { readonly code?: number; readonly signal?: number }
  /** Seconds since the lease was last renewed. */
  readonly leaseAgeSeconds?: number
  readonly argv?: readonly string[]
  /** The process's private directory on the server. */
  readonly dir?: string
}

/** Options of {@link RemoteProcesses}. */
export interface RemoteProcessesOptions extends SupervisorOptions {
  /** The remote directory of the processes' state (0700, checked there); default `~/.ipp-tunnel/remote`. */
  readonly dir?: string
  /**
   * A supervisor kept on the link (run with the same `python` and `setup`): every verb but `attach` and `waitFile`
   * goes through it, one round trip each, instead of a command of its own. Not closed by this.
   */
  readonly kept?: KeptSupervisor
}

const MARK = '@@ipp-tunnel@@ '
/** The most a verb's answer (and what a login shell prints before it) may hold. */
const MAX_ANSWER_BYTES = 1 << 20
const remoteCodes: ReadonlySet<string> = new Set<ErrorCode>([
  'E_REMOTE_EXISTS',
  'E_REMOTE_GONE',
  'E_REMOTE_NODE',
  'E_UNSAFE_PATH',
  'E_USAGE',
  'E_SPAWN',
  'E_TIMEOUT',
])

type Answer = Record<string, unknown>

function collect(stream: Readable, limit: number): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = []
    let size = 0
    stream.on('data', (chunk: Buffer) => {
      if (size >= limit) return
      chunks.push(chunk)
      size += chunk.length
    })
    stream.once('close', () => resolve(Buffer.concat(chunks).toString('utf8')))
    stream.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
  })
}

function lastAnswer(text: string): Answer | undefined {
  const at = text.lastIndexOf(MARK)
  if (at < 0) return undefined
  const line = text.slice(at + MARK.length).split('\n', 1)[0] ?? ''
  try {
    const value: unknown = JSON.parse(line)
    return typeof value === 'object' && value !== null ? (value as Answer) : undefined
  } catch {
    return undefined
  }
}

function tail(text: string): string {
  const lines = text.trim().split('\n')
  return lines.slice(-3).join(' / ').slice(-400)
}

function stateOf(a: Answer): RemoteProcessState {
  const { pid, started, persist, lease_age: leaseAge } = a
  const exit = a.exit as RemoteProcessState['exit']
  return {
    name: String(a.name),
    state: a.state as RemoteProcessState['state'],
    ...(typeof a.host === 'string' && {
      node: { host: a.host, bootId: typeof a.boot_id === 'string' ? a.boot_id : '' },
    }),
    ...(typeof pid === 'number' && { pid }),
    ...(typeof started === 'number' && { startedAt: new Date(started * 1000) }),
    ...('persist' in a && { persistSeconds: typeof persist === 'number' ? persist : null }),
    ...(exit !== undefined && { exit }),
    ...(typeof leaseAge === 'number' && { leaseAgeSeconds: leaseAge }),
    ...(Array.isArray(a.argv) && { argv: a.argv.map(String) }),
    ...(typeof a.dir === 'string' && { dir: a.dir }),
  }
}

/**
 * Processes on the ssh server that outlive the link: each runs under a small supervisor of ours (detached, in a
 * session of its own), with its state, output and lease in `DIR/NAME/` (0700) on the server. The supervisor — not
 * this side — stops the process when no one renewed its lease for `persistSeconds`, so a suspended laptop keeps
 * its kernel and a vanished one leaves nothing behind. Every verb is one command over the link (no new login); a
 * pid is acted on only on the node and boot that started it, and only while its supervisor, an unreaped parent,
 * still lives.
 *
 * @example
 * const procs = new RemoteProcesses(link, { setup: 'module load python' })
 * await procs.start({ name: 'k1', argv: ['python3', '-m', 'ipykernel_launcher', '-f', file], persistSeconds: 1800 })
 * const attached = await procs.attach('k1')
 * attached.stderr.pipe(process.stderr)
 * await procs.stop('k1')
 */
export class RemoteProcesses {
  readonly dir: string
  readonly #executor: RemoteExecutor
  readonly #options: SupervisorOptions
  readonly #kept: KeptSupervisor | undefined

  constructor(executor: RemoteExecutor, options: RemoteProcessesOptions = {}) {
    this.#executor = executor
    this.#kept = options.kept
    this.dir = options.dir ?? DEFAULT_REMOTE_DIR
    this.#options = {
      ...(options.python !== undefined && { python: options.python }),
      ...(options.setup !== undefined && { setup: options.setup }),
    }
  }

  /** The node a command lands on now (host name, boot id): record it at start, compare it on reconnect. */
  async node(options: { signal?: AbortSignal } = {}): Promise<RemoteNode> {
    const a = await this.#call('node', [], undefined, options.signal)
    return { host: String(a.host), bootId: String(a.boot_id) }
  }

  /**
   * The remote python's version and path, and the version of each module it can import (`null`: cannot import;
   * `''`: imported, no `__version__`), after `setup`.
   */
  async modules(
    names: readonly string[],
    options: {
      signal?: AbortSignal
      /** Read from the installed distribution's metadata where there is one beside the package, not imported. */
      installed?: boolean
    } = {},
  ): Promise<{
    python: string
    executable: string
    modules: Record<string, string | null>
    /** Where IPython keeps its profiles there: `$IPYTHONDIR`, else `~/.ipython` (absolute). */
    ipythonDir: string
  }> {
    const a = await this.#call(
      options.installed === true ? 'installed' : 'modules',
      names,
      undefined,
      options.signal,
    )
    return {
      python: String(a.python),
      executable: String(a.executable),
      modules: a.modules as Record<string, string | null>,
      ipythonDir: String(a.ipython_dir),
    }
  }

  /**
   * Starts `spec` detached under a supervisor; resolves once it runs (state `running`, with its node and pid).
   * @throws IppTunnelError `E_REMOTE_EXISTS` when a process of that name is running or exited and not yet stopped;
   *   `E_SPAWN` when its program cannot be started; `E_REMOTE` when the supervisor cannot run (no python, …).
   */
  async start(spec: RemoteProcessSpec, options: { signal?: AbortSignal } = {}): Promise<RemoteProcessState> {
    const body = JSON.stringify({
      argv: spec.argv,
      ...(spec.cwd !== undefined && { cwd: spec.cwd }),
      ...(spec.env !== undefined && { env: spec.env }),
      ...(spec.files !== undefined && { files: spec.files }),
      persist: spec.persistSeconds ?? null,
      grace: spec.graceSeconds ?? 5,
      ...(spec.replace === true && { replace: true }),
    })
    return stateOf(await this.#call('start', [this.dir, spec.name], body, options.signal))
  }

  /** What the supervisor of `name` says now (state `none` when there is no such process). */
  async status(name: string, options: { signal?: AbortSignal } = {}): Promise<RemoteProcessState> {
    return stateOf(await this.#call('status', [this.dir, name], undefined, options.signal))
  }

  /** Every remote process of this user in {@link RemoteProcesses.dir}. */
  async list(options: { signal?: AbortSignal } = {}): Promise<RemoteProcessState[]> {
    const a = await this.#call('list', [this.dir], undefined, options.signal)
    return (a.processes as Answer[]).map(stateOf)
  }

  /**
   * Waits until the process has written `file` in its private directory as a JSON object in which every one of `keys`
   * is a positive integer (a kernel that wrote back the ports it bound), on the server, and resolves with its text
   * and the text of each of `also` there (files written before it). Unparsed: the caller validates what it reads.
   * @throws IppTunnelError `E_SPAWN` when the process ended first (the end of its stderr in the message),
   *   `E_REMOTE_GONE` when there is no such process; an abort of `signal` ends the wait on both sides.
   */
  async waitFile(
    name: string,
    file: string,
    options: { keys: readonly string[]; also?: readonly string[]; signal?: AbortSignal },
  ): Promise<{ text: string; also: Record<string, string> }> {
    const a = await this.#call(
      'wait-file',
      [this.dir, name, file, options.keys.join(','), ...(options.also ?? [])],
      undefined,
      options.signal,
      { holdStdin: true },
    )
    const also: Record<string, string> = {}
    if (typeof a.also === 'object' && a.also !== null) {
      for (const [k, v] of Object.entries(a.also)) if (typeof v === 'string') also[k] = v
    }
    return { text: typeof a.text === 'string' ? a.text : '', also }
  }

  /**
   * Waits, on the server (no round trip per look), until the process has bound every one of `sockets` (unix
   * sockets in its private directory, by name: a kernel's channels); resolves then.
   * @throws IppTunnelError `E_SPAWN` when the process ended first (the end of its stderr in the message),
   *   `E_REMOTE_GONE`, `E_TIMEOUT` after `timeoutSeconds` (default 120).
   */
  async waitSockets(
    name: string,
    sockets: readonly string[],
    options: { timeoutSeconds?: number; signal?: AbortSignal } = {},
  ): Promise<void> {
    await this.#call(
      'wait-sockets',
      [this.dir, name, String(options.timeoutSeconds ?? 120), ...sockets],
      undefined,
      options.signal,
      { cancel: true },
    )
  }

  /** SIGINT to the process's group, through its supervisor. */
  async interrupt(name: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    await this.#call('interrupt', [this.dir, name], undefined, options.signal)
  }

  /**
   * Stops `name` (SIGTERM to its group, SIGKILL after its grace) and removes its files; resolves with the state it
   * was in. A stale one (supervisor killed, same boot) is killed and removed too.
   * @throws IppTunnelError `E_REMOTE_NODE` when it runs on another node than this command reached.
   */
  async stop(name: string, options: { signal?: AbortSignal } = {}): Promise<RemoteProcessState['state']> {
    const a = await this.#call('stop', [this.dir, name], undefined, options.signal)
    return a.was as RemoteProcessState['state']
  }

  /**
   * Follows `name`: its stdout and stderr from the given offsets (bytes already seen by an earlier attachment), and
   * renews its lease every `heartbeatMs` (default 2000) while attached. The attachment ends when the process exits
   * (its output read to the end) or the link goes; `detach()` ends it and lets the lease run.
   * @throws IppTunnelError `E_REMOTE_NODE` when it runs on another node than this command reached (a login alias
   *   that resolved elsewhere, a shared home seen from another node); `E_REMOTE_GONE` when there is no such process.
   */
  async attach(
    name: string,
    options: {
      offsets?: { stdout: number; stderr: number }
      heartbeatMs?: number
      signal?: AbortSignal
    } = {},
  ): Promise<RemoteAttachment> {
    const offsets = options.offsets ?? { stdout: 0, stderr: 0 }
    const command = supervisorCommand(
      'attach',
      [this.dir, name, String(offsets.stdout), String(offsets.stderr)],
      this.#options,
    )
    const remote = await this.#executor.exec(command, options.signal ? { signal: options.signal } : {})
    const first = await firstAnswer(remote)
    if (first.answer === undefined) {
      remote.close()
      throw new IppTunnelError(
        'E_REMOTE',
        `the remote supervisor did not answer (python: ${this.#options.python ?? 'python3'}): ${tail(first.seen)}`,
      )
    }
    if (first.answer.ok !== true) {
      remote.close()
      throw answerError(first.answer)
    }
    return new RemoteAttachment(
      remote,
      stateOf(first.answer),
      first.rest,
      offsets,
      options.heartbeatMs ?? 2000,
    )
  }

  async #call(
    verb: string,
    args: readonly string[],
    input: string | undefined,
    signal?: AbortSignal,
    how: { holdStdin?: boolean; cancel?: boolean } = {},
  ): Promise<Answer> {
    const kept = this.#kept
    if (kept !== undefined && how.holdStdin !== true && !kept.closed) {
      const answer = await kept.call([verb, ...args], input, { signal, cancel: how.cancel === true })
      if (answer.ok !== true) throw answerError(answer)
      return answer
    }
    const remote = await this.#executor.exec(
      supervisorCommand(verb, args, this.#options),
      signal ? { signal } : {},
    )
    const onAbort = (): void => remote.close()
    signal?.addEventListener('abort', onAbort, { once: true })
    try {
      const stdout = collect(remote.stdout, MAX_ANSWER_BYTES)
      const stderr = collect(remote.stderr, 64 * 1024)
      // a held stdin is the verb's lifeline: its end (or the session's) tells a waiting verb to give up
      if (how.holdStdin !== true) remote.stdin.end(input)
      const [out, err] = await Promise.all([stdout, stderr, remote.exited])
      signal?.throwIfAborted()
      const answer = lastAnswer(out)
      if (answer === undefined) {
        throw new IppTunnelError(
          'E_REMOTE',
          `the remote supervisor did not answer (python: ${this.#options.python ?? 'python3'}): ${tail(err || out) || 'no output'}`,
        )
      }
      if (answer.ok !== true) throw answerError(answer)
      return answer
    } finally {
      signal?.removeEventListener('abort', onAbort)
      if (how.holdStdin === true) remote.stdin.end()
    }
  }
}

function answerError(a: Answer): IppTunnelError {
  const code = typeof a.code === 'string' && remoteCodes.has(a.code) ? (a.code as ErrorCode) : 'E_REMOTE'
  return new IppTunnelError(code, `on the ssh server: ${String(a.error)}`)
}

/** Reads `remote`'s stdout up to the supervisor's first answer; what follows it is the process's own output. */
function firstAnswer(
  remote: RemoteCommand,
): Promise<{ answer: Answer | undefined; rest: Buffer; seen: string }> {
  return new Promise((resolve) => {
    let seen = Buffer.alloc(0)
    const onData = (chunk: Buffer): void => {
      seen = Buffer.concat([seen, chunk])
      const at = seen.indexOf(MARK)
      const end = at < 0 ? -1 : seen.indexOf(10, at)
      if (end >= 0) {
        finish(lastAnswer(seen.subarray(at, end + 1).toString('utf8')), seen.subarray(end + 1))
      } else if (seen.length > MAX_ANSWER_BYTES) {
        finish(undefined, Buffer.alloc(0))
      }
    }
    const onEnd = (): void => finish(undefined, Buffer.alloc(0))
    const finish = (answer: Answer | undefined, rest: Buffer): void => {
      remote.stdout.off('data', onData)
      remote.stdout.off('end', onEnd)
      remote.stdout.pause()
      resolve({ answer, rest, seen: seen.toString('utf8') })
    }
    remote.stdout.on('data', onData)
    remote.stdout.once('end', onEnd)
  })
}

/** A live {@link RemoteProcesses.attach}: the process's output, and its lease renewed while this lasts. */
export class RemoteAttachment {
  readonly state: RemoteProcessState
  readonly stdout: Readable
  readonly stderr: Readable
  /** Resolves when the attachment ended: the process exited (output read to the end), the link went, or detach. */
  readonly ended: Promise<RemoteExit>
  readonly #remote: RemoteCommand
  readonly #timer: NodeJS.Timeout
  readonly #offsets: { stdout: number; stderr: number }

  constructor(
    remote: RemoteCommand,
    state: RemoteProcessState,
    rest: Buffer,
    offsets: { stdout: number; stderr: number },
    heartbeatMs: number,
  ) {
    this.#remote = remote
    this.state = state
    this.#offsets = { ...offsets }
    const stdout = new PassThrough()
    const stderr = new PassThrough()
    this.stdout = stdout
    this.stderr = stderr
    const relay = (from: Readable, to: PassThrough, which: 'stdout' | 'stderr', first?: Buffer): void => {
      const pass = (chunk: Buffer): void => {
        this.#offsets[which] += chunk.length
        if (!to.write(chunk)) from.pause()
      }
      to.on('drain', () => from.resume())
      if (first !== undefined && first.length > 0) pass(first)
      from.on('data', pass)
      from.once('end', () => to.end())
      from.resume()
    }
    relay(remote.stdout, stdout, 'stdout', rest)
    relay(remote.stderr, stderr, 'stderr')
    this.#timer = setInterval(() => remote.stdin.write('.'), heartbeatMs)
    this.#timer.unref()
    this.ended = remote.exited.then((exit) => {
      clearInterval(this.#timer)
      return exit
    })
  }

  /** Bytes of stdout and stderr passed on so far, counted from the start of the process: where to attach again. */
  get offsets(): { stdout: number; stderr: number } {
    return { ...this.#offsets }
  }

  /** Ends the attachment; the process goes on, and its lease runs from now. Safe to call twice. */
  detach(): Promise<RemoteExit> {
    clearInterval(this.#timer)
    this.#remote.stdin.end()
    this.#remote.close()
    return this.ended
  }
}
