import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'

/** The repository root (tests run from dist/test/…). */
export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url))
export const FIXTURES = `${REPO_ROOT}fixtures/`
export const CLI = `${REPO_ROOT}bin/ipp-tunnel.js`

export interface CliResult {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
}

/**
 * Starts the real CLI as a user would (`node bin/ipp-tunnel.js …`). `wrap`: a command that runs it in place
 * (execs, so the child's pid is the CLI's), e.g. `['ip', 'netns', 'exec', ns.name]` or {@link withHostsFile}.
 */
export function spawnCli(
  args: readonly string[],
  env: NodeJS.ProcessEnv = {},
  options: { wrap?: readonly string[] } = {},
): ChildProcess {
  const [program = process.execPath, ...rest] = [...(options.wrap ?? []), process.execPath, CLI, ...args]
  return spawn(program, rest, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
}

/**
 * A `wrap` for {@link spawnCli} that runs the CLI in a mount namespace of its own where `/etc/hosts` is `hostsFile`
 * (bind-mounted): the real resolver (glibc, files) answers from a file the test controls. Rewrite the file in place
 * (`writeFile` truncates the same inode), and the CLI sees the new names at its next lookup; nothing else does.
 */
export function withHostsFile(hostsFile: string): string[] {
  return ['unshare', '--mount', 'sh', '-c', 'mount --bind "$0" /etc/hosts && exec "$@"', hostsFile]
}

/** Runs the CLI to completion and collects its output. */
export function runCli(
  args: readonly string[],
  env: NodeJS.ProcessEnv = {},
  timeoutMs = 60_000,
): Promise<CliResult> {
  const child = spawnCli(args, env)
  let stdout = ''
  let stderr = ''
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()))
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()))
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr })
    })
  })
}

/** Collects JSON lines from a running CLI's stdout and waits for events. */
export class JsonLines {
  readonly events: Record<string, unknown>[] = []
  readonly #waiters: {
    match: (e: Record<string, unknown>) => boolean
    resolve: (e: Record<string, unknown>) => void
  }[] = []
  #buffer = ''
  stderr = ''

  /** `from`: the stream the JSON lines come on (`kernel` writes its events to stderr, Jupyter's log). */
  constructor(child: ChildProcess, options: { from?: 'stdout' | 'stderr' } = {}) {
    const events = options.from === 'stderr' ? child.stderr : child.stdout
    events?.on('data', (d: Buffer) => {
      this.#buffer += d.toString()
      let newline: number
      while ((newline = this.#buffer.indexOf('\n')) >= 0) {
        const line = this.#buffer.slice(0, newline)
        this.#buffer = this.#buffer.slice(newline + 1)
        if (line.trim() === '') continue
        const event = JSON.parse(line) as Record<string, unknown>
        this.events.push(event)
        for (const w of [...this.#waiters]) {
          if (w.match(event)) {
            this.#waiters.splice(this.#waiters.indexOf(w), 1)
            w.resolve(event)
          }
        }
      }
    })
    if (options.from !== 'stderr') child.stderr?.on('data', (d: Buffer) => (this.stderr += d.toString()))
  }

  /** Resolves with the first event (past or future) that matches; rejects after `timeoutMs`. */
  next(
    match: string | ((e: Record<string, unknown>) => boolean),
    timeoutMs = 30_000,
  ): Promise<Record<string, unknown>> {
    const test = typeof match === 'string' ? (e: Record<string, unknown>) => e.event === match : match
    const seen = this.events.find(test)
    if (seen) return Promise.resolve(seen)
    return this.waitNew(test, timeoutMs)
  }

  /** Like next(), but only for events that arrive from now on. */
  waitNew(
    test: (e: Record<string, unknown>) => boolean,
    timeoutMs = 30_000,
  ): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new Error(
            `no matching event in ${timeoutMs} ms; got ${JSON.stringify(this.events)}; stderr: ${this.stderr}`,
          ),
        )
      }, timeoutMs)
      this.#waiters.push({
        match: test,
        resolve: (e) => {
          clearTimeout(timer)
          resolve(e)
        },
      })
    })
  }
}

/** Resolves with the exit status of a child. */
export function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode })
  }
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
}
