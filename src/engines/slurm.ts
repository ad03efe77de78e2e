import { execFile } from 'node:child_process'
import { constants } from 'node:fs'
import { open } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'

import { IppTunnelError } from '../errors/index.js'
import { shellQuote } from '../ssh/index.js'

const execFileAsync = promisify(execFile)

/** The name of the job steps that run our engines (`srun --job-name`), so that only those are waited for. */
export const ENGINE_STEP_NAME = 'ipp-tunnel-engines'

/** The name of the step of node tunnels. */
export const NODE_STEP_NAME = 'ipp-tunnel-nodes'

/** How long one Slurm command (squeue, scontrol, scancel, sbatch) may take. */
const COMMAND_TIMEOUT_MS = 15_000

async function slurmCommand(
  program: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv,
): Promise<string> {
  try {
    return (await execFileAsync(program, args, { env, timeout: COMMAND_TIMEOUT_MS })).stdout
  } catch (cause) {
    const err = cause as NodeJS.ErrnoException & { stderr?: string; killed?: boolean }
    if (err.code === 'ENOENT') {
      throw new IppTunnelError('E_SPAWN', `cannot run ${program}: not found on PATH`, { cause })
    }
    const why =
      err.killed === true
        ? `no answer within ${String(COMMAND_TIMEOUT_MS / 1000)} s`
        : (err.stderr ?? '').trim()
    throw new IppTunnelError('E_SLURM', `${program} ${args.join(' ')}: ${why || err.message}`, { cause })
  }
}

/** A job step, as `squeue --steps` lists it. */
export interface SlurmStep {
  readonly id: string
  readonly name: string
}

/**
 * The job steps of `job` running now.
 *
 * @example await jobSteps('42', process.env) // [{ id: '42.0', name: 'ipp-tunnel-nodes' }]
 * @throws IppTunnelError `E_SLURM` when squeue fails, `E_SPAWN` when there is no squeue.
 */
export async function jobSteps(job: string, env: NodeJS.ProcessEnv): Promise<SlurmStep[]> {
  const out = await slurmCommand('squeue', ['-h', '--steps', '-j', job, '-o', '%i %j'], env)
  return out
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter(([id]) => id !== undefined && id !== '')
    .map(([id, name]) => ({ id: id ?? '', name: name ?? '' }))
}

/**
 * Waits until the engine steps of `job` ({@link ENGINE_STEP_NAME}, started by srun or by OpenMPI's mpiexec) are
 * gone: a launcher that was killed leaves its step behind while its tasks wind down. Steps still there after
 * `graceMs` are cancelled (`scancel`). Resolves with the steps left after `timeoutMs` (none, normally).
 *
 * @example await settleEngineSteps('42', process.env)
 */
export async function settleEngineSteps(
  job: string,
  env: NodeJS.ProcessEnv,
  options: { graceMs?: number; timeoutMs?: number } = {},
): Promise<SlurmStep[]> {
  const started = performance.now()
  let cancelled = false
  for (;;) {
    const steps = (await jobSteps(job, env)).filter((s) => s.name === ENGINE_STEP_NAME)
    const elapsed = performance.now() - started
    if (steps.length === 0 || elapsed > (options.timeoutMs ?? 15_000)) return steps
    if (!cancelled && elapsed > (options.graceMs ?? 5000)) {
      cancelled = true
      await slurmCommand(
        'scancel',
        steps.map((s) => s.id),
        env,
      ).catch(() => undefined)
    }
    await sleep(250)
  }
}

/**
 * The words of `argv` as one `/bin/sh` command line, each quoted unless plain ({@link shellQuote}).
 *
 * @example shellLine(['echo', "it's"]) // `echo 'it'\''s'`
 */
export function shellLine(argv: readonly string[]): string {
  return argv.map(shellQuote).join(' ')
}

/**
 * The batch script `sbatch` runs: it `exec`s `argv` (our own `engines … --slurm`), so that the batch step's
 * process is ipp-tunnel itself and a signal to the batch step reaches it.
 *
 * @example batchScript(['/usr/bin/node', '/opt/ipp-tunnel/bin/ipp-tunnel.js', 'engines', file, '-n', '8', '--slurm'])
 */
export function batchScript(argv: readonly string[]): string {
  return `#!/bin/sh\n# Written by ipp-tunnel engines --sbatch.\nexec ${shellLine(argv)}\n`
}

/** The sbatch arguments of {@link submitBatch} before the user's own (which come last, and so win). */
export function sbatchArgs(options: {
  readonly nodes?: number | undefined
  readonly tasks: number
  readonly output: string
}): string[] {
  return [
    '--parsable',
    `--job-name=${ENGINE_STEP_NAME}`,
    ...(options.nodes === undefined ? [] : [`--nodes=${String(options.nodes)}`]),
    `--ntasks=${String(options.tasks)}`,
    `--output=${options.output}`,
    '--open-mode=append',
  ]
}

/**
 * Submits `script` (a file) with `sbatch --parsable ARGS… SCRIPT`: resolves with the job id.
 *
 * @example const job = await submitBatch(scriptPath, [...sbatchArgs({ tasks: 8, output }), '--time=1:00:00'], env)
 * @throws IppTunnelError `E_SLURM` when sbatch refuses the job, `E_SPAWN` when there is no sbatch.
 */
export async function submitBatch(
  script: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv,
): Promise<string> {
  const out = await slurmCommand('sbatch', [...args, script], env)
  const job = /^(\d+)/.exec(out.trim())?.[1]
  if (job === undefined) throw new IppTunnelError('E_SLURM', `sbatch printed no job id: ${out.trim()}`)
  return job
}

/** Where a job stands: its state while queued or running (`PENDING`, `RUNNING`…), or `gone` once it left squeue. */
export async function jobState(job: string, env: NodeJS.ProcessEnv): Promise<string> {
  const out = await slurmCommand('squeue', ['-h', '-j', job, '-o', '%T'], env).catch((err: unknown) => {
    // squeue says "Invalid job id specified" for a job that left the controller's memory.
    if (err instanceof IppTunnelError && /Invalid job id/i.test(err.message)) return ''
    throw err
  })
  return out.trim().split('\n')[0]?.trim() || 'gone'
}

/** How a job ended, as `scontrol show job` reports it (`COMPLETED`, `CANCELLED`, `FAILED`…; exit `0:0`). */
export async function jobEnding(
  job: string,
  env: NodeJS.ProcessEnv,
): Promise<{ state: string; exitCode: string } | undefined> {
  const out = await slurmCommand('scontrol', ['show', 'job', '-o', job], env).catch(() => '')
  const state = /\bJobState=(\S+)/.exec(out)?.[1]
  const exitCode = /\bExitCode=(\S+)/.exec(out)?.[1]
  return state === undefined ? undefined : { state, exitCode: exitCode ?? '' }
}

/**
 * Stops a job: a running one by SIGTERM to its batch step only (ipp-tunnel, which stops its engines and node
 * tunnels in order: a SIGTERM to every step at once has srun kill tasks before they remove their files), a
 * pending one by `scancel`.
 */
export async function stopJob(job: string, state: string, env: NodeJS.ProcessEnv): Promise<void> {
  if (state === 'RUNNING') {
    const signalled = await slurmCommand('scancel', ['--batch', '--signal=TERM', job], env).then(
      () => true,
      () => false,
    )
    if (signalled) return
  }
  await cancelJob(job, env)
}

/** `scancel JOB`: every step and the batch script get SIGTERM, then SIGKILL after Slurm's KillWait. */
export async function cancelJob(job: string, env: NodeJS.ProcessEnv): Promise<void> {
  await slurmCommand('scancel', [job], env)
}

/** The most of a job's output file read per look. */
const MAX_READ_BYTES = 1024 * 1024

/**
 * Reads what was appended to a file since `offset`: the complete lines, and the offset after them. A file not
 * there yet reads as empty (Slurm creates the job's output file when the job starts). With `owner`, the file must
 * be a regular file of that uid (not a symlink, a FIFO or another user's file planted at the path).
 *
 * @throws IppTunnelError `E_UNSAFE_PATH` (with `owner`) naming the path and what it is.
 */
export async function readNewLines(
  path: string,
  offset: number,
  options: { readonly owner?: number } = {},
): Promise<{ lines: string[]; offset: number }> {
  const { owner } = options
  const refuse = (what: string) =>
    new IppTunnelError('E_UNSAFE_PATH', `${path}: the job's output file ${what}; it is not followed`)
  let handle
  try {
    // never blocks on a FIFO planted at the path; a symlink there is not followed
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOFOLLOW)
  } catch (err) {
    if (owner !== undefined && (err as NodeJS.ErrnoException).code === 'ELOOP') {
      throw refuse('is a symbolic link')
    }
    return { lines: [], offset }
  }
  try {
    const stats = await handle.stat()
    if (owner !== undefined && !stats.isFile()) throw refuse('is not a regular file')
    if (owner !== undefined && stats.uid !== owner) {
      throw refuse(`is owned by uid ${stats.uid}, not you (${owner})`)
    }
    if (!stats.isFile() || stats.size <= offset) return { lines: [], offset }
    // a job that writes a lot is read a bounded piece per look
    const buffer = Buffer.alloc(Math.min(stats.size - offset, MAX_READ_BYTES))
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, offset)
    const text = buffer.subarray(0, bytesRead).toString('utf8')
    const end = text.lastIndexOf('\n')
    // a line longer than a whole piece is skipped rather than waited for forever
    if (end < 0) return { lines: [], offset: bytesRead === MAX_READ_BYTES ? offset + bytesRead : offset }
    return {
      lines: text.slice(0, end).split('\n'),
      offset: offset + Buffer.byteLength(text.slice(0, end + 1)),
    }
  } finally {
    await handle.close()
  }
}
