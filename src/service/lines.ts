import type { Socket } from 'node:net'

/** The longest line a client of the status socket may send (a request, a login's answers): 4 KiB. */
export const MAX_LINE_BYTES = 4096

/**
 * Reads newline-ended lines from a socket, each at most `max` bytes. Each chunk is scanned once (never what came
 * before it), and what waits for its newline is at most `max` bytes plus one chunk: a client that sends more
 * without a newline gets `tooLong()` and nothing else is read. `onLine` may call {@link LineReader.stop} (to hand
 * the socket on); the bytes after that line are then kept for {@link LineReader.rest}.
 *
 * @example
 * const reader = new LineReader(socket, (line) => handle(JSON.parse(line)), () => socket.destroy())
 */
export class LineReader {
  readonly #socket: Socket
  readonly #max: number
  readonly #onLine: (line: string) => void
  readonly #tooLong: () => void
  #pending: Buffer[] = []
  #pendingBytes = 0
  #rest = Buffer.alloc(0)
  #stopped = false

  constructor(
    socket: Socket,
    onLine: (line: string) => void,
    tooLong: () => void,
    options: { max?: number; first?: Buffer } = {},
  ) {
    this.#socket = socket
    this.#max = options.max ?? MAX_LINE_BYTES
    this.#onLine = onLine
    this.#tooLong = tooLong
    socket.on('data', this.#data)
    if (options.first !== undefined && options.first.length > 0) this.#data(options.first)
  }

  /** Stops reading: no more lines are handed on. Safe twice. */
  stop(): void {
    if (this.#stopped) return
    this.#stopped = true
    this.#socket.off('data', this.#data)
  }

  /** True once {@link stop} was called (or a line was too long). */
  get stopped(): boolean {
    return this.#stopped
  }

  /** What came after the last line handed on, in the chunk that held it (once stopped). */
  get rest(): Buffer {
    return this.#rest
  }

  readonly #data = (chunk: Buffer | string): void => {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk
    let start = 0
    while (!this.#stopped) {
      const newline = bytes.indexOf(0x0a, start)
      const end = newline < 0 ? bytes.length : newline
      if (this.#pendingBytes + end - start > this.#max) {
        this.stop()
        this.#pending = []
        this.#tooLong()
        return
      }
      if (newline < 0) {
        if (end > start) {
          this.#pending.push(bytes.subarray(start))
          this.#pendingBytes += end - start
        }
        return
      }
      const line = Buffer.concat([...this.#pending, bytes.subarray(start, newline)]).toString('utf8')
      this.#pending = []
      this.#pendingBytes = 0
      start = newline + 1
      this.#onLine(line)
      if (this.stopped) this.#rest = Buffer.from(bytes.subarray(start))
    }
  }
}

/** How long a refused connection stays half-open for its client to read the refusal (a lingering close). */
const LINGER_MS = 1000

/**
 * Ends a connection whose client sent a line longer than {@link MAX_LINE_BYTES} (no newline in sight): one JSON line
 * saying so (`error` for a status client, `type: "error"` for a login client), then the socket closed. Nothing
 * more is read from it.
 */
export function refuseLongLine(socket: Socket, what: 'request' | 'message'): void {
  const error = `${what} longer than ${MAX_LINE_BYTES} bytes without a newline; connection closed`
  closeLingering(socket, JSON.stringify({ type: 'error', error, message: error }) + '\n')
}

/**
 * Sends `last` (if any) and our end of the stream, reads nothing more, and destroys the socket when the client
 * closes or a second later: a lingering close, as HTTP servers do. Destroying it at once would reset a client
 * still writing before it had read `last`.
 */
export function closeLingering(socket: Socket, last?: string): void {
  // what is already buffered or still coming is dropped, not read
  socket.pause()
  if (last === undefined) socket.end()
  else socket.end(last)
  const linger = setTimeout(() => socket.destroy(), LINGER_MS)
  linger.unref()
  socket.once('close', () => clearTimeout(linger))
}
