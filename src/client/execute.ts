/**
 * What an `execute_request` comes back with, and the iopub side of it: output is matched to its request by
 * the parent `msg_id` and collected until the peer reports `idle` for that request.
 */
import type { Connection } from '../sockets/index.js'
import {
  isError,
  isExecuteResult,
  isStatus,
  isStream,
  type ExecuteReplyContent,
  type ExecuteRequestContent,
  type JsonObject,
  type Message,
} from '../wire/index.js'

/** An exception raised by remote code, as the peer reported it. */
export interface RemoteError {
  readonly ename: string
  readonly evalue: string
  /** Lines of the traceback as the peer formatted them (may hold ANSI colour codes). */
  readonly traceback: readonly string[]
}

/** The value of one `user_expressions` entry: its `text/plain` form, or the error evaluating it raised. */
export type ExpressionValue =
  | { readonly status: 'ok'; readonly text: string | undefined; readonly data: JsonObject }
  | ({ readonly status: 'error' } & RemoteError)

/** The outcome of running code on one engine or kernel. Remote exceptions are values here, not throws. */
export interface ExecuteResult {
  /** The engine's id (ipyparallel only). */
  readonly engineId?: number
  readonly status: 'ok' | 'error' | 'aborted'
  readonly executionCount: number | null
  /** Everything the code printed on stdout / stderr, in order. */
  readonly stdout: string
  readonly stderr: string
  /** `text/plain` of the value of the last expression (`execute_result`), when there was one. */
  readonly result?: string
  /** Each requested expression by name. */
  readonly expressions: Readonly<Record<string, ExpressionValue>>
  /** Set when `status` is `error`. */
  readonly error?: RemoteError
  /** From sending the request to its reply, in ms. */
  readonly roundTripMs: number
}

/** Options of an execute call. */
export interface ExecuteOptions {
  /** Expressions to evaluate after the code, by name: `{ n: 'len(data)' }`. */
  readonly userExpressions?: Readonly<Record<string, string>>
  /**
   * Run without publishing the input or the result and without storing history, as ipyparallel's
   * `execute()` does; stdout/stderr still arrive. Default false (like `%px`).
   */
  readonly silent?: boolean
  /** How long to wait for each reply; default: the connection's request timeout. */
  readonly timeoutMs?: number
  /** How long to wait, after the reply, for the output to end (`idle` on iopub); default 2000 ms. */
  readonly outputGraceMs?: number
  readonly signal?: AbortSignal
}

interface Collected {
  stdout: string
  stderr: string
  result: string | undefined
  idle: boolean
  onIdle: (() => void) | undefined
}

function textOf(data: unknown): string | undefined {
  if (typeof data !== 'object' || data === null) return undefined
  const text = (data as Record<string, unknown>)['text/plain']
  return typeof text === 'string' ? text : undefined
}

function strings(value: unknown): string[] {
  return Array.isArray(value) ? value.map(String) : []
}

function remoteError(content: Record<string, unknown>): RemoteError {
  return {
    ename: typeof content.ename === 'string' ? content.ename : 'Error',
    evalue: typeof content.evalue === 'string' ? content.evalue : '',
    traceback: strings(content.traceback),
  }
}

function expressionsOf(value: unknown): Record<string, ExpressionValue> {
  const out: Record<string, ExpressionValue> = {}
  if (typeof value !== 'object' || value === null) return out
  for (const [name, raw] of Object.entries(value as Record<string, unknown>)) {
    const entry = (typeof raw === 'object' && raw !== null ? raw : {}) as Record<string, unknown>
    if (entry.status === 'ok') {
      const data = (typeof entry.data === 'object' && entry.data !== null ? entry.data : {}) as JsonObject
      out[name] = { status: 'ok', text: textOf(data), data }
    } else {
      out[name] = { status: 'error', ...remoteError(entry) }
    }
  }
  return out
}

/**
 * Routes iopub messages to the execute requests waiting for them, by parent `msg_id`. One per client.
 *
 * @example
 * const router = new OutputRouter(conn)
 * const result = await router.execute((m) => conn.requestMessage('shell', m), conn.session, 'print(1)')
 */
export class OutputRouter {
  readonly #waiting = new Map<string, Collected>()
  readonly #stop = new AbortController()
  #heard = false
  #onHeard: (() => void) | undefined

  constructor(connection: Pick<Connection, 'messages'>) {
    const stream = connection.messages('iopub', { signal: this.#stop.signal })
    void (async () => {
      for await (const message of stream) {
        this.#heard = true
        this.#onHeard?.()
        this.#route(message)
      }
    })()
  }

  /** Resolves true once any message has arrived on iopub, or false after `ms`. */
  heard(ms: number): Promise<boolean> {
    if (this.#heard) return Promise.resolve(true)
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#onHeard = undefined
        resolve(false)
      }, ms)
      this.#onHeard = () => {
        clearTimeout(timer)
        this.#onHeard = undefined
        resolve(true)
      }
    })
  }

  #route(message: Message): void {
    const parentId = (message.parent_header as { msg_id?: unknown }).msg_id
    if (typeof parentId !== 'string') return
    const collected = this.#waiting.get(parentId)
    if (collected === undefined) return
    if (isStream(message)) {
      if (message.content.name === 'stderr') collected.stderr += message.content.text
      else collected.stdout += message.content.text
    } else if (isExecuteResult(message)) {
      collected.result = textOf(message.content.data)
    } else if (isStatus(message) && message.content.execution_state === 'idle') {
      collected.idle = true
      collected.onIdle?.()
    } else if (isError(message)) {
      // The reply carries the same error; nothing to add.
    }
  }

  /**
   * Sends `execute_request` for `code` through `send` (which resolves with the reply) and collects its output.
   */
  async execute(
    send: (request: Message) => Promise<Message>,
    msg: (content: ExecuteRequestContent) => Message,
    code: string,
    options: ExecuteOptions & { engineId?: number },
  ): Promise<ExecuteResult> {
    const request = msg({
      code,
      silent: options.silent ?? false,
      store_history: !(options.silent ?? false),
      user_expressions: { ...options.userExpressions },
      allow_stdin: false,
      stop_on_error: true,
    })
    const id = request.header.msg_id
    const collected: Collected = { stdout: '', stderr: '', result: undefined, idle: false, onIdle: undefined }
    this.#waiting.set(id, collected)
    try {
      const started = performance.now()
      const reply = await send(request)
      const roundTripMs = performance.now() - started
      if (!collected.idle) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, options.outputGraceMs ?? 2000)
          collected.onIdle = () => {
            clearTimeout(timer)
            resolve()
          }
        })
      }
      const content = reply.content as ExecuteReplyContent & Record<string, unknown>
      const status = content.status === 'ok' || content.status === 'error' ? content.status : 'aborted'
      return {
        ...(options.engineId !== undefined && { engineId: options.engineId }),
        status,
        executionCount: typeof content.execution_count === 'number' ? content.execution_count : null,
        stdout: collected.stdout,
        stderr: collected.stderr,
        ...(collected.result !== undefined && { result: collected.result }),
        expressions: expressionsOf(content.user_expressions),
        ...(status === 'error' && { error: remoteError(content) }),
        roundTripMs,
      }
    } finally {
      this.#waiting.delete(id)
    }
  }

  /** Stops routing (the connection's iopub stream ends). */
  close(): void {
    this.#stop.abort()
  }
}
