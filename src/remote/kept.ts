import { IppTunnelError } from '../errors/index.js'
import type { RemoteCommand } from '../ssh/index.js'
import { supervisorCommand, type RemoteExecutor, type SupervisorOptions } from './command-line.js'

const MARK = '@@ipp-tunnel@@ '
/** The most one answer line (or what a login shell prints before the first) may hold. */
const MAX_LINE_BYTES = 1 << 20

/** One answer of the supervisor: a JSON object, `ok` true or a `code` and an `error`. */
export type SupervisorAnswer = Record<string, unknown>

interface Pending {
  readonly resolve: (answer: SupervisorAnswer) => void
  readonly reject: (err: Error) => void
}

interface Session {
  readonly remote: RemoteCommand
  readonly pending: Map<number, Pending>
  ended: boolean
}

/**
 * One supervisor kept running on a link (`serve`: one exec channel, python started once) that answers the
 * supervisor's quick verbs — `node`, `modules`, `start`, `status`, `list`, `interrupt`, `stop`, `wait-sockets` — one
 * request a line, so a kernel start costs one round trip instead of a session, a login shell and a python start.
 * Each request runs in a child of its own there (several at once). The supervisor exits when its channel closes:
 * {@link KeptSupervisor.close}, or the link going (then the next call starts another). Its environment is the one
 * `setup` made when it started.
 *
 * @example
 * const kept = new KeptSupervisor(link, { setup: 'module load python' })
 * const procs = new RemoteProcesses(link, { kept })
 * await procs.start({ name: 'k1', argv: ['sleep', '60'] })
 * kept.close()
 */
export class KeptSupervisor {
  readonly #executor: RemoteExecutor
  readonly #options: SupervisorOptions
  #session: Promise<Session> | undefined
  #nextId = 1
  #closed = false

  constructor(executor: RemoteExecutor, options: SupervisorOptions = {}) {
    this.#executor = executor
    this.#options = {
      ...(options.python !== undefined && { python: options.python }),
      ...(options.setup !== undefined && { setup: options.setup }),
    }
  }

  /** How the supervisor is run (the remote python, the setup lines): calls with other options need another one. */
  get options(): SupervisorOptions {
    return this.#options
  }

  get closed(): boolean {
    return this.#closed
  }

  /**
   * Runs `argv` (a verb and its arguments, `input` as its stdin) and resolves with its answer, whatever `ok` says.
   * An abort rejects at once; `cancel` also ends the request there (a wait, not a start).
   * @throws IppTunnelError `E_REMOTE` when the supervisor cannot run or went away (the link dropped).
   */
  async call(
    argv: readonly string[],
    input?: string,
    options: { signal?: AbortSignal | undefined; cancel?: boolean } = {},
  ): Promise<SupervisorAnswer> {
    const { signal } = options
    signal?.throwIfAborted()
    if (this.#closed) throw new IppTunnelError('E_CLOSED', 'the kept remote supervisor is closed')
    const session = await this.#open(signal)
    signal?.throwIfAborted()
    if (session.ended) {
      throw new IppTunnelError('E_REMOTE', 'the kept remote supervisor ended (the link went?)')
    }
    const id = this.#nextId++
    return new Promise<SupervisorAnswer>((resolve, reject) => {
      const onAbort = (): void => {
        session.pending.delete(id)
        if (options.cancel === true && !session.ended)
          session.remote.stdin.write(`${JSON.stringify({ cancel: id })}\n`)
        reject(signal?.reason instanceof Error ? signal.reason : new IppTunnelError('E_CLOSED', 'aborted'))
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      const done = (): void => signal?.removeEventListener('abort', onAbort)
      session.pending.set(id, {
        resolve: (answer) => {
          done()
          resolve(answer)
        },
        reject: (err) => {
          done()
          reject(err)
        },
      })
      session.remote.stdin.write(`${JSON.stringify({ id, argv, ...(input !== undefined && { input }) })}\n`)
    })
  }

  /** Ends the supervisor (its channel closes; it exits there). Calls in flight reject. Safe twice. */
  close(): void {
    this.#closed = true
    const session = this.#session
    this.#session = undefined
    void session?.then(
      (s) => {
        s.remote.stdin.end()
        s.remote.close()
      },
      () => undefined,
    )
  }

  #open(signal: AbortSignal | undefined): Promise<Session> {
    const current = this.#session
    if (current !== undefined) return current
    const opening = this.#start(signal)
    this.#session = opening
    // a failed start is not kept: the next call tries again
    opening.then(
      (s) => void s.remote.exited.then(() => this.#session === opening && (this.#session = undefined)),
      () => this.#session === opening && (this.#session = undefined),
    )
    return opening
  }

  async #start(signal: AbortSignal | undefined): Promise<Session> {
    const remote = await this.#executor.exec(
      supervisorCommand('serve', [], this.#options),
      signal ? { signal } : {},
    )
    const session: Session = { remote, pending: new Map(), ended: false }
    let stderr = ''
    remote.stderr.on('data', (chunk: Buffer) => {
      if (stderr.length < 4096) stderr += chunk.toString('utf8')
    })
    return new Promise<Session>((resolve, reject) => {
      let ready = false
      let buffer = Buffer.alloc(0)
      const fail = (why: string): void => {
        const err = new IppTunnelError(
          'E_REMOTE',
          `the remote supervisor did not answer (python: ${this.#options.python ?? 'python3'}): ${why}`,
        )
        if (!ready) reject(err)
        for (const p of session.pending.values()) p.reject(err)
        session.pending.clear()
      }
      remote.stdout.on('data', (chunk: Buffer) => {
        buffer = Buffer.concat([buffer, chunk])
        for (;;) {
          const end = buffer.indexOf(10)
          if (end < 0) break
          const line = buffer.subarray(0, end).toString('utf8')
          buffer = buffer.subarray(end + 1)
          const at = line.indexOf(MARK)
          if (at < 0) continue
          let answer: unknown
          try {
            answer = JSON.parse(line.slice(at + MARK.length))
          } catch {
            continue
          }
          if (typeof answer !== 'object' || answer === null) continue
          const { id } = answer as { id?: unknown }
          if (id === 0 && !ready) {
            ready = true
            if ((answer as SupervisorAnswer).ok === true) resolve(session)
            else
              reject(
                new IppTunnelError(
                  'E_REMOTE',
                  `on the ssh server: ${String((answer as SupervisorAnswer).error)}`,
                ),
              )
            continue
          }
          if (typeof id !== 'number') continue
          const pending = session.pending.get(id)
          session.pending.delete(id)
          pending?.resolve(answer as SupervisorAnswer)
        }
        if (buffer.length > MAX_LINE_BYTES) remote.close()
      })
      void remote.exited.then(() => {
        session.ended = true
        const seen = (stderr || buffer.toString('utf8')).trim().split('\n').slice(-3).join(' / ').slice(-400)
        fail(ready ? 'it ended (the link went?)' : seen || 'no output')
      })
    })
  }
}
