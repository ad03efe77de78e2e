import { chmod, lstat, rm } from 'node:fs/promises'
import { connect, createServer, type Server, type Socket } from 'node:net'
import { dirname } from 'node:path'

import { IppTunnelError } from '../errors/index.js'
import { currentUid, ensurePrivateDir, kindOf } from '../safe-fs/index.js'
import type { SourceStatus } from '../sources/index.js'
import type { LoginClientMessage, LoginServerMessage, PendingLogin } from './login-relay.js'
import { LineReader, refuseLongLine } from './lines.js'
import type { FileStatus } from './types.js'
import { parseKernelRequest, type KernelRequest, type KernelStatus } from './kernel-protocol.js'

/** What `ipp-tunnel status` gets from the running service. No secrets. */
export interface StatusReport {
  readonly pid: number
  /** When the service started (ISO 8601). */
  readonly since: string
  readonly dirs: readonly string[]
  /** ssh connections held. */
  readonly links: number
  readonly files: readonly FileStatus[]
  /** Remote directories followed over SFTP (absent from services that follow none). */
  readonly remotes?: readonly SourceStatus[]
  /** Links waiting for someone to log in (`ipp-tunnel login`): what their servers asked. Never an answer. */
  readonly logins?: readonly PendingLogin[]
  /** Kernels the service started for `ipp-tunnel kernel` launchers (absent from services that hold none). */
  readonly kernels?: readonly KernelStatus[]
}

/**
 * The first line a client sends: `{"op":"status"}` or `{"op":"login","destination":…}`. A client that sends
 * nothing and half-closes gets the status, as before there were requests.
 */
export type SocketRequest =
  { readonly op: 'status' } | { readonly op: 'login'; readonly destination?: string } | KernelRequest

/** Takes a `login` client over: the socket, what it asked for, and what it sent after its request line. */
export type LoginHandler = (socket: Socket, destination: string | undefined, rest: Buffer) => void

/** Takes a `kernel` client over (`ipp-tunnel kernel` through the service). */
export type KernelHandler = (socket: Socket, request: KernelRequest, rest: Buffer) => void

/** How long a status query waits for the service to answer. */
const QUERY_TIMEOUT_MS = 5000

/**
 * The service's status endpoint: a unix socket (mode 0600, in a 0700 directory) that answers every connection
 * with one JSON {@link StatusReport} and closes it. A socket file left by a crashed service is replaced; a live
 * service on the same path is refused. The directory is verified (a real directory, the user's, mode 0700) before
 * the socket is touched, so no other local user can plant or swap it.
 *
 * @example
 * const server = await StatusServer.listen(statusSocketPath(), () => service.report())
 * // … later
 * await server.close()
 */
export class StatusServer {
  readonly path: string
  readonly #server: Server
  #closed = false

  private constructor(path: string, server: Server) {
    this.path = path
    this.#server = server
  }

  static async listen(
    path: string,
    report: () => StatusReport,
    login?: LoginHandler,
    kernel?: KernelHandler,
  ): Promise<StatusServer> {
    await ensurePrivateDir(dirname(path), {
      what: 'runtime directory',
      alternative: 'set IPP_TUNNEL_RUNTIME_DIR',
    })
    if (await isAlive(path)) {
      throw new IppTunnelError(
        'E_USAGE',
        `an ipp-tunnel service already runs (status socket ${path}); stop it first, or set IPP_TUNNEL_RUNTIME_DIR for a second one`,
      )
    }
    // Nobody answers: a socket file left by a crash (or nothing at all).
    await removeStaleSocket(path)
    const answerStatus = (socket: Socket): void => {
      let body: string
      try {
        body = JSON.stringify(report())
      } catch (err) {
        body = JSON.stringify({ error: err instanceof Error ? err.message : String(err) })
      }
      socket.end(body + '\n')
    }
    const server = createServer((socket) => {
      socket.on('error', () => undefined)
      let requested = false
      const reader = new LineReader(
        socket,
        (line) => {
          requested = true
          reader.stop()
          socket.off('end', onEnd)
          const request = parseRequest(line)
          if (request?.op === 'kernel') {
            if (kernel !== undefined) kernel(socket, request, reader.rest)
            else
              socket.end(
                JSON.stringify({
                  type: 'error',
                  code: 'E_USAGE',
                  message: 'this service starts no kernels',
                }) + '\n',
              )
          } else if (request?.op === 'login' && login !== undefined) {
            login(socket, request.destination, reader.rest)
          } else if (request?.op === 'login') {
            socket.end(JSON.stringify({ type: 'none', message: 'this service takes no logins' }) + '\n')
          } else {
            answerStatus(socket)
          }
        },
        () => {
          socket.off('end', onEnd)
          refuseLongLine(socket, 'request')
        },
      )
      const onEnd = (): void => {
        reader.stop()
        if (!requested) answerStatus(socket)
      }
      socket.once('end', onEnd)
    })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(path, () => {
        server.off('error', reject)
        resolve()
      })
    })
    await chmod(path, 0o600)
    return new StatusServer(path, server)
  }

  get closed(): boolean {
    return this.#closed
  }

  /** Stops answering and removes the socket file. Safe twice. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await new Promise<void>((resolve) => this.#server.close(() => resolve()))
    await rm(this.path, { force: true })
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}

function parseRequest(line: string): SocketRequest | undefined {
  try {
    const value = JSON.parse(line) as Record<string, unknown>
    if (value.op === 'status') return { op: 'status' }
    if (value.op === 'kernel') return parseKernelRequest(value)
    if (value.op === 'login') {
      return typeof value.destination === 'string'
        ? { op: 'login', destination: value.destination }
        : { op: 'login' }
    }
  } catch {
    // not a request: answer the status
  }
  return undefined
}

async function removeStaleSocket(path: string): Promise<void> {
  let stats
  try {
    stats = await lstat(path)
  } catch {
    return
  }
  const uid = currentUid()
  if (!stats.isSocket() || stats.uid !== uid) {
    const owner = stats.uid !== uid ? `, owned by uid ${stats.uid}` : ''
    throw new IppTunnelError(
      'E_UNSAFE_PATH',
      `${path}: is ${kindOf(stats)}${owner}, not a status socket the service left; remove it and start again`,
    )
  }
  await rm(path, { force: true })
}

/** Refuses a runtime directory that is a symlink or another user's: its socket could answer anything. */
export async function checkRuntimeDir(dir: string): Promise<void> {
  let stats
  try {
    stats = await lstat(dir)
  } catch {
    return
  }
  const uid = currentUid()
  if (stats.isSymbolicLink() || !stats.isDirectory()) {
    throw new IppTunnelError(
      'E_UNSAFE_PATH',
      `${dir}: runtime directory is ${kindOf(stats)}, not a directory; remove it or set IPP_TUNNEL_RUNTIME_DIR`,
    )
  }
  if (stats.uid !== uid) {
    throw new IppTunnelError(
      'E_UNSAFE_PATH',
      `${dir}: runtime directory is owned by uid ${stats.uid}, not you (${uid}); remove it or set IPP_TUNNEL_RUNTIME_DIR`,
    )
  }
}

function isAlive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path)
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })
}

/**
 * Asks the running service for its {@link StatusReport}.
 * Throws `E_SERVICE_DOWN` when no service answers on `path`, `E_UNSAFE_PATH` when its directory is not the user's.
 *
 * @example
 * const report = await queryStatus(statusSocketPath())
 * for (const f of report.files) console.log(f.file, f.state)
 */
export async function queryStatus(path: string): Promise<StatusReport> {
  await checkRuntimeDir(dirname(path))
  return new Promise((resolve, reject) => {
    const socket = connect(path)
    socket.once('connect', () => socket.write(`${JSON.stringify({ op: 'status' })}\n`))
    let text = ''
    const timer = setTimeout(() => {
      socket.destroy()
      reject(
        new IppTunnelError('E_TIMEOUT', `the service on ${path} did not answer in ${QUERY_TIMEOUT_MS} ms`),
      )
    }, QUERY_TIMEOUT_MS)
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => (text += chunk))
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      reject(
        new IppTunnelError(
          'E_SERVICE_DOWN',
          `no ipp-tunnel service is running (nothing answers on ${path}); start one with: ipp-tunnel watch`,
          { cause: err },
        ),
      )
    })
    socket.once('end', () => {
      clearTimeout(timer)
      try {
        const value = JSON.parse(text) as StatusReport | { error: string }
        if ('error' in value) reject(new IppTunnelError('E_REMOTE', `the service failed: ${value.error}`))
        else resolve(value)
      } catch (cause) {
        reject(new IppTunnelError('E_REMOTE', `the service on ${path} sent an unreadable answer`, { cause }))
      }
    })
  })
}

/** What {@link loginToService} asks of its caller: answers to prompts, and a place to say what happens. */
export interface LoginClientHandlers {
  /** Answers one round of prompts; undefined gives up on it. */
  answer(prompt: Extract<LoginServerMessage, { type: 'prompt' }>): Promise<readonly string[] | undefined>
  /** The logins taken on, then each result. */
  note(message: Exclude<LoginServerMessage, { type: 'prompt' | 'error' }>): void
  /** Ends the login at once (the socket closed, the results so far resolved): Ctrl-C. */
  readonly signal?: AbortSignal
}

/**
 * `ipp-tunnel login`: connects to the service's socket, takes on the links waiting for a login (those `destination`
 * names, or all), answers their prompts through `handlers.answer`, and resolves with every result. Answers go to
 * the socket only. Throws `E_SERVICE_DOWN` when no service answers, `E_UNSAFE_PATH` when its directory is not the
 * user's.
 *
 * @example
 * const results = await loginToService(statusSocketPath(), undefined, { answer: askOnTty, note: console.log })
 */
export async function loginToService(
  path: string,
  destination: string | undefined,
  handlers: LoginClientHandlers,
): Promise<Extract<LoginServerMessage, { type: 'result' | 'none' }>[]> {
  await checkRuntimeDir(dirname(path))
  return new Promise((resolve, reject) => {
    const socket = connect(path)
    const results: Extract<LoginServerMessage, { type: 'result' | 'none' }>[] = []
    let buffer = ''
    let connected = false
    let failure: IppTunnelError | undefined
    socket.setEncoding('utf8')
    socket.once('connect', () => {
      connected = true
      const request: SocketRequest =
        destination === undefined ? { op: 'login' } : { op: 'login', destination }
      socket.write(`${JSON.stringify(request)}\n`)
    })
    const send = (message: LoginClientMessage): void => {
      if (!socket.destroyed) socket.write(`${JSON.stringify(message)}\n`)
    }
    const handle = (message: LoginServerMessage): void => {
      if (message.type === 'prompt') {
        handlers.answer(message).then(
          (answers) =>
            send(
              answers === undefined
                ? { type: 'cancel', id: message.id }
                : { type: 'answers', id: message.id, answers },
            ),
          () => send({ type: 'cancel', id: message.id }),
        )
        return
      }
      if (message.type === 'error') {
        failure = new IppTunnelError('E_REMOTE', `the service ended the login: ${message.message}`)
        return
      }
      if (message.type === 'result' || message.type === 'none') results.push(message)
      handlers.note(message)
    }
    socket.on('data', (chunk: string) => {
      buffer += chunk
      let newline: number
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, newline)
        buffer = buffer.slice(newline + 1)
        try {
          handle(JSON.parse(line) as LoginServerMessage)
        } catch {
          // a line that is not JSON: skip it
        }
      }
    })
    socket.once('error', (err: NodeJS.ErrnoException) => {
      if (connected) return
      reject(
        new IppTunnelError(
          'E_SERVICE_DOWN',
          `no ipp-tunnel service is running (nothing answers on ${path}); start one with: ipp-tunnel watch`,
          { cause: err },
        ),
      )
    })
    socket.once('close', () => {
      handlers.signal?.removeEventListener('abort', stop)
      if (failure !== undefined) reject(failure)
      else resolve(results)
    })
    const stop = (): void => {
      socket.destroy()
    }
    if (handlers.signal?.aborted === true) stop()
    else handlers.signal?.addEventListener('abort', stop, { once: true })
  })
}
