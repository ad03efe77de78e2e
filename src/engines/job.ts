import { EventEmitter } from 'node:events'
import { realpathSync } from 'node:fs'
import { rm, writeFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'

import { readConnectionFile } from '../connection-file/index.js'
import { IppTunnelError, isIppTunnelError } from '../errors/index.js'
import { checkWritableDir, currentUid, makePrivateTempDir } from '../safe-fs/index.js'
import { nodeSshArgv, type NodeSshSettings } from './across.js'
import { requireEngineInfo } from './engine-file.js'
import {
  batchScript,
  cancelJob,
  jobEnding,
  jobState,
  readNewLines,
  sbatchArgs,
  stopJob,
  submitBatch,
} from './slurm.js'

/** Options of {@link submitEngines}. */
export interface SubmitEnginesOptions {
  /** The engine file, on a file system the job's nodes share. */
  readonly file: string
  readonly n: number
  /** Nodes of the job (default: as Slurm places `n` tasks). */
  readonly nodes?: number | undefined
  /** Follow the job until it ends (default true); false: resolve once it is submitted. */
  readonly follow?: boolean | undefined
  /** The job's output file (`%j`: the job id); default `./ipp-tunnel-engines-%j.out`. */
  readonly outputPath?: string | undefined
  /** As {@link StartEnginesOptions}: what the job's `engines --slurm` runs. */
  readonly mpi?: boolean | undefined
  readonly mpiexec?: string | undefined
  readonly engineCommand?: string | undefined
  readonly listen?: 'tcp' | 'unix' | undefined
  /** `--verbose` flags for the job's command. */
  readonly verbose?: number | undefined
  /** The ssh settings of the job's node tunnels. */
  readonly nodeSsh?: NodeSshSettings | undefined
  /** The user's sbatch arguments, after ours. */
  readonly sbatchArgs?: readonly string[] | undefined
  /** The command that runs ipp-tunnel's CLI in the job (default: node and this package's bin/ipp-tunnel.js). */
  readonly ippTunnel?: readonly string[] | undefined
  readonly env?: NodeJS.ProcessEnv | undefined
}

/** Events of {@link EngineJob}. */
export interface EngineJobEvents {
  submitted: [{ job: string; output: string }]
  /** The job's state changed (PENDING, RUNNING, COMPLETING…). */
  'job-state': [{ job: string; state: string }]
  /** A JSON event the job's `engines --slurm --json` printed (`node-ready`, `registered`…). */
  'job-event': [{ job: string; event: { event: string } & Record<string, unknown> }]
  /** Any other line of the job's output. */
  'job-output': [{ job: string; line: string }]
  'job-ended': [{ job: string; state: string; exitCode: string }]
}

/** How often the follower looks at the job's state and output file. */
const POLL_MS = 500
/** Between looks at a job that is being stopped. */
const STOPPING_POLL_MS = 100
/** After SIGTERM to the batch step, how long it has to stop in order before `scancel` of the whole job. */
const ORDERLY_STOP_MS = 20_000
/** After `scancel`, how long until the job must have left the queue (Slurm's KillWait is 30 s by default). */
const CANCEL_MS = 60_000

const BIN = fileURLToPath(new URL('../../../bin/ipp-tunnel.js', import.meta.url))

/**
 * A batch job running `ipp-tunnel engines FILE --slurm` in its allocation, followed: its JSON events come from its
 * output file. Created by {@link submitEngines}.
 */
export class EngineJob extends EventEmitter<EngineJobEvents> {
  readonly #options: SubmitEnginesOptions
  readonly #done: Promise<{ job: string | undefined }>
  #stopping = false
  #wake: () => void = () => undefined

  constructor(options: SubmitEnginesOptions) {
    super()
    this.#options = options
    this.#done = new Promise<void>((r) => setImmediate(r)).then(() => this.#run())
    this.#done.catch(() => undefined)
  }

  /**
   * Resolves once the job left the queue (or was submitted, without `follow`); rejects with `E_SLURM` when it
   * ended other than COMPLETED with exit 0 (not after a stop), `E_USAGE`/`E_CONNFILE_*` before any job.
   */
  get done(): Promise<{ job: string | undefined }> {
    return this.#done
  }

  /**
   * Stops the job: SIGTERM to ipp-tunnel in its batch step (which stops engines and node tunnels in order), then
   * `scancel` after 20 s; resolves once it left the queue. Never rejects; safe to call twice.
   */
  stop(): Promise<void> {
    this.#stopping = true
    this.#wake()
    return this.#done.then(
      () => undefined,
      () => undefined,
    )
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop()
  }

  async #run(): Promise<{ job: string | undefined }> {
    const o = this.#options
    const env = o.env ?? process.env
    const file = resolve(o.file)
    // A wrong file fails here, not in a job that may wait in the queue first.
    const { info } = await readConnectionFile(file)
    requireEngineInfo(info, file)
    const ippTunnel = o.ippTunnel ?? [process.execPath, realpathSync(BIN)]
    const inner = [
      ...ippTunnel,
      'engines',
      file,
      '-n',
      String(o.n),
      '--slurm',
      '--json',
      ...(o.mpi === true ? ['--mpi'] : []),
      ...(o.mpiexec !== undefined ? ['--mpiexec', o.mpiexec] : []),
      ...(o.engineCommand !== undefined ? ['--engine-cmd', o.engineCommand] : []),
      ...(o.listen !== undefined ? ['--listen', o.listen] : []),
      ...Array.from({ length: o.verbose ?? 0 }, () => '--verbose'),
      ...nodeSshArgv(o.nodeSsh ?? {}),
    ]
    const pattern = resolve(o.outputPath ?? 'ipp-tunnel-engines-%j.out')
    const follow = o.follow ?? true
    // What is followed must be what the job writes: a directory where no one else can plant or swap the file.
    const outDir = dirname(pattern)
    if (follow && !outDir.includes('%')) await checkWritableDir(outDir, 'job output directory')
    // sbatch copies the script into the job when it submits it: it is not needed afterwards.
    const scriptDir = await makePrivateTempDir('ipp-tunnel-sbatch-')
    let job: string
    try {
      const script = join(scriptDir, 'ipp-tunnel-engines.sh')
      await writeFile(script, batchScript(inner), { mode: 0o700 })
      const args = [...sbatchArgs({ nodes: o.nodes, tasks: o.n, output: pattern }), ...(o.sbatchArgs ?? [])]
      job = await submitBatch(script, args, env)
    } finally {
      await rm(scriptDir, { recursive: true, force: true })
    }
    const outPath = pattern.replaceAll('%j', job)
    this.emit('submitted', { job, output: outPath })
    if (!follow) return { job }
    if (outDir.includes('%')) {
      await checkWritableDir(dirname(outPath), 'job output directory').catch(async (err: unknown) => {
        await cancelJob(job, env).catch(() => undefined)
        throw err
      })
    }
    await this.#follow(job, outPath, env)
    return { job }
  }

  async #follow(job: string, outPath: string, env: NodeJS.ProcessEnv): Promise<void> {
    let offset = 0
    let state = ''
    let stopping: { at: number; cancelled: boolean } | undefined
    const owner = currentUid()
    const drain = async () => {
      const read = await readNewLines(outPath, offset, { owner }).catch(async (err: unknown) => {
        // someone else's file at the path: what it says is not the job's; the job is not left running unfollowed
        await cancelJob(job, env).catch(() => undefined)
        if (isIppTunnelError(err))
          throw new IppTunnelError(err.code, `${err.message}; job ${job} was cancelled`)
        throw err
      })
      offset = read.offset
      for (const line of read.lines) this.#passOn(line, job)
    }
    for (;;) {
      await drain()
      const now = await jobState(job, env)
      if (now !== state) {
        state = now
        if (state !== 'gone') this.emit('job-state', { job, state })
      }
      if (state === 'gone') break
      if (this.#stopping && stopping === undefined) {
        stopping = { at: performance.now(), cancelled: false }
        await stopJob(job, state, env)
      }
      if (
        stopping !== undefined &&
        !stopping.cancelled &&
        performance.now() - stopping.at > ORDERLY_STOP_MS
      ) {
        stopping.cancelled = true
        await cancelJob(job, env).catch(() => undefined)
      }
      if (stopping !== undefined && performance.now() - stopping.at > ORDERLY_STOP_MS + CANCEL_MS) {
        throw new IppTunnelError(
          'E_SLURM',
          `job ${job} is still in the queue (${state}) ${String((ORDERLY_STOP_MS + CANCEL_MS) / 1000)} s after it was cancelled; see squeue -j ${job}`,
        )
      }
      // once stopping, the next look follows soon (not at once: squeue in a loop for up to 80 s is a busy wait)
      if (this.#stopping) await sleep(STOPPING_POLL_MS)
      else await this.#nap()
    }
    await drain()
    const ending = await jobEnding(job, env)
    this.emit('job-ended', {
      job,
      state: ending?.state ?? 'unknown',
      exitCode: ending?.exitCode ?? 'unknown',
    })
    if (stopping !== undefined) return
    if (ending === undefined || (ending.state === 'COMPLETED' && ending.exitCode === '0:0')) return
    throw new IppTunnelError(
      'E_SLURM',
      `job ${job} ended ${ending.state} (exit ${ending.exitCode}); its output is in ${outPath}`,
    )
  }

  /** Sleeps a poll period, or until {@link stop}. */
  async #nap(): Promise<void> {
    const woken = new Promise<void>((resolveWoken) => (this.#wake = resolveWoken))
    await Promise.race([sleep(POLL_MS), woken])
    this.#wake = () => undefined
  }

  /** A line of the job's output: its JSON events, or a line. */
  #passOn(line: string, job: string): void {
    if (line.startsWith('{')) {
      try {
        const event = JSON.parse(line) as Record<string, unknown>
        if (typeof event.event === 'string') {
          this.emit('job-event', { job, event: { ...event, event: event.event } })
          return
        }
      } catch {
        // not an event: passed on as it is
      }
    }
    this.emit('job-output', { job, line })
  }
}

/**
 * Submits a batch job (sbatch) that runs N engines with `engines FILE --slurm` in its allocation and follows it
 * (what `ipp-tunnel engines --sbatch` runs). Starts on the next tick: attach listeners first.
 *
 * @example
 * const job = submitEngines({ file: '/shared/ipcontroller-engine.json', n: 8, nodes: 2 })
 * job.on('job-event', ({ event }) => console.log(event.event))
 * await job.done
 */
export function submitEngines(options: SubmitEnginesOptions): EngineJob {
  return new EngineJob(options)
}
