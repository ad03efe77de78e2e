import { posix } from 'node:path'

import { splitCommand } from '../engines/index.js'
import type { RemoteProcessSpec } from '../remote/index.js'
import { shellQuote, type Link } from '../ssh/index.js'
import { CONTROLLER_HEARTBEAT } from './heartbeat.js'

/** `$0` of the engines' job keeper: how `list` and `attach` tell a Slurm engines process from the others. */
export const SLURM_KEEPER = 'ipp-tunnel-slurm-engines'

/** `$0` of the keeper of a job that runs the controller too (`--controller slurm`), the cluster's controller process. */
export const SLURM_CLUSTER_KEEPER = 'ipp-tunnel-slurm-cluster'

/** The file, in the keeper's private directory, the batch script writes (0600): the first node's name and address. */
export const NODE_FILE = 'node'

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
const KEEPER_BODY = String.raw`job=
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
const KEEPER = `umask 077\ndir=$1; shift\n${KEEPER_BODY}`

/** The keeper of a whole-cluster job: it first writes the batch script (its second word) into `$dir/batch.sh`. */
const CLUSTER_KEEPER = `umask 077\ndir=$1; printf '%s\\n' "$2" >"$dir/batch.sh" || exit 1; shift 2\n${KEEPER_BODY}`

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
  return keeperOf(argv, SLURM_KEEPER)
}

function keeperOf(argv: readonly string[] | undefined, mark: string): { n: number | undefined } | undefined {
  if (argv?.[3] !== mark) return undefined
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

/** A small file of the keeper's private directory over SFTP ('' when there is none). */
async function readKeeperFile(link: Link, keeperDir: string, name: string): Promise<string> {
  const sftp = await link.sftp().catch(() => undefined)
  if (sftp === undefined) return ''
  return new Promise<string>((resolve) =>
    sftp.readFile(posix.join(keeperDir, name), (err: Error | null | undefined, data: Buffer) =>
      resolve(err ? '' : data.subarray(0, 512).toString('utf8')),
    ),
  )
}

/** The job id the keeper wrote into its private directory (undefined when there is none yet, or it is not one). */
export async function readJobId(link: Link, keeperDir: string | undefined): Promise<string | undefined> {
  if (keeperDir === undefined) return undefined
  const text = await readKeeperFile(link, keeperDir, JOB_FILE)
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
  return [python, '-c', LOCATE, ...common, ...CONTROLLER_HEARTBEAT]
}

/**
 * The address of this node on its way to the login node: the local end of a route to the address the ssh connection
 * came in on (`$SSH_CONNECTION`, exported into the job), else what the node's host name resolves to.
 */
const NODE_ADDRESS = String.raw`import os, socket
conn = os.environ.get('SSH_CONNECTION', '').split()
where = None
if len(conn) > 2:
    try:
        s = socket.socket(socket.AF_INET6 if ':' in conn[2] else socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((conn[2], 9))
        where = s.getsockname()[0]
        s.close()
    except OSError:
        pass
print(where or socket.gethostbyname(socket.gethostname()))
`

/**
 * The batch script of `--controller slurm`, run on the job's first node: the controller in the background there
 * (`--ip=*`, `--location=` the node's address), the node's name and address into `$dir/node`, and once the
 * controller's files are written, the engines as one job step beside it. The job ends with the controller; scancel
 * ends both (the controller removes its files on SIGTERM).
 * Arguments: DIR PYTHON N ENGINE_FILE CLIENT_FILE, then the controller's and the engines' common words.
 */
function clusterBatchScript(): string {
  return [
    '#!/bin/sh',
    'umask 077',
    'dir=$1 python=$2 n=$3 engine_file=$4 client_file=$5; shift 5',
    `addr=$("$python" -c ${shellQuote(NODE_ADDRESS)}) || exit 1`,
    `printf '%s %s\\n' "\${SLURMD_NODENAME:-$(hostname)}" "$addr" >"$dir/${NODE_FILE}"`,
    `"$python" -m ipyparallel.controller "$@" ${CONTROLLER_HEARTBEAT.map(shellQuote).join(' ')} --ip='*' --location="$addr" &`,
    'controller=$!',
    'until [ -s "$engine_file" ] && [ -s "$client_file" ]; do',
    '  kill -0 "$controller" 2>/dev/null || { wait "$controller"; exit 1; }',
    '  sleep 0.2',
    'done',
    'srun --ntasks="$n" "$python" -m ipyparallel.engine "$@" &',
    'wait "$controller"',
    '',
  ].join('\n')
}

/** What {@link slurmClusterSpec} needs: as for the engines, plus where the controller writes its files. */
export interface SlurmClusterOptions extends SlurmEnginesOptions {
  /** The profile's security directory and the cluster id: the batch script waits for the controller's files. */
  readonly securityDir: string
  readonly clusterId: string
}

/**
 * The whole cluster as one batch job (`--controller slurm`): a keeper, as for the engines, that is the cluster's
 * controller process; it writes the batch script ({@link clusterBatchScript}) into its private directory and
 * submits it with `--ntasks=N` (the engines' step) and the controller's words as the script's arguments (so that
 * `list`, `attach` and `stop` find the cluster id and IPython directory in its argv).
 */
export function slurmClusterSpec(options: SlurmClusterOptions): RemoteProcessSpec {
  const file = (kind: string): string =>
    posix.join(options.securityDir, `ipcontroller-${options.clusterId}-${kind}.json`)
  const sbatch = [
    '--parsable',
    `--job-name=ipp-tunnel-${options.name}`,
    `--ntasks=${String(options.n)}`,
    `--output={dir}/slurm-%j.out`,
    ...options.slurmArgs,
    '{dir}/batch.sh',
    '{dir}',
    options.python,
    String(options.n),
    file('engine'),
    file('client'),
    ...options.common,
  ]
  return {
    name: options.name,
    argv: ['/bin/sh', '-c', CLUSTER_KEEPER, SLURM_CLUSTER_KEEPER, '{dir}', clusterBatchScript(), ...sbatch],
    ...(options.env !== undefined && { env: options.env }),
    ...(options.persistSeconds !== undefined && { persistSeconds: options.persistSeconds }),
    graceSeconds: 12,
  }
}

/** Whether a remote process's argv is the keeper of a whole-cluster job of ours, and how many engines it asked for. */
export function slurmClusterOf(argv: readonly string[] | undefined): { n: number | undefined } | undefined {
  return keeperOf(argv, SLURM_CLUSTER_KEEPER)
}

/** Where a job's controller runs (`--controller slurm`): the job's first node. */
export interface JobNode {
  readonly name: string
  readonly address: string
}

/** The job's first node as the batch script wrote it (undefined until the job runs). */
export async function readJobNode(link: Link, keeperDir: string | undefined): Promise<JobNode | undefined> {
  if (keeperDir === undefined) return undefined
  const text = await readKeeperFile(link, keeperDir, NODE_FILE)
  const m = /^([A-Za-z0-9._-]+) ([0-9A-Fa-f.:]+)\n?$/u.exec(text)
  return m?.[1] !== undefined && m[2] !== undefined ? { name: m[1], address: m[2] } : undefined
}
