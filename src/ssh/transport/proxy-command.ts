import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { Duplex } from 'node:stream'

/** What a {@link ProxyCommand} reports while it runs. */
export interface ProxyCommandOptions {
  /** The command's stderr, chunk by chunk, as ssh(1) shows it on the user's terminal. */
  readonly onStderr?: (text: string) => void
  /** Environment of the command; default `process.env`. */
  readonly env?: Readonly<Record<string, string | undefined>>
  /** Run this program and arguments instead of `sh -c "exec COMMAND"`; `command` is then only its name in messages. */
  readonly argv?: readonly string[]
  /** Start it in a session (and process group) of its own: as a Link's `ownProcessGroup` asks. */
  readonly detached?: boolean
}

/**
 * A running `ProxyCommand` (tokens already expanded): started as ssh(1) does, `sh -c "exec COMMAND"`, with its
 * stdin/stdout as the {@link ProxyCommand.stream} an SSH connection runs over. Owned by whoever started it:
 * `close()` ends the stream, kills the process (TERM, then KILL after a second) and waits until it is reaped.
 *
 * @example
 * const proxy = new ProxyCommand('ssh -W %h:%p jump'.replace('%h', host).replace('%p', '22'))
 * client.connect({ sock: proxy.stream, host, port: 22, username })
 * await proxy.close()
 */
export class ProxyCommand {
  readonly command: string
  /** The command's stdout (read) and stdin (write) as one Duplex. */
  readonly stream: Duplex
  readonly #child: ChildProcess
  readonly #exited: Promise<unknown>
  #closing: Promise<void> | undefined
  #stderrTail = ''

  constructor(command: string, options: ProxyCommandOptions = {}) {
    this.command = command
    const [file, ...args] = options.argv ?? ['/bin/sh', '-c', `exec ${command}`]
    const child = spawn(file ?? '/bin/sh', args, {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...(options.env ?? process.env) },
      detached: options.detached === true,
    })
    this.#child = child
    this.#exited =
      child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : once(child, 'close')
    this.#exited.catch(() => undefined)
    const { stdin, stdout, stderr } = child
    this.stream = Duplex.from({ readable: stdout, writable: stdin })
    // a spawn failure or a command that died leaves a stream that ends; ssh2 reports that as a lost connection
    child.on('error', () => this.stream.destroy())
    stdin.on('error', () => undefined)
    this.stream.on('error', () => undefined)
    // the process is the connection: when it is gone, so is the stream (ssh2 then sees `close`)
    child.once('close', () => this.stream.destroy())
    stderr.setEncoding('utf8')
    stderr.on('data', (text: string) => {
      this.#stderrTail = (this.#stderrTail + text).slice(-2000)
      options.onStderr?.(text)
    })
  }

  /** Resolves once the process has exited and its pipes are closed (never rejects). */
  get exited(): Promise<void> {
    return this.#exited.then(
      () => undefined,
      () => undefined,
    )
  }

  /** The process id, while it runs. */
  get pid(): number | undefined {
    return this.#child.pid
  }

  /**
   * Why the command is gone, when it exited on its own: its status and the last line it wrote to stderr.
   * Undefined while it runs or after `close()`.
   */
  get exitReason(): string | undefined {
    const child = this.#child
    if (this.#closing !== undefined || (child.exitCode === null && child.signalCode === null))
      return undefined
    const status = child.exitCode !== null ? `status ${child.exitCode}` : `signal ${child.signalCode ?? ''}`
    const last = this.#stderrTail.trim().split('\n').at(-1)?.trim() ?? ''
    return `ProxyCommand "${this.command}" exited with ${status}${last === '' ? '' : `: ${last}`}`
  }

  get closed(): boolean {
    return this.#closing !== undefined
  }

  /** Ends the stream, kills the command and reaps it. Safe to call twice. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const child = this.#child
      this.stream.destroy()
      if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
        child.kill('SIGTERM')
        const timer = setTimeout(() => child.kill('SIGKILL'), 1000)
        await this.#exited.catch(() => undefined)
        clearTimeout(timer)
      }
    })()
    return this.#closing
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}
