import { EventEmitter } from 'node:events'
import type { Socket } from 'node:net'

import type { IppTunnelError } from '../errors/index.js'
import type { LoginGate, Prompt, PromptProvider, PromptRequest } from '../ssh/index.js'
import { closeLingering, LineReader, refuseLongLine } from './lines.js'

/** A link that waits for someone to log in: what the server asked last. Never an answer. */
export interface PendingLogin {
  /** The link's destination, `user@host:port`: what `ipp-tunnel login DEST` names. */
  readonly destination: string
  /** The hop that asks (a jump host, or the destination). */
  readonly host: string
  readonly method: PromptRequest['method'] | undefined
  readonly name: string
  readonly instructions: string
  readonly prompts: readonly Prompt[]
  /** Since when it waits (ISO 8601). */
  readonly since: string
}

/** Messages the service sends a `login` client, one JSON object a line. */
export type LoginServerMessage =
  | { readonly type: 'none'; readonly message: string }
  /** The client broke the protocol (a line over 4 KiB); the connection is closed after it. */
  | { readonly type: 'error'; readonly message: string }
  | { readonly type: 'login'; readonly destinations: readonly PendingLogin[] }
  | ({ readonly type: 'prompt'; readonly id: number } & Omit<PromptRequest, 'prompts'> & {
        readonly prompts: readonly Prompt[]
      })
  | {
      readonly type: 'result'
      readonly destination: string
      readonly ok: boolean
      readonly code?: string
      readonly message?: string
    }

/** Messages a `login` client sends after its request line. */
export type LoginClientMessage =
  | { readonly type: 'answers'; readonly id: number; readonly answers: readonly string[] }
  | { readonly type: 'cancel'; readonly id: number }

export interface LoginRelayEvents {
  /** A link needs someone to log in; once per need, not per attempt. */
  'auth-needed': [PendingLogin]
  /** A link that waited for a login is up again. */
  'logged-in': [{ destination: string }]
}

interface Waiting {
  login: PendingLogin
  readonly wakers: Set<() => void>
}

/** True when `filter` (what the user typed after `ipp-tunnel login`) names `destination`. */
function names(filter: string | undefined, login: PendingLogin): boolean {
  if (filter === undefined || filter === '') return true
  return login.destination.includes(filter) || login.host.includes(filter)
}

/**
 * One `ipp-tunnel login` client on the status socket: it takes on the logins it was shown, relays each prompt of
 * those links to the client and its answers back (held only until handed to ssh2), reports each result, and ends
 * when every one is settled.
 */
class LoginSession {
  readonly claimed = new Set<string>()
  readonly #socket: Socket
  readonly #asks = new Map<number, (answers: readonly string[] | undefined) => void>()
  #nextId = 1
  #closed = false
  onClose: (() => void) | undefined

  #reader: LineReader | undefined

  constructor(socket: Socket, rest: Buffer) {
    this.#socket = socket
    this.#reader = new LineReader(
      socket,
      (line) => this.#message(line),
      () => {
        refuseLongLine(socket, 'message')
        this.#close()
      },
      { first: rest },
    )
    socket.once('close', () => this.#close())
    socket.once('end', () => this.#close())
  }

  get closed(): boolean {
    return this.#closed
  }

  send(message: LoginServerMessage): void {
    if (!this.#closed) this.#socket.write(`${JSON.stringify(message)}\n`)
  }

  ask(request: PromptRequest): Promise<readonly string[] | undefined> {
    if (this.#closed) return Promise.resolve(undefined)
    const id = this.#nextId++
    return new Promise((resolve) => {
      this.#asks.set(id, resolve)
      this.send({ type: 'prompt', id, ...request, prompts: request.prompts })
    })
  }

  result(destination: string, error: IppTunnelError | undefined): void {
    if (!this.claimed.delete(destination)) return
    this.send(
      error === undefined
        ? { type: 'result', destination, ok: true }
        : { type: 'result', destination, ok: false, code: error.code, message: error.message },
    )
    if (this.claimed.size === 0) this.end()
  }

  end(): void {
    if (this.#closed) return
    closeLingering(this.#socket)
    this.#close()
  }

  #message(line: string): void {
    let message: LoginClientMessage
    try {
      message = JSON.parse(line) as LoginClientMessage
    } catch {
      return
    }
    const resolve = this.#asks.get(message.id)
    if (resolve === undefined) return
    this.#asks.delete(message.id)
    const answers =
      message.type === 'answers' && Array.isArray(message.answers)
        ? message.answers.map((a) => String(a))
        : undefined
    resolve(answers)
  }

  #close(): void {
    if (this.#closed) return
    this.#closed = true
    // nothing more is read from a client whose session is over
    this.#reader?.stop()
    this.#socket.pause()
    for (const resolve of this.#asks.values()) resolve(undefined)
    this.#asks.clear()
    this.onClose?.()
  }
}

/**
 * Lets links of a process without a terminal (the service) get their prompts answered by `ipp-tunnel login`.
 * Its {@link LoginRelay.provider} answers nothing while no one is logged in, which makes the attempt fail at once
 * (`E_AUTH_PROMPT`) rather than hold a half-open login the server would time out; its {@link LoginRelay.gate} then
 * parks the link until a `login` client takes it on, and the link tries again, its prompts relayed to that client.
 * `auth-needed` is emitted once per need, not per attempt.
 *
 * @example
 * const relay = new LoginRelay()
 * const link = new Link(target, { prompt: relay.provider, login: relay.gate })
 * relay.on('auth-needed', (p) => console.error(`${p.destination} needs: ipp-tunnel login`))
 */
export class LoginRelay extends EventEmitter<LoginRelayEvents> {
  readonly #waiting = new Map<string, Waiting>()
  readonly #sessions = new Set<LoginSession>()
  #closed = false

  readonly provider: PromptProvider = (request) => {
    const session = this.#sessionFor(request.destination)
    if (session !== undefined) return session.ask(request)
    this.#need(request.destination, request)
    return Promise.resolve(undefined)
  }

  readonly gate: LoginGate = {
    wait: (destination, signal) =>
      new Promise<void>((resolve, reject) => {
        if (signal.aborted) {
          reject(signal.reason as Error)
          return
        }
        const waiting = this.#need(destination, undefined)
        const wake = (): void => {
          signal.removeEventListener('abort', onAbort)
          resolve()
        }
        const onAbort = (): void => {
          waiting.wakers.delete(wake)
          if (waiting.wakers.size === 0 && this.#waiting.get(destination) === waiting) {
            this.#waiting.delete(destination)
          }
          reject(signal.reason as Error)
        }
        signal.addEventListener('abort', onAbort, { once: true })
        waiting.wakers.add(wake)
      }),
    settled: (destination, error) => {
      for (const session of this.#sessions) session.result(destination, error)
      if (error === undefined && this.#waiting.delete(destination)) this.emit('logged-in', { destination })
    },
  }

  /** Every link waiting for a login, for `status`. */
  pending(): PendingLogin[] {
    return [...this.#waiting.values()].map((w) => w.login)
  }

  /**
   * Takes on a `login` client (its request line already read; `rest` is what came after it): it is shown the
   * logins that `filter` names, and the links waiting for them try again with their prompts sent to it.
   */
  attach(socket: Socket, filter: string | undefined, rest: Buffer = Buffer.alloc(0)): void {
    const session = new LoginSession(socket, rest)
    const chosen = [...this.#waiting.values()].filter(
      (w) => names(filter, w.login) && this.#sessionFor(w.login.destination) === undefined,
    )
    if (this.#closed || chosen.length === 0) {
      const all = this.pending()
      const message =
        all.length === 0
          ? 'no link of the service waits for a login'
          : `no link waiting for a login matches ${JSON.stringify(filter)}; waiting: ${all.map((p) => p.destination).join(', ')}`
      session.send({ type: 'none', message })
      session.end()
      return
    }
    this.#sessions.add(session)
    session.onClose = () => this.#sessions.delete(session)
    for (const w of chosen) session.claimed.add(w.login.destination)
    session.send({ type: 'login', destinations: chosen.map((w) => w.login) })
    for (const w of chosen) {
      const wakers = [...w.wakers]
      w.wakers.clear()
      for (const wake of wakers) wake()
    }
  }

  /** Ends every `login` client. Safe twice. */
  close(): void {
    this.#closed = true
    for (const session of this.#sessions) session.end()
    this.#sessions.clear()
  }

  #sessionFor(destination: string): LoginSession | undefined {
    for (const session of this.#sessions) {
      if (!session.closed && session.claimed.has(destination)) return session
    }
    return undefined
  }

  #need(destination: string, request: PromptRequest | undefined): Waiting {
    const existing = this.#waiting.get(destination)
    if (existing !== undefined) {
      if (request !== undefined) existing.login = { ...loginOf(request), since: existing.login.since }
      return existing
    }
    const login: PendingLogin =
      request !== undefined
        ? { ...loginOf(request), since: new Date().toISOString() }
        : {
            destination,
            host: destination,
            method: undefined,
            name: '',
            instructions: '',
            prompts: [],
            since: new Date().toISOString(),
          }
    const waiting: Waiting = { login, wakers: new Set() }
    this.#waiting.set(destination, waiting)
    this.emit('auth-needed', login)
    return waiting
  }
}

function loginOf(request: PromptRequest): Omit<PendingLogin, 'since'> {
  return {
    destination: request.destination,
    host: request.host,
    method: request.method,
    name: request.name,
    instructions: request.instructions,
    prompts: request.prompts.map((p) => ({ prompt: p.prompt, echo: p.echo })),
  }
}
