import { writeFile, rm } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

import {
  batchScript,
  cancelJob,
  jobEnding,
  jobState,
  readNewLines,
  sbatchArgs,
  stopJob,
  submitBatch,
} from '../engines/index.js'
import { IppTunnelError, isIppTunnelError } from '../errors/index.js'
import { checkWritableDir, currentUid, makePrivateTempDir } from '../safe-fs/index.js'
import { EXIT, type Output } from './output.js'
import { untilSignal } from './signals.js'
import { visible } from './visible.js'

/** What `engines --sbatch` needs from its command line. */
export interface SbatchEnginesOptions {
  readonly output: Output
  readonly file: string
  readonly tasks: number
  readonly nodes?: string | undefined
  readonly follow: boolean
  /** The job's output file (`%j`: the job id); default `./ipp-tunnel-engines-%j.out`. */
  readonly outputPath?: string | undefined
  /** The command the job runs: our own `engines FILE -n N --slurm --json …`, absolute paths. */
  readonly inner: readonly string[]
  /** The user's sbatch arguments (after `--`), after ours. */
  readonly sbatchArgs: readonly string[]
}

/** How often the follower looks at the job's state and output file. */
const POLL_MS = 500
/** After SIGTERM to the batch step, how long it has to stop in order before `scancel` of the whole job. */
const ORDERLY_STOP_MS = 20_000
/** After `scancel`, how long until the job must have left the queue (Slurm's KillWait is 30 s by default). */
const CANCEL_MS = 60_000

function nodeCount(text: string | undefined): number | undefined {
  if (text === undefined) return undefined
  const n = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN
  if (!Number.isInteger(n) || n < 1 || n > 100_000) {
    throw new IppTunnelError('E_USAGE', `-N needs a whole number of nodes, got "${text}"`)
  }
  return n
}

/**
 * `engines FILE --sbatch`: submits a batch job running `engines FILE --slurm` in its allocation, prints the job
 * id (`submitted`), then follows it: the job's JSON events (from its output file) are passed on with the job
 * id, its other lines go to stderr, and the command ends when the job ends, with its status. SIGINT/SIGTERM
 * stops the job (SIGTERM to ipp-tunnel in the batch step, then `scancel`) and waits until it has left the queue.
 */
export async function sbatchEngines(options: SbatchEnginesOptions): Promise<number> {
  const { output } = options
  const nodes = nodeCount(options.nodes)
  const pattern = resolve(options.outputPath ?? 'ipp-tunnel-engines-%j.out')
  output
    .format(
      'submitted',
      (e) => `submitted batch job ${String(e.job)}; its output goes to ${String(e.output)}`,
    )
    .format('job-state', (e) => `job ${String(e.job)}: ${String(e.state)}`)
    .format('job-ended', (e) => `job ${String(e.job)} ended: ${String(e.state)} (exit ${String(e.exitCode)})`)

  // From here on, a signal stops the job we submit rather than leaving it queued.
  const signals = untilSignal()
  try {
    return await submitAndFollow(options, nodes, pattern, signals)
  } finally {
    signals.dispose()
  }
}

async function submitAndFollow(
  options: SbatchEnginesOptions,
  nodes: number | undefined,
  pattern: string,
  signals: ReturnType<typeof untilSignal>,
): Promise<number> {
  const { output, file } = options
  const env = process.env
  // What is followed must be what the job writes: a directory where no one else can plant or swap the file.
  const outDir = dirname(pattern)
  if (options.follow && !outDir.includes('%')) await checkWritableDir(outDir, 'job output directory')
  // sbatch copies the script into the job when it submits it: it is not needed afterwards.
  const scriptDir = await makePrivateTempDir('ipp-tunnel-sbatch-')
  let job: string
  try {
    const script = join(scriptDir, 'ipp-tunnel-engines.sh')
    await writeFile(script, batchScript(options.inner), { mode: 0o700 })
    const args = [...sbatchArgs({ nodes, tasks: options.tasks, output: pattern }), ...options.sbatchArgs]
    job = await submitBatch(script, args, env)
  } finally {
    await rm(scriptDir, { recursive: true, force: true })
  }
  const outPath = pattern.replaceAll('%j', job)
  output.emit({ event: 'submitted', file, job, output: outPath })
  if (!options.follow) return EXIT.ok
  if (outDir.includes('%')) {
    await checkWritableDir(dirname(outPath), 'job output directory').catch(async (err: unknown) => {
      await cancelJob(job, env).catch(() => undefined)
      throw err
    })
  }

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
    for (const line of read.lines) passOn(output, line, job)
  }
  for (;;) {
    await drain()
    const now = await jobState(job, env)
    if (now !== state) {
      state = now
      if (state !== 'gone') output.emit({ event: 'job-state', file, job, state })
    }
    if (state === 'gone') break
    if (signals.received() !== undefined && stopping === undefined) {
      stopping = { at: performance.now(), cancelled: false }
      await stopJob(job, state, env)
    }
    if (stopping !== undefined && !stopping.cancelled && performance.now() - stopping.at > ORDERLY_STOP_MS) {
      stopping.cancelled = true
      await cancelJob(job, env).catch(() => undefined)
    }
    if (stopping !== undefined && performance.now() - stopping.at > ORDERLY_STOP_MS + CANCEL_MS) {
      throw new IppTunnelError(
        'E_SLURM',
        `job ${job} is still in the queue (${state}) ${String((ORDERLY_STOP_MS + CANCEL_MS) / 1000)} s after it was cancelled; see squeue -j ${job}`,
      )
    }
    await Promise.race([sleep(POLL_MS), signals.promise])
  }
  await drain()
  const ending = await jobEnding(job, env)
  output.emit({
    event: 'job-ended',
    file,
    job,
    state: ending?.state ?? 'unknown',
    exitCode: ending?.exitCode ?? 'unknown',
  })
  if (stopping !== undefined) return EXIT.ok
  if (ending === undefined || (ending.state === 'COMPLETED' && ending.exitCode === '0:0')) return EXIT.ok
  throw new IppTunnelError(
    'E_SLURM',
    `job ${job} ended ${ending.state} (exit ${ending.exitCode}); its output is in ${outPath}`,
  )
}

/** A line of the job's output: its JSON events with the job id, anything else on stderr. */
function passOn(output: Output, line: string, job: string): void {
  if (line.startsWith('{')) {
    try {
      const event = JSON.parse(line) as Record<string, unknown>
      if (typeof event.event === 'string') {
        output.emit({ ...event, event: event.event, job })
        return
      }
    } catch {
      // not an event: printed as it is
    }
  }
  process.stderr.write(`[job ${job}] ${visible(line)}\n`)
}
