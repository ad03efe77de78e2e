import type { Writable } from 'node:stream'

import { isBadInput, isIppTunnelError } from '../errors/index.js'

/** One line of CLI output: an `event` name plus its fields, rendered as JSON or as a human line. */
export type OutputEvent = { readonly event: string } & Readonly<Record<string, unknown>>

/** Exit status of the CLI, by kind of ending. */
export const EXIT = { ok: 0, runtime: 1, badInput: 2, serviceDown: 3 } as const

/** Exit status for an error: 2 for bad input, 3 when no service runs, 1 for any other failure. */
export function exitCodeFor(err: unknown): number {
  if (!isIppTunnelError(err)) return EXIT.runtime
  if (err.code === 'E_SERVICE_DOWN') return EXIT.serviceDown
  return isBadInput(err.code) ? EXIT.badInput : EXIT.runtime
}

export interface OutputOptions {
  readonly json: boolean
  readonly debug: boolean
  /** Prefix human lines with a timestamp (the service does, one-shot commands don't). */
  readonly timestamps?: boolean
  readonly stdout?: Writable
  readonly stderr?: Writable
}

type HumanFormatter = (e: OutputEvent) => string | undefined

/**
 * Renders core events for people (one line each) or for programs (one JSON object per line on stdout).
 * Human lines go to stderr so that stdout stays free for what a command prints as its result.
 */
export class Output {
  readonly json: boolean
  readonly debug: boolean
  readonly #timestamps: boolean
  readonly #stdout: Writable
  readonly #stderr: Writable
  readonly #formatters = new Map<string, HumanFormatter>()

  constructor(options: OutputOptions) {
    this.json = options.json
    this.debug = options.debug
    this.#timestamps = options.timestamps ?? false
    this.#stdout = options.stdout ?? process.stdout
    this.#stderr = options.stderr ?? process.stderr
  }

  /** Sets how an event reads as a human line; returning undefined hides it from people. */
  format(event: string, formatter: HumanFormatter): this {
    this.#formatters.set(event, formatter)
    return this
  }

  /** Emits an event: a JSON line on stdout, or a human line on stderr. */
  emit(event: OutputEvent): void {
    if (this.json) {
      this.#stdout.write(JSON.stringify(event) + '\n')
      return
    }
    const formatter = this.#formatters.get(event.event)
    const text = formatter ? formatter(event) : defaultHuman(event)
    if (text !== undefined) this.line(text)
  }

  /** A human line on stderr (with a timestamp when the output asks for them). */
  line(text: string): void {
    const stamp = this.#timestamps ? `${new Date().toISOString()} ` : ''
    this.#stderr.write(`${stamp}${text}\n`)
  }

  /** Prints a command's result on stdout: JSON as one object, or text as it is. */
  result(value: unknown, human: string): void {
    this.#stdout.write(this.json ? JSON.stringify(value) + '\n' : human.endsWith('\n') ? human : human + '\n')
  }

  /** Reports a failure as one line (a stack trace only with --debug) and returns the exit status for it. */
  fail(err: unknown, context: Record<string, unknown> = {}): number {
    const message = err instanceof Error ? err.message : String(err)
    const code = isIppTunnelError(err) ? err.code : 'E_INTERNAL'
    if (this.json) {
      this.#stdout.write(JSON.stringify({ event: 'error', code, message, ...context }) + '\n')
    } else {
      this.#stderr.write(`ipp-tunnel: ${message}\n`)
    }
    if (this.debug && err instanceof Error) this.#stderr.write(`${err.stack ?? ''}\n`)
    if (this.debug && err instanceof Error && err.cause !== undefined) {
      this.#stderr.write(
        `caused by: ${err.cause instanceof Error ? (err.cause.stack ?? '') : JSON.stringify(err.cause)}\n`,
      )
    }
    return exitCodeFor(err)
  }
}

function defaultHuman(e: OutputEvent): string {
  const { event, ...fields } = e
  const parts = Object.entries(fields)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
  return [event, ...parts].join(' ')
}
