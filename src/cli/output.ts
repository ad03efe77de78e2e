import type { Writable } from 'node:stream'

import { isBadInput, isIppTunnelError } from '../errors/index.js'
import { oneLine, visible } from './visible.js'

export { MAX_MESSAGE, oneLine, visible } from './visible.js'

/** One line of CLI output: an `event` name plus its fields, rendered as JSON or as a human line. */
export type OutputEvent = { readonly event: string } & Readonly<Record<string, unknown>>

/**
 * Exit status of the CLI, by kind of ending. `exec` passes on its command's status (127 when it cannot be
 * started); a second SIGINT/SIGTERM exits at once with 130/143.
 */
export const EXIT = {
  ok: 0,
  runtime: 1,
  badInput: 2,
  serviceDown: 3,
  /** `doctor`: a step failed. */
  doctorFailed: 4,
  cannotRun: 127,
  interrupted: 130,
  terminated: 143,
} as const

/** Exit status for an error: 2 for bad input, 3 when no service runs, 1 for any other failure. */
export function exitCodeFor(err: unknown): number {
  if (!isIppTunnelError(err)) return EXIT.runtime
  if (err.code === 'E_SERVICE_DOWN') return EXIT.serviceDown
  return isBadInput(err.code) ? EXIT.badInput : EXIT.runtime
}

/** How repeats of one line are summarised: the first window, its cap as it doubles, and when a quiet key is forgotten. */
export interface RepeatPolicy {
  readonly firstWindowMs: number
  readonly maxWindowMs: number
  readonly forgetMs: number
}

export const DEFAULT_REPEAT_POLICY: RepeatPolicy = {
  firstWindowMs: 5_000,
  maxWindowMs: 300_000,
  forgetMs: 600_000,
}

/** What a window held back: the last event of the kind, how many were held back, and over how long. */
export interface RepeatSummary {
  readonly sample: OutputEvent
  readonly count: number
  readonly ms: number
}

interface RepeatState {
  sample: OutputEvent
  windowStart: number
  windowMs: number
  count: number
  lastSeen: number
}

/**
 * Decides which repeats of a line are printed, with no clock or timer of its own (the caller passes `now`).
 * The first occurrence of a key is printed; the ones that follow within a window are counted, and at the end of
 * the window {@link due} hands back one summary. Each window that held repeats doubles the next (5 s, 10 s, 20 s, …
 * up to 5 min), so a line that repeats forever costs one summary every 5 min. A key quiet for `forgetMs` starts over.
 *
 * @example
 * const limiter = new RepeatLimiter()
 * limiter.offer('k', event, 0) // true: print it
 * limiter.offer('k', event, 100) // false: counted
 * limiter.due(5_000) // [{ sample: event, count: 1, ms: 5000 }]
 */
export class RepeatLimiter {
  readonly #policy: RepeatPolicy
  readonly #states = new Map<string, RepeatState>()
  /** Summaries of windows that ended before an offer, waiting for the next {@link due}. */
  readonly #pending: RepeatSummary[] = []

  constructor(policy: RepeatPolicy = DEFAULT_REPEAT_POLICY) {
    this.#policy = policy
  }

  /** True when the event is to be printed now; false when it is counted for a later summary. */
  offer(key: string, event: OutputEvent, now: number): boolean {
    this.due(now).forEach((s) => this.#pending.push(s))
    const state = this.#states.get(key)
    if (state === undefined) {
      this.#states.set(key, {
        sample: event,
        windowStart: now,
        windowMs: this.#policy.firstWindowMs,
        count: 0,
        lastSeen: now,
      })
      return true
    }
    state.sample = event
    state.count++
    state.lastSeen = now
    return false
  }

  /** Summaries of every window that has ended by `now` (oldest first); keys quiet for `forgetMs` are dropped. */
  due(now: number): RepeatSummary[] {
    const out = this.#pending.splice(0)
    for (const [key, state] of this.#states) {
      while (state.windowStart + state.windowMs <= now) {
        const end = state.windowStart + state.windowMs
        if (state.count > 0) {
          out.push({ sample: state.sample, count: state.count, ms: state.windowMs })
          state.count = 0
          state.windowStart = end
          state.windowMs = Math.min(state.windowMs * 2, this.#policy.maxWindowMs)
        } else if (now - state.lastSeen >= this.#policy.forgetMs) {
          this.#states.delete(key)
          break
        } else {
          state.windowStart = end
        }
      }
    }
    return out
  }

  /** Summaries of every count held now, whatever their window (for the end of a command). */
  drain(now: number): RepeatSummary[] {
    const out = this.due(now)
    for (const state of this.#states.values()) {
      if (state.count > 0) out.push({ sample: state.sample, count: state.count, ms: now - state.windowStart })
    }
    this.#states.clear()
    return out
  }

  /** When {@link due} next has something to do, or undefined when nothing is held. */
  nextDue(): number | undefined {
    let next: number | undefined
    for (const state of this.#states.values()) {
      const end = state.windowStart + state.windowMs
      if (next === undefined || end < next) next = end
    }
    return next
  }
}

/** The key two events share when one repeats the other: the event name and its text fields (numbers vary). */
export function repeatKey(event: OutputEvent): string {
  const text = Object.entries(event)
    .filter(([, v]) => typeof v === 'string')
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  return JSON.stringify(text)
}

/** Time for {@link Output}: a clock and a timer, replaceable in tests. */
export interface OutputClock {
  now(): number
  setTimer(callback: () => void, ms: number): { cancel(): void }
}

const realClock: OutputClock = {
  now: () => Date.now(),
  setTimer: (callback, ms) => {
    const timer = setTimeout(callback, ms)
    timer.unref()
    return { cancel: () => clearTimeout(timer) }
  },
}

/** Events whose repeats are summarised: the errors a broken peer can raise many times a second. */
export const REPEATED_EVENTS: readonly string[] = ['error', 'forward-error', 'warning']

export interface OutputOptions {
  readonly json: boolean
  readonly debug: boolean
  /** Prefix human event lines with a timestamp (default true; results never get one). */
  readonly timestamps?: boolean
  readonly stdout?: Writable
  readonly stderr?: Writable
  /**
   * Where JSON events (and the JSON error of `fail()`) go: default stdout. `exec` sends them to stderr or to
   * `--events-fd` so that its command's stdout stays the command's.
   */
  readonly events?: Writable
  /** Events whose human lines are results, printed on stdout (e.g. `up`'s `ready`); every other line is stderr. */
  readonly humanResults?: readonly string[]
  /** Which events' repeats are summarised (default {@link REPEATED_EVENTS}). */
  readonly repeated?: readonly string[]
  readonly repeatPolicy?: RepeatPolicy
  readonly clock?: OutputClock
}

type HumanFormatter = (e: OutputEvent) => string | undefined

/** Outputs writing to the process's own streams, flushed when the process exits. */
const live = new Set<Output>()
let exitHookInstalled = false

/**
 * Renders core events for people (one line each) or for programs (one JSON object per line, each with `event`).
 * Human event lines go to stderr, timestamped, so that stdout stays free for what a command prints as its result.
 *
 * Repeats of an error (same event, same text fields) are printed once, then summarised: JSON
 * `{"event":"suppressed","of":"forward-error","count":167,"ms":5000,…the last one's fields}`, human
 * `… (repeated 167 times in the last 5 s)`, with windows doubling from 5 s to 5 min.
 */
export class Output {
  readonly json: boolean
  readonly debug: boolean
  readonly #timestamps: boolean
  readonly #stdout: Writable
  readonly #stderr: Writable
  readonly #events: Writable
  readonly #humanResults: ReadonlySet<string>
  readonly #repeated: ReadonlySet<string>
  readonly #limiter: RepeatLimiter
  readonly #clock: OutputClock
  readonly #formatters = new Map<string, HumanFormatter>()
  #timer: { cancel(): void; at: number } | undefined

  constructor(options: OutputOptions) {
    this.json = options.json
    this.debug = options.debug
    this.#timestamps = options.timestamps ?? true
    this.#stdout = options.stdout ?? process.stdout
    this.#stderr = options.stderr ?? process.stderr
    this.#events = options.events ?? this.#stdout
    this.#humanResults = new Set(options.humanResults ?? [])
    this.#repeated = new Set(options.repeated ?? REPEATED_EVENTS)
    this.#limiter = new RepeatLimiter(options.repeatPolicy)
    this.#clock = options.clock ?? realClock
    if (options.stdout === undefined && options.stderr === undefined) {
      live.add(this)
      if (!exitHookInstalled) {
        exitHookInstalled = true
        // Writes to pipes, files and terminals are synchronous on Linux, so held counts still reach the reader.
        process.on('exit', () => live.forEach((o) => o.flush()))
        // A reader that went away (`ipp-tunnel up … | head`, a closed terminal) ends the output, not the tunnel:
        // without a listener the EPIPE would be thrown and stop the process with a stack trace.
        for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined)
      }
    }
  }

  /** Sets how an event reads as a human line; returning undefined hides it from people. */
  format(event: string, formatter: HumanFormatter): this {
    this.#formatters.set(event, formatter)
    return this
  }

  /** Emits an event: a JSON line, or a human line (stderr, or stdout for results); repeats are summarised. */
  emit(event: OutputEvent): void {
    if (this.#repeated.has(event.event)) {
      const show = this.#limiter.offer(repeatKey(event), event, this.#clock.now())
      this.#writeSummaries(this.#limiter.due(this.#clock.now()))
      this.#schedule()
      if (!show) return
    }
    this.#write(event)
  }

  /** Prints every held repeat count now (at the end of a command). */
  flush(): void {
    this.#timer?.cancel()
    this.#timer = undefined
    this.#writeSummaries(this.#limiter.drain(this.#clock.now()))
  }

  /** A human line on stderr (with a timestamp when the output asks for them); control characters shown escaped. */
  line(text: string): void {
    this.#stderr.write(`${this.#stamp()}${visible(text, { newlines: true })}\n`)
  }

  /**
   * Prints a command's result on stdout: JSON as one object (with `event: 'result'` unless it names its own), or
   * the human text with its control characters shown escaped (lines and tabs kept).
   */
  result(value: unknown, human: string): void {
    if (this.json) {
      const object =
        value !== null && typeof value === 'object' && !Array.isArray(value)
          ? { event: 'result', ...(value as Record<string, unknown>) }
          : { event: 'result', value }
      this.#stdout.write(JSON.stringify(object) + '\n')
      return
    }
    const text = visible(human, { newlines: true })
    this.#stdout.write(text.endsWith('\n') ? text : text + '\n')
  }

  /**
   * Reports a failure as one line (control characters replaced, at most {@link MAX_MESSAGE} characters; a stack
   * trace only with --debug) and returns the exit status for it.
   */
  fail(err: unknown, context: Record<string, unknown> = {}): number {
    this.flush()
    const message = oneLine(err instanceof Error ? err.message : String(err))
    const code = isIppTunnelError(err) ? err.code : 'E_INTERNAL'
    if (this.json) {
      this.#events.write(JSON.stringify({ event: 'error', code, message, ...context }) + '\n')
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

  #stamp(): string {
    return this.#timestamps ? `${new Date(this.#clock.now()).toISOString()} ` : ''
  }

  #write(raw: OutputEvent): void {
    if (this.json) {
      this.#events.write(JSON.stringify(raw) + '\n')
      return
    }
    const event = cleanFields(raw)
    const formatter = this.#formatters.get(event.event)
    const text = formatter ? formatter(event) : defaultHuman(event)
    if (text === undefined) return
    const stream = this.#humanResults.has(event.event) ? this.#stdout : this.#stderr
    // fields are one line each already; what a formatter adds from nested values (prompts, lists) is caught here
    stream.write(`${this.#stamp()}${visible(text, { newlines: true })}\n`)
  }

  #writeSummaries(summaries: readonly RepeatSummary[]): void {
    for (const { sample, count, ms } of summaries) {
      if (this.json) {
        this.#events.write(
          JSON.stringify({ ...sample, event: 'suppressed', of: sample.event, count, ms }) + '\n',
        )
        continue
      }
      const event = cleanFields(sample)
      const formatter = this.#formatters.get(event.event)
      const text = (formatter ? formatter(event) : defaultHuman(event)) ?? event.event
      this.line(`${text} (repeated ${count} time${count === 1 ? '' : 's'} in the last ${duration(ms)})`)
    }
  }

  #schedule(): void {
    const at = this.#limiter.nextDue()
    if (at === undefined) {
      this.#timer?.cancel()
      this.#timer = undefined
      return
    }
    if (this.#timer?.at === at) return
    this.#timer?.cancel()
    const timer = this.#clock.setTimer(
      () => {
        this.#timer = undefined
        this.#writeSummaries(this.#limiter.due(this.#clock.now()))
        this.#schedule()
      },
      Math.max(0, at - this.#clock.now()),
    )
    this.#timer = { cancel: () => timer.cancel(), at }
  }
}

/** "5 s", "40 s", "2 min", "1 h 5 min". */
function duration(ms: number): string {
  const s = Math.max(1, Math.round(ms / 1000))
  if (s < 120) return `${s} s`
  const min = Math.round(s / 60)
  if (min < 120) return `${min} min`
  return `${Math.floor(min / 60)} h ${min % 60} min`
}

function cleanFields(e: OutputEvent): OutputEvent {
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(e)) out[k] = typeof v === 'string' ? oneLine(v) : v
  return out as OutputEvent
}

function defaultHuman(e: OutputEvent): string {
  const { event, ...fields } = e
  const parts = Object.entries(fields)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
  return [event, ...parts].join(' ')
}
