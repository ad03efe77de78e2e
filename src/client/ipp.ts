import type { ConnectionInfo } from '../connection-file/index.js'
import { IppTunnelError, isIppTunnelError } from '../errors/index.js'
import { connect, type ConnectOptions, type Connection } from '../sockets/index.js'
import type { QueueReplyContent } from '../wire/index.js'
import { OutputRouter, type ExecuteOptions, type ExecuteResult } from './execute.js'

/** The engines a controller knows: ids in order and each one's identity (its uuid, the mux routing id). */
export interface Engines {
  readonly ids: readonly number[]
  readonly identities: Readonly<Record<number, string>>
}

/** Which engines to run on: all of them, or these ids. */
export type Targets = 'all' | readonly number[]

/** What {@link IppClient.executeSettled} resolves with: the replies that came, and who did not answer. */
export interface SettledExecution {
  /** One result per engine that replied in time, in engine order. */
  readonly results: ExecuteResult[]
  /** Engine ids that did not reply within the timeout; their code may still be running. */
  readonly timedOut: number[]
}

/** How an interrupt went, per engine id: `ok`, or why it failed. */
export type InterruptOutcome =
  { readonly status: 'ok' } | { readonly status: 'failed'; readonly reason: string }

/** Options of {@link IppClient.execute}. */
export interface IppExecuteOptions extends ExecuteOptions {
  /** Default `all`. */
  readonly targets?: Targets
}

function statusOk(content: Record<string, unknown>, what: string, where: string): void {
  if (content.status === 'ok') return
  const detail = typeof content.evalue === 'string' ? `: ${String(content.ename)}: ${content.evalue}` : ''
  throw new IppTunnelError('E_REMOTE', `${where}: the controller refused ${what}${detail}`)
}

/**
 * A small ipyparallel client over a {@link Connection}: lists engines, reads queue status and runs code on
 * chosen engines through the mux scheduler (engine identity as the first frame), collecting each engine's
 * `execute_reply` and its stdout/stderr from iopub.
 *
 * @example
 * await using client = await IppClient.open('ipcontroller-client.json')
 * const results = await client.execute('import os; print(os.getpid())', { targets: [0] })
 * console.log(results[0]?.stdout)
 */
export class IppClient {
  readonly kind = 'ipp-client'
  readonly connection: Connection<'ipp-client'>
  readonly #router: OutputRouter
  readonly #stop = new AbortController()
  /** The last `connection_reply`, until the hub notifies that an engine came or went. */
  #engines: Engines | undefined

  constructor(connection: Connection<'ipp-client'>) {
    this.connection = connection
    this.#router = new OutputRouter(connection)
    const notifications = connection.messages('notification', { signal: this.#stop.signal })
    void (async () => {
      for await (const note of notifications) {
        if (note.header.msg_type.endsWith('registration_notification')) this.#engines = undefined
      }
    })()
  }

  /**
   * Connects (through a tunnel when the file names an ssh server) and returns a client that owns the connection.
   *
   * @throws IppTunnelError `E_CONNFILE_KIND` when the file is not an ipyparallel client file; see `connect`.
   * @example const client = await IppClient.open(file, { identity: '~/.ssh/id_ed25519' })
   */
  static async open(source: string | ConnectionInfo, options: ConnectOptions = {}): Promise<IppClient> {
    const connection = await connect(source, options)
    if (connection.kind !== 'ipp-client') {
      await connection.close()
      throw new IppTunnelError(
        'E_CONNFILE_KIND',
        `${connection.where}: this is a kernel connection file; use KernelClient`,
      )
    }
    return new IppClient(connection)
  }

  /**
   * Asks the hub which engines are registered (`connection_request`).
   *
   * @example const { ids } = await client.engines() // [0, 1, 2]
   */
  async engines(options: { timeoutMs?: number } = {}): Promise<Engines> {
    this.#engines = await this.#askEngines(options)
    return this.#engines
  }

  async #askEngines(options: { timeoutMs?: number }): Promise<Engines> {
    const reply = await this.connection.request('query', 'connection_request', {}, options)
    const content = reply.content as Record<string, unknown>
    statusOk(content, 'connection_request', this.connection.where)
    const identities: Record<number, string> = {}
    const engines = (content.engines ?? {}) as Record<string, unknown>
    for (const [id, uuid] of Object.entries(engines)) identities[Number(id)] = String(uuid)
    const ids = Object.keys(identities)
      .map(Number)
      .sort((a, b) => a - b)
    return { ids, identities }
  }

  /**
   * Queue status of some engines, or all (`queue_request`).
   *
   * @example const q = await client.queueStatus(); console.log(q.unassigned)
   */
  async queueStatus(
    targets: readonly number[] | null = null,
    options: { verbose?: boolean; timeoutMs?: number } = {},
  ): Promise<QueueReplyContent> {
    const reply = await this.connection.request(
      'query',
      'queue_request',
      { targets: targets === null ? null : [...targets], verbose: options.verbose ?? false },
      options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs },
    )
    const content = reply.content as QueueReplyContent
    statusOk(content, 'queue_request', this.connection.where)
    return content
  }

  /**
   * Runs `code` on each target engine at once through the mux channel and resolves with one result per
   * engine, in engine order. Exceptions raised by the code are in `result.error`, not thrown.
   *
   * @throws IppTunnelError `E_USAGE` for an engine id the controller does not know, `E_REMOTE` when no
   *   engine is registered, `E_TIMEOUT` naming the engines that did not reply in time (use
   *   {@link executeSettled} to keep the replies of the others).
   * @example
   * const [r] = await client.execute('x = 6 * 7', { targets: [0], userExpressions: { x: 'x' } })
   * r?.expressions.x // { status: 'ok', text: '42', … }
   */
  async execute(code: string, options: IppExecuteOptions = {}): Promise<ExecuteResult[]> {
    const { results, timedOut } = await this.executeSettled(code, options)
    if (timedOut.length > 0) {
      throw new IppTunnelError(
        'E_TIMEOUT',
        `${this.connection.where}: no reply from engine${timedOut.length === 1 ? '' : 's'} ${timedOut.join(', ')} within ${String(options.timeoutMs ?? 'the request timeout')} ms`,
      )
    }
    return results
  }

  /**
   * Like {@link execute}, but an engine that does not reply within `timeoutMs` is listed in `timedOut`
   * instead of failing the call: the replies of the others are kept. The code may still run on the engines
   * that timed out; {@link interrupt} stops it.
   *
   * @example
   * const { results, timedOut } = await client.executeSettled('slow()', { timeoutMs: 5000 })
   * if (timedOut.length > 0) await client.interrupt(timedOut)
   */
  async executeSettled(code: string, options: IppExecuteOptions = {}): Promise<SettledExecution> {
    const engines = await this.engines(
      options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs },
    )
    const ids = this.#targetIds(engines, options.targets ?? 'all')
    const { session } = this.connection
    const settled = await Promise.allSettled(
      ids.map((engineId) =>
        this.#router.execute(
          (request) =>
            this.connection.requestMessage('mux', request, {
              ident: engines.identities[engineId] ?? '',
              ...(options.timeoutMs !== undefined && { timeoutMs: options.timeoutMs }),
              ...(options.signal !== undefined && { signal: options.signal }),
            }),
          (content) => session.msg('execute_request', content),
          code,
          { ...options, engineId },
        ),
      ),
    )
    const results: ExecuteResult[] = []
    const timedOut: number[] = []
    settled.forEach((outcome, i) => {
      if (outcome.status === 'fulfilled') results.push(outcome.value)
      else if (isIppTunnelError(outcome.reason) && outcome.reason.code === 'E_TIMEOUT')
        timedOut.push(ids[i] ?? -1)
      else throw outcome.reason
    })
    return { results, timedOut }
  }

  #targetIds(engines: Engines, targets: Targets): number[] {
    if (engines.ids.length === 0) {
      throw new IppTunnelError(
        'E_REMOTE',
        `${this.connection.where}: no engines are registered with the controller`,
      )
    }
    const ids = targets === 'all' ? [...engines.ids] : [...targets]
    for (const id of ids) {
      if (engines.identities[id] === undefined) {
        throw new IppTunnelError(
          'E_USAGE',
          `${this.connection.where}: no engine ${id}; the controller has engines ${engines.ids.join(', ')}`,
        )
      }
    }
    return ids
  }

  /**
   * Interrupts what these engines run (SIGINT, delivered by each engine's nanny as ipyparallel's
   * `Client.send_signal` does): running code raises `KeyboardInterrupt`. Resolves, per engine id, once the
   * engine answers again (`ok`: it takes work now), or with why not within `timeoutMs`.
   *
   * @example
   * const outcomes = await client.interrupt([1]) // { 1: { status: 'ok' } }
   */
  async interrupt(
    ids: readonly number[],
    options: { timeoutMs?: number } = {},
  ): Promise<Record<number, InterruptOutcome>> {
    const engines = this.#engines ?? (await this.engines(options))
    const outcomes: Record<number, InterruptOutcome> = {}
    await Promise.all(
      ids.map(async (id) => {
        const ident = engines.identities[id]
        if (ident === undefined) {
          outcomes[id] = { status: 'failed', reason: `the controller has no engine ${id}` }
          return
        }
        try {
          const reply = await this.connection.request(
            'control',
            'signal_request',
            { sig: 'SIGINT' },
            { ident, ...(options.timeoutMs !== undefined && { timeoutMs: options.timeoutMs }) },
          )
          const content = reply.content as Record<string, unknown>
          if (content.status !== 'ok') {
            const ename = typeof content.ename === 'string' ? content.ename : 'error'
            const evalue =
              typeof content.evalue === 'string' ? content.evalue : JSON.stringify(content.status)
            outcomes[id] = { status: 'failed', reason: `${ename}: ${evalue}` }
            return
          }
          // The engine is free once it answers a request queued behind the interrupted one.
          const { timedOut } = await this.executeSettled('', {
            targets: [id],
            silent: true,
            outputGraceMs: 500,
            ...(options.timeoutMs !== undefined && { timeoutMs: options.timeoutMs }),
          })
          outcomes[id] =
            timedOut.length === 0
              ? { status: 'ok' }
              : { status: 'failed', reason: 'the engine is still busy after SIGINT' }
        } catch (err) {
          outcomes[id] = { status: 'failed', reason: err instanceof Error ? err.message : String(err) }
        }
      }),
    )
    return outcomes
  }

  /** Closes the connection and its tunnel. */
  async close(): Promise<void> {
    this.#stop.abort()
    this.#router.close()
    await this.connection.close()
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}
