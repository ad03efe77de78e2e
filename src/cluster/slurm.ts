import { posix } from 'node:path'

import { splitCommand } from '../engines/index.js'
import type { RemoteProcessSpec } from '../remote/index.js'
import { shellQuote, type Link } from '../ssh/index.js'

/** `$0` of the engines' job keeper: how `list` and `attach` tell a Slurm engines process from the others. */
export const SLURM_KEEPER = 'ipp-tunnel-slurm-engines'

/** The file, in the keeper's private directory (0700), that holds the job id (0600). */
export const JOB_FILE = 'job'

/** The mark of the keeper's progress lines on its stdout: `@@ipp-tunnel-job@@ JOB STATE`. */
const JOB_MARK = '@@ipp-tunnel-job@@'

/**
 * The job keeper, a `/bin/sh` script run under the remote supervisor as the cluster's engines process: it submits
 * the batch job (`sbatch "$@"`), writes its id into `$dir/job` (0600), says the job's state on each change, and
 * ends with the job. Whatever ends the keeper (`cluster stop`, the supervisor's lease running out, SIGINT of the
 * starting command) cancels the job and waits (≤ 10 s) until squeue no longer lists it: the supervisor, not the
 * laptop, owns the job, so `--persist` and a vanished laptop end it too.
 */
const KEEPER = String.raw`dir=$1; shift
umask 077
job=
finish() {
  trap '' TERM INT HUP
  [ -n "$job" ] || exit 0
  scancel "$job"
  i=0
  while [ $i -lt 40 ] && [ -n "$(squeue -h -j "$job" -o %T 2>/dev/null)" ]; do sleep 0.25; i=$((i + 1)); done
  exit 0
}
trap finish TERM INT HUP
out=$(sbatch "$@") || exit 1
job=$(printf '%s\n' "$out" | cut -d';' -f1)
case $job in ''|*[!0-9]*) echo "sbatch printed no job id: $out" >&2; exit 1 ;; esac
printf '%s\n' "$job" >"$dir/job"
echo "@@ipp-tunnel-job@@ $job SUBMITTED"
listed() { squeue -h -j "$job" -o %T 2>&1; }
last=
while :; do
  if state=$(listed); then
    [ -z "$state" ] && break
    if [ "$state" != "$last" ]; then echo "@@ipp-tunnel-job@@ $job $state"; last=$state; fi
  else
    case $state in *"Invalid job id"*) break ;; *) echo "$state" >&2 ;; esac
  fi
  sleep 1 &
  wait $!
done
echo "@@ipp-tunnel-job@@ $job GONE"
`

/**
 * The words of `--slurm-args`, split as a shell would split plain and quoted words (no variables, no globs): they
 * reach sbatch as argv, never through a shell.
 *
 * @example slurmArgsOf("-N 2 --comment='a b'") // ['-N', '2', '--comment=a b']
 * @throws IppTunnelError `E_USAGE` on an unclosed quote.
 */
export function slurmArgsOf(text: string | undefined): string[] {
  return text === undefined || text.trim() === '' ? [] : splitCommand(text, '--slurm-args')
}

/** What {@link slurmEnginesSpec} needs. */
export interface SlurmEnginesOptions {
  readonly name: string
  readonly python: string
  readonly n: number
  /** The controller's `--profile=`, `--cluster-id=`, `--ipython-dir=` words (the engines find its file by them). */
  readonly common: readonly string[]
  /** The user's `--slurm-args` (see {@link slurmArgsOf}), passed to sbatch after ours (so they win). */
  readonly slurmArgs: readonly string[]
  readonly env?: Readonly<Record<string, string>> | undefined
  readonly persistSeconds?: number | undefined
}

/**
 * The engines as one batch job: a keeper process (see above) that runs `sbatch --parsable … --wrap 'srun PYTHON -m
 * ipyparallel.engine …'` with `--ntasks=N` and the job's output in the keeper's private directory, so that stopping
 * the keeper removes it. The batch script's line is quoted word by word ({@link shellQuote}).
 *
 * @example slurmEnginesSpec({ name: 'cluster-default-engines', python: 'python3', n: 4, common, slurmArgs: ['-N', '2'] })
 */
export function slurmEnginesSpec(options: SlurmEnginesOptions): RemoteProcessSpec {
  const engine = [options.python, '-m', 'ipyparallel.engine', ...options.common]
  const script = ['exec', 'srun', ...engine].map(shellQuote).join(' ')
  const sbatch = [
    '--parsable',
    `--job-name=ipp-tunnel-${options.name}`,
    `--ntasks=${String(options.n)}`,
    `--output={dir}/slurm-%j.out`,
    `--wrap=${script}`,
    ...options.slurmArgs,
  ]
  return {
    name: options.name,
    argv: ['/bin/sh', '-c', KEEPER, SLURM_KEEPER, '{dir}', ...sbatch],
    ...(options.env !== undefined && { env: options.env }),
    ...(options.persistSeconds !== undefined && { persistSeconds: options.persistSeconds }),
    // the keeper's scancel and its wait for the job to leave squeue (10 s) come before the supervisor's SIGKILL
    graceSeconds: 12,
  }
}

/** Whether a remote process's argv is a Slurm engines keeper of ours, and how many engines it asked for. */
export function slurmEnginesOf(argv: readonly string[] | undefined): { n: number | undefined } | undefined {
  if (argv?.[3] !== SLURM_KEEPER) return undefined
  const word = argv.find((w) => w.startsWith('--ntasks='))
  const n = word === undefined ? NaN : Number(word.slice('--ntasks='.length))
  return { n: Number.isInteger(n) ? n : undefined }
}

/** A job's progress as the keeper says it: `SUBMITTED`, then squeue's states (`PENDING`, `RUNNING`…), `GONE`. */
export interface JobProgress {
  readonly job: string
  readonly state: string
}

/**
 * Reads the keeper's stdout, chunk by chunk, into {@link JobProgress} lines (other lines are ignored).
 *
 * @example const read = jobProgressReader(); read(Buffer.from('@@ipp-tunnel-job@@ 7 RUNNING\n')) // [{ job: '7', state: 'RUNNING' }]
 */
export function jobProgressReader(): (chunk: Buffer) => JobProgress[] {
  let partial = ''
  return (chunk) => {
    const lines = (partial + chunk.toString('utf8')).split('\n')
    partial = (lines.pop() ?? '').slice(-4096)
    return lines.flatMap((line) => {
      const m = new RegExp(`^${JOB_MARK} (\\d+) ([A-Z_]+)$`, 'u').exec(line.trim())
      return m?.[1] !== undefined && m[2] !== undefined ? [{ job: m[1], state: m[2] }] : []
    })
  }
}

/** The job id the keeper wrote into its private directory (undefined when there is none yet, or it is not one). */
export async function readJobId(link: Link, keeperDir: string | undefined): Promise<string | undefined> {
  if (keeperDir === undefined) return undefined
  const sftp = await link.sftp().catch(() => undefined)
  if (sftp === undefined) return undefined
  const text = await new Promise<string>((resolve) =>
    sftp.readFile(posix.join(keeperDir, JOB_FILE), (err: Error | null | undefined, data: Buffer) =>
      resolve(err ? '' : data.subarray(0, 64).toString('utf8')),
    ),
  )
  return /^\d+\n?$/u.test(text) ? text.trim() : undefined
}

/**
 * Starts the controller (`python -m ipyparallel.controller`) listening on every address (`--ip=*`), with the
 * login node's address as `--location` (what engines on compute nodes connect to): its host name, unless that
 * resolves to loopback (then the address the ssh connection came in on, from `$SSH_CONNECTION`).
 */
const LOCATE = String.raw`import os, socket, sys
where = socket.gethostname()
try:
    loopback = socket.gethostbyname(where).startswith('127.')
except OSError:
    loopback = True
conn = os.environ.get('SSH_CONNECTION', '').split()
if loopback and len(conn) > 2:
    where = conn[2]
os.execv(sys.executable, [sys.executable, '-m', 'ipyparallel.controller'] + sys.argv[1:] + ['--ip=*', '--location=' + where])
`

/** The argv of a controller that engines on compute nodes reach (see LOCATE); `common` as for the engines. */
export function reachableControllerArgv(python: string, common: readonly string[]): string[] {
  return [python, '-c', LOCATE, ...common]
}
