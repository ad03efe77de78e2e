/**
 * `npm run demo`: a whole session on one machine. Starts a local "remote" (a network namespace with an sshd and an
 * ipyparallel controller that only listens inside it), runs `ipp-tunnel engines -n 2 --mpi` through one ssh
 * connection, computes π on the engines with `ipp-tunnel px` (each MPI rank sums its share, allreduce adds them),
 * prints the result and the timings, and removes everything again, also on Ctrl-C.
 *
 * The program is `src/cli/demo.ts` (`npm run demo`; as root: network namespaces need it).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'

import { startLocalRemote } from './remote.js'

export { startLocalRemote, type LocalRemote, type LocalRemoteOptions } from './remote.js'
export { createNetworkNamespace, type NetworkNamespace, type NetworkNamespaceOptions } from './netns.js'
export { sshdConfig, type SshdConfigOptions } from './sshd-config.js'

const CLI = fileURLToPath(new URL('../../../bin/ipp-tunnel.js', import.meta.url))

/** What the engines compute: π by the midpoint rule, the terms dealt out by MPI rank. */
const PI_CODE = `
from mpi4py import MPI
comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
n = 2_000_000
h = 1.0 / n
part = h * sum(4.0 / (1.0 + ((i + 0.5) * h) ** 2) for i in range(rank, n, size))
pi = comm.allreduce(part, op=MPI.SUM)
`

type Event = Readonly<Record<string, unknown>>

/** JSON lines of a child's stdout; its stderr is kept for error messages. */
class Events {
  readonly seen: Event[] = []
  stderr = ''
  readonly #waiters: { test: (e: Event) => boolean; resolve: (e: Event) => void }[] = []

  constructor(child: ChildProcess) {
    if (child.stdout) {
      createInterface({ input: child.stdout }).on('line', (line) => {
        if (!line.startsWith('{')) return
        const event = JSON.parse(line) as Event
        this.seen.push(event)
        for (const w of [...this.#waiters]) {
          if (!w.test(event)) continue
          this.#waiters.splice(this.#waiters.indexOf(w), 1)
          w.resolve(event)
        }
      })
    }
    child.stderr?.on('data', (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-20_000)
    })
  }

  wait(name: string, child: ChildProcess, signal: AbortSignal, timeoutMs = 120_000): Promise<Event> {
    if (signal.aborted) return Promise.reject(new Error('interrupted'))
    const seen = this.seen.find((e) => e.event === name || e.event === 'error')
    if (seen)
      return seen.event === 'error' ? Promise.reject(failure(seen, this.stderr)) : Promise.resolve(seen)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => done(new Error(`no "${name}" in ${timeoutMs} ms:\n${this.stderr}`)),
        timeoutMs,
      )
      const onExit = (code: number | null) =>
        done(new Error(`ipp-tunnel exited with status ${String(code)} before "${name}":\n${this.stderr}`))
      const onAbort = () => done(new Error('interrupted'))
      const done = (err: Error | undefined, event?: Event) => {
        clearTimeout(timer)
        child.off('exit', onExit)
        signal.removeEventListener('abort', onAbort)
        if (err === undefined && event !== undefined) resolve(event)
        else reject(err ?? new Error('no event'))
      }
      child.once('exit', onExit)
      signal.addEventListener('abort', onAbort, { once: true })
      this.#waiters.push({
        test: (e) => e.event === name || e.event === 'error',
        resolve: (e) => (e.event === 'error' ? done(failure(e, this.stderr)) : done(undefined, e)),
      })
    })
  }
}

function failure(event: Event, stderr: string): Error {
  return new Error(`ipp-tunnel: ${String(event.code)}: ${String(event.message)}\n${stderr.slice(-4000)}`)
}

function exitOf(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode)
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)))
}

async function stop(child: ChildProcess): Promise<number | null> {
  const exit = exitOf(child)
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
  const code = await exit
  clearTimeout(timer)
  return code
}

/** The figures of one demo run. */
export interface DemoResult {
  readonly pi: number
  readonly parts: readonly { engine: number; rank: number; part: number }[]
  readonly timings: Readonly<Record<string, number>>
}

/**
 * Runs the demo: remote up, engines through the tunnel, π on the engines, everything torn down again.
 * `log` receives the lines to show a person; `signal` aborts (and still cleans up).
 *
 * @example
 * const { pi, timings } = await runDemo({ log: console.log })
 */
export async function runDemo(
  options: { engines?: number; log?: (line: string) => void; signal?: AbortSignal } = {},
): Promise<DemoResult> {
  const log = options.log ?? (() => undefined)
  const signal = options.signal ?? new AbortController().signal
  const n = options.engines ?? 2
  const started = performance.now()
  const since = (from: number) => Math.round(performance.now() - from)
  const children: ChildProcess[] = []
  const remote = await startLocalRemote()
  try {
    const remoteMs = since(started)
    log(`remote up in ${remoteMs} ms: sshd at ${remote.destination} in network namespace ${remote.netns};`)
    log(`  the controller listens on 127.0.0.1 inside it, so from here only ssh reaches it`)
    signal.throwIfAborted()
    const ssh = ['--identity', remote.identity, '--known-hosts', remote.knownHosts]

    const launched = performance.now()
    const engines = spawn(
      process.execPath,
      [CLI, 'engines', remote.engineFile, '-n', String(n), '--mpi', '--json', ...ssh],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    )
    children.push(engines)
    const events = new Events(engines)
    const ready = await events.wait('ready', engines, signal)
    const forwards = Array.isArray(ready.forwards) ? ready.forwards.length : 0
    log(`$ ipp-tunnel engines ${remote.engineFile} -n ${n} --mpi`)
    log(`  tunnel ready in ${String(ready.ms)} ms: ${forwards} forwards over one ssh connection`)
    await events.wait('registered', engines, signal)
    // An engine has its id once the registration reply arrives; the controller counts it after its first heartbeat.
    while (remote.connectedEngines() < n) {
      signal.throwIfAborted()
      if (engines.exitCode !== null) throw new Error(`ipp-tunnel engines exited:\n${events.stderr}`)
      await sleep(20)
    }
    const registeredMs = since(launched)
    log(`  ${n} MPI engines registered with the controller ${registeredMs} ms after launch`)

    log(
      `$ ipp-tunnel px ${remote.clientFile} <π by the midpoint rule, allreduce over MPI> --expr rank --expr part --expr pi`,
    )
    const pxStarted = performance.now()
    const px = spawn(
      process.execPath,
      [
        CLI,
        'px',
        remote.clientFile,
        PI_CODE,
        '--expr',
        'rank',
        '--expr',
        'part',
        '--expr',
        'pi',
        '--json',
        ...ssh,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    )
    children.push(px)
    let stdout = ''
    let stderr = ''
    px.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    px.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const onAbort = () => px.kill('SIGTERM')
    signal.addEventListener('abort', onAbort, { once: true })
    const pxStatus = await exitOf(px)
    signal.removeEventListener('abort', onAbort)
    signal.throwIfAborted()
    const pxMs = since(pxStarted)
    const line = stdout.trim().split('\n').at(-1) ?? ''
    if (pxStatus !== 0)
      throw new Error(`ipp-tunnel px exited with status ${String(pxStatus)}:\n${stdout}${stderr}`)
    const answer = JSON.parse(line) as {
      results: { engine?: number; status: string; expressions: Record<string, string | null> }[]
    }
    const parts = answer.results.map((r) => ({
      engine: r.engine ?? -1,
      rank: Number(r.expressions.rank),
      part: Number(r.expressions.part),
    }))
    const pi = Number(answer.results[0]?.expressions.pi)
    for (const p of parts) log(`  engine ${p.engine} (MPI rank ${p.rank}): its share ${p.part}`)
    log(`  π ≈ ${pi} (error ${Math.abs(pi - Math.PI).toExponential(1)}), in ${pxMs} ms`)

    const stopping = performance.now()
    const status = await stop(engines)
    if (status !== 0)
      throw new Error(`ipp-tunnel engines exited with status ${String(status)}:\n${events.stderr}`)
    const stopMs = since(stopping)
    log(`engines stopped and tunnel closed in ${stopMs} ms`)
    const timings = {
      remoteMs,
      tunnelMs: Number(ready.ms),
      registeredMs,
      pxMs,
      stopMs,
      totalMs: since(started),
    }
    return { pi, parts, timings }
  } finally {
    await Promise.all(children.map((c) => stop(c)))
    await remote.close()
  }
}
