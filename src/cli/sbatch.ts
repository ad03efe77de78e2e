import { submitEngines, type SubmitEnginesOptions } from '../engines/index.js'
import { IppTunnelError } from '../errors/index.js'
import { EXIT, type Output } from './output.js'
import { untilSignal } from './signals.js'
import { visible } from './visible.js'

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
 * id (`submitted`), then follows it ({@link submitEngines}): the job's JSON events (from its output file) are passed
 * on with the job id, its other lines go to stderr, and the command ends when the job ends, with its status.
 * SIGINT/SIGTERM stops the job (SIGTERM to ipp-tunnel in the batch step, then `scancel`) and waits until it has
 * left the queue.
 */
export async function sbatchEngines(
  output: Output,
  options: Omit<SubmitEnginesOptions, 'nodes'> & { readonly nodes: string | undefined },
): Promise<number> {
  const { file } = options
  const nodes = nodeCount(options.nodes)
  output
    .format(
      'submitted',
      (e) => `submitted batch job ${String(e.job)}; its output goes to ${String(e.output)}`,
    )
    .format('job-state', (e) => `job ${String(e.job)}: ${String(e.state)}`)
    .format('job-ended', (e) => `job ${String(e.job)} ended: ${String(e.state)} (exit ${String(e.exitCode)})`)
  const job = submitEngines({ ...options, nodes })
  job.on('submitted', (e) => output.emit({ event: 'submitted', file, job: e.job, output: e.output }))
  job.on('job-state', (e) => output.emit({ event: 'job-state', file, job: e.job, state: e.state }))
  job.on('job-event', (e) => output.emit({ ...e.event, job: e.job }))
  job.on('job-output', (e) => process.stderr.write(`[job ${e.job}] ${visible(e.line)}\n`))
  job.on('job-ended', (e) =>
    output.emit({ event: 'job-ended', file, job: e.job, state: e.state, exitCode: e.exitCode }),
  )
  // From here on, a signal stops the job we submit rather than leaving it queued.
  const signals = untilSignal(() => void job.stop())
  try {
    await job.done
    return EXIT.ok
  } finally {
    signals.dispose()
  }
}
