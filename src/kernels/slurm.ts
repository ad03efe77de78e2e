import { isIP } from 'node:net'

import { IppTunnelError } from '../errors/index.js'
import { remoteCommand } from '../remote/index.js'
import type { Link } from '../ssh/index.js'

/** How a kernel runs on a compute node: `srun` with these words, in a new job or in an allocation held already. */
export interface KernelSlurmOptions {
  /** Words given to `srun` (partition, time, CPUs…), as argv: no shell sees them. */
  readonly srunArgs?: readonly string[]
  /** An allocation the user holds (`salloc --no-shell`): the kernel is a step of it (`srun --jobid ID --overlap`). */
  readonly jobId?: string
}

/** Where a kernel of ours runs under Slurm: its job and step, the compute node's host name and address. */
export interface KernelSlurmStep {
  readonly job: string
  readonly step: string
  readonly host: string
  readonly addr: string
}

/** What the kernel's task writes beside its connection file before it starts the kernel. */
export const SLURM_FILE = 'slurm.json'
/** The job name of the kernels' steps (or jobs), as squeue shows it. */
export const KERNEL_JOB_NAME = 'ipp-tunnel-kernel'
const JOB_ID = /^[0-9]{1,20}$/u

/**
 * Runs first in the kernel's task on the compute node, then execs the kernel (argv after the directory): binds the
 * kernel to the node's address the login node reaches it at — the source address of a route to
 * SLURM_LAUNCH_NODE_IPADDR, where srun runs — by writing it as the file's `ip` (ipykernel takes the file's ip), and
 * writes the job, step, host name and address to slurm.json for the launcher.
 */
const BOOT = String.raw`
import json, os, socket, sys
d, argv = sys.argv[1], sys.argv[2:]
launch = os.environ.get('SLURM_LAUNCH_NODE_IPADDR', '')
addr = ''
if launch:
    s = socket.socket(socket.AF_INET6 if ':' in launch else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((launch, 9))
        addr = s.getsockname()[0]
    finally:
        s.close()
if not addr:
    addr = socket.gethostbyname(socket.gethostname())
def write(name, obj):
    tmp = os.path.join(d, name + '.boot')
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, 'w') as f:
        json.dump(obj, f)
    os.rename(tmp, os.path.join(d, name))
path = os.path.join(d, 'kernel.json')
fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
with os.fdopen(fd) as f:
    info = json.load(f)
info['ip'] = addr
write('kernel.json', info)
write('slurm.json', {'job': os.environ.get('SLURM_JOB_ID', ''), 'step': os.environ.get('SLURM_STEP_ID', ''),
                     'host': socket.gethostname(), 'addr': addr})
os.execvp(argv[0], argv)
`

/** A `--slurm-jobid` value: a job id, digits. */
export function checkJobId(job: string): string {
  if (!JOB_ID.test(job)) {
    throw new IppTunnelError('E_USAGE', `--slurm-jobid ${JSON.stringify(job)}: a Slurm job id is digits`)
  }
  return job
}

/**
 * The command the supervisor runs on the login node: `srun [--jobid ID --overlap] ARGS --ntasks=1 PYTHON -c BOOT
 * {dir} KERNEL…` — one task, the kernel, on a compute node.
 */
export function srunArgv(slurm: KernelSlurmOptions, python: string, kernel: readonly string[]): string[] {
  return [
    'srun',
    `--job-name=${KERNEL_JOB_NAME}`,
    ...(slurm.jobId !== undefined ? [`--jobid=${checkJobId(slurm.jobId)}`, '--overlap'] : []),
    ...(slurm.srunArgs ?? []),
    '--ntasks=1',
    python,
    '-c',
    BOOT,
    '{dir}',
    ...kernel,
  ]
}

/** slurm.json as the task wrote it, checked (it decides where the forwards go and which step `scancel` signals). */
export function parseSlurmStep(text: string | undefined, where: string): KernelSlurmStep {
  let value: unknown
  try {
    value = JSON.parse(text ?? '')
  } catch {
    value = undefined
  }
  const v = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>
  const { job, step, host, addr } = v
  const bad = (field: string, want: string): never => {
    throw new IppTunnelError('E_CONNFILE_FIELD', `${where}: field "${field}" is not ${want}`)
  }
  if (typeof job !== 'string' || !JOB_ID.test(job)) bad('job', 'a Slurm job id')
  if (typeof step !== 'string' || !JOB_ID.test(step)) bad('step', 'a Slurm step id')
  if (typeof host !== 'string' || !/^[A-Za-z0-9._-]{1,253}$/u.test(host)) bad('host', 'a host name')
  if (typeof addr !== 'string' || isIP(addr) === 0 || ['0.0.0.0', '::'].includes(addr)) {
    bad('addr', "the compute node's address")
  }
  return { job, step, host, addr } as KernelSlurmStep
}

/** srun's word on the queue (stderr): the job waits for resources, or has them now. */
export function queueEvent(line: string): { state: 'pending' | 'allocated'; job: string } | undefined {
  const pending = /\bjob ([0-9]+) queued and waiting for resources/u.exec(line)
  if (pending?.[1] !== undefined) return { state: 'pending', job: pending[1] }
  const allocated = /\bjob ([0-9]+) has been allocated resources/u.exec(line)
  if (allocated?.[1] !== undefined) return { state: 'allocated', job: allocated[1] }
  return undefined
}

/**
 * SIGINT to the kernel's task alone: `scancel --signal=INT JOB.STEP` on the login node (a SIGINT to srun only
 * prints the tasks' state; a second one within a second ends the step).
 * @throws IppTunnelError `E_SLURM` when scancel fails (its last words in the message).
 */
export async function interruptStep(
  link: Link,
  step: KernelSlurmStep,
  setup: string | undefined,
): Promise<void> {
  const argv = ['scancel', '--signal=INT', `${step.job}.${step.step}`]
  const remote = await link.exec(remoteCommand(argv, setup !== undefined ? { setup } : {}))
  remote.stdin.end()
  let err = ''
  remote.stderr.on('data', (chunk: Buffer) => (err = (err + chunk.toString('utf8')).slice(-400)))
  remote.stdout.resume()
  const exit = await remote.exited
  if (exit.code !== 0) {
    throw new IppTunnelError(
      'E_SLURM',
      `scancel --signal=INT ${step.job}.${step.step} on the login node: ${err.trim() || `status ${String(exit.code)}`}`,
    )
  }
}
