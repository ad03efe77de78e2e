import { createHmac, randomBytes } from 'node:crypto'
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { join } from 'node:path'

import { IppTunnelError } from '../errors/index.js'
import { ensurePrivateDir, readRegularFile, realPathOf, writeFileAtomic } from '../safe-fs/index.js'

/** The process that holds a copy path, as it describes itself. */
export interface CopyHolder {
  readonly pid: number | undefined
  readonly command: string
}

/** File in the runtime directory whose secret makes the claim names of this user's copies. */
const KEY_FILE = 'claims.key'
/** How long a holder has to say who it is before it is described only as "another ipp-tunnel process". */
const ASK_MS = 1000

function errno(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code
}

/**
 * The secret of this user's claims: 32 random bytes in the private runtime directory, made once (linked into
 * place, so two processes starting at once agree on one key).
 */
async function claimKey(runtimeDir: string): Promise<string> {
  await ensurePrivateDir(runtimeDir, { what: 'runtime directory', alternative: 'set IPP_TUNNEL_RUNTIME_DIR' })
  const path = join(runtimeDir, KEY_FILE)
  const read = async () =>
    (await readRegularFile(path, { what: 'claim key', noFollow: true, code: 'E_UNSAFE_PATH' })).text.trim()
  try {
    return await read()
  } catch (err) {
    if (errno((err as Error).cause) !== 'ENOENT') throw err
  }
  try {
    await writeFileAtomic(path, randomBytes(32).toString('hex') + '\n', 'claim key', { noReplace: true })
  } catch (err) {
    if (errno((err as Error).cause) !== 'EEXIST') throw err
  }
  return read()
}

/**
 * The name of the claim on `path`: an abstract unix socket (Linux), keyed by the copy's real path and this user's
 * secret, so another local user can neither guess nor take it. The kernel frees it when its holder exits, however
 * it exits: no claim is ever stale.
 */
async function claimName(path: string, runtimeDir: string): Promise<string> {
  const key = await claimKey(runtimeDir)
  const digest = createHmac('sha256', key)
    .update(await realPathOf(path))
    .digest('hex')
  return `\0ipp-tunnel-copy-${digest.slice(0, 40)}`
}

function listen(server: Server, name: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(name, () => {
      server.off('error', reject)
      resolve()
    })
  })
}

/** Connects to the holder of `name`: undefined when no one holds it. */
function connectHolder(name: string): Promise<Socket | undefined> {
  return new Promise((resolve) => {
    const socket = createConnection(name)
    socket.once('connect', () => {
      socket.off('error', onError)
      socket.on('error', () => socket.destroy())
      resolve(socket)
    })
    const onError = () => {
      socket.destroy()
      resolve(undefined)
    }
    socket.once('error', onError)
  })
}

/** Asks who holds `name`; undefined when no one does (any more). */
async function askHolder(name: string): Promise<CopyHolder | undefined> {
  const socket = await connectHolder(name)
  if (socket === undefined) return undefined
  return new Promise((resolve) => {
    let text = ''
    const done = (holder: CopyHolder) => {
      clearTimeout(timer)
      socket.destroy()
      resolve(holder)
    }
    const unknown: CopyHolder = { pid: undefined, command: 'another ipp-tunnel process' }
    const timer = setTimeout(() => done(unknown), ASK_MS)
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString('utf8')
      if (!text.includes('\n') && text.length < 4096) return
      try {
        const { pid, command } = JSON.parse(text.slice(0, text.indexOf('\n'))) as {
          pid?: unknown
          command?: unknown
        }
        done({
          pid: Number.isSafeInteger(pid) ? (pid as number) : undefined,
          command: typeof command === 'string' ? command.slice(0, 200) : unknown.command,
        })
      } catch {
        done(unknown)
      }
    })
    socket.once('close', () => done(unknown))
  })
}

/** `ipp-tunnel watch (pid 123)`. */
export function holderText(holder: CopyHolder): string {
  return holder.pid === undefined ? holder.command : `${holder.command} (pid ${String(holder.pid)})`
}

export interface ClaimOptions {
  /** The private runtime directory whose secret names the claims; every process of the user shares it. */
  readonly runtimeDir: string
  /** What this process is, as another process's conflict message names it (`ipp-tunnel up`). */
  readonly command: string
  /** What the user can do about a conflict, ending its message. */
  readonly hint?: string
}

/**
 * The claim of one process on a loopback copy's path: while it is held, no other ipp-tunnel process of the user
 * (`up`, `exec`, `watch`) writes or removes a copy there. Taking a claim is one `bind()` on an abstract unix
 * socket, atomic between processes; the kernel drops it when the holder exits, even by SIGKILL. Anyone who
 * connects is told the holder's pid and command, and sees the connection close when the claim is released.
 *
 * @example
 * const claim = await CopyClaim.take(out, { runtimeDir: defaultRuntimeDir(), command: 'ipp-tunnel up' })
 * // … write and use the copy …
 * claim.release()
 */
export class CopyClaim {
  readonly path: string
  readonly #server: Server
  readonly #peers = new Set<Socket>()
  #released = false

  private constructor(path: string, server: Server) {
    this.path = path
    this.#server = server
  }

  /**
   * Claims `path` for this process.
   *
   * @throws IppTunnelError `E_COPY_CONFLICT` naming the path and the live process that holds it (command, pid).
   */
  static async take(path: string, options: ClaimOptions): Promise<CopyClaim> {
    const name = await claimName(path, options.runtimeDir)
    const hello = JSON.stringify({ pid: process.pid, command: options.command }) + '\n'
    for (let attempt = 0; ; attempt++) {
      const server = createServer()
      const claim = new CopyClaim(path, server)
      server.on('connection', (socket) => {
        claim.#peers.add(socket)
        socket.on('close', () => claim.#peers.delete(socket))
        socket.on('error', () => socket.destroy())
        socket.write(hello)
      })
      try {
        await listen(server, name)
        server.unref()
        return claim
      } catch (err) {
        if (errno(err) !== 'EADDRINUSE') {
          throw new IppTunnelError(
            'E_COPY_CONFLICT',
            `${path}: cannot claim the copy's path (${String(err)})`,
            {
              cause: err,
            },
          )
        }
      }
      const holder = await askHolder(name)
      // released between the bind and the question: try again
      if (holder === undefined && attempt < 3) continue
      const who = holderText(holder ?? { pid: undefined, command: 'another ipp-tunnel process' })
      const hint = options.hint ?? 'give --out to write the copy elsewhere, or stop that process'
      throw new IppTunnelError('E_COPY_CONFLICT', `${path}: this copy is held by ${who}; ${hint}`)
    }
  }

  get released(): boolean {
    return this.#released
  }

  /** Lets go of the path; whoever waits for it is told. Safe twice. */
  release(): void {
    if (this.#released) return
    this.#released = true
    this.#server.close()
    for (const socket of this.#peers) socket.destroy()
  }
}

/**
 * Calls `onRelease` once no process holds a claim on `path` any more (at once if none does now). Returns a
 * function that stops waiting.
 *
 * @example
 * const stop = whenReleased(out, runtimeDir, () => retry())
 */
export function whenReleased(path: string, runtimeDir: string, onRelease: () => void): () => void {
  let stopped = false
  let socket: Socket | undefined
  const released = () => {
    if (stopped) return
    stopped = true
    onRelease()
  }
  void claimName(path, runtimeDir)
    .then(async (name) => {
      socket = await connectHolder(name)
      if (socket === undefined) return released()
      if (stopped) return socket.destroy()
      // the connection stays open until the holder lets go (or dies)
      socket.resume()
      socket.once('close', released)
    })
    .catch(() => undefined)
  return () => {
    stopped = true
    socket?.destroy()
  }
}
