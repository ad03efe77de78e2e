import type { RemoteProcessSpec } from '../remote/index.js'
import { slurmEnginesOf, slurmEnginesSpec } from './slurm.js'

/** Where the engines run: on the ssh server itself, as one `mpiexec -n N` world there, or as a Slurm batch job. */
export type EnginesKind = 'login' | 'mpi' | 'slurm'

/** What an engines process of ours was started as (its argv in the supervisor's state): kind and count. */
export function enginesOf(argv: readonly string[] | undefined): { kind: EnginesKind; n: number | undefined } {
  const slurm = slurmEnginesOf(argv)
  if (slurm !== undefined) return { kind: 'slurm', n: slurm.n }
  const word = argv?.find((w) => w.startsWith('--n='))
  const n = word === undefined ? NaN : Number(word.slice('--n='.length))
  return {
    kind: argv?.includes('--engines=mpi') === true ? 'mpi' : 'login',
    n: Number.isInteger(n) ? n : undefined,
  }
}

/** What {@link enginesSpec} needs. */
export interface EnginesSpecOptions {
  readonly name: string
  readonly kind: EnginesKind
  readonly python: string
  readonly n: number
  /** The controller's `--profile=`, `--cluster-id=`, `--ipython-dir=` words. */
  readonly common: readonly string[]
  /** sbatch arguments of the user (Slurm engines). */
  readonly slurmArgs: readonly string[]
  readonly env: Readonly<Record<string, string>> | undefined
  readonly persistSeconds: number | undefined
  /** The account is root (Open MPI must be told that this is wanted). */
  readonly root: boolean
  /** The controller's engine file: engines on the ssh server start with the controller and wait for it. */
  readonly engineFile: string
}

/** Python: waits (≤ 300 s) until the engine file `sys.argv[1]` (`path`) is whole JSON; the controller writes it in place. */
const WAIT_FOR_ENGINE_FILE = String.raw`path = sys.argv[1]
deadline = time.monotonic() + 300
while True:
    try:
        with open(path) as f:
            json.load(f)
        break
    except (OSError, ValueError):
        if time.monotonic() > deadline:
            sys.exit('the controller wrote no engine file: ' + path)
        time.sleep(0.05)
`

/**
 * Imports ipyparallel while the controller starts, waits (≤ 300 s) until the controller's engine file (argv[1]) is
 * whole JSON, then runs `ipyparallel.cluster` with the rest of argv: the engines start as soon as the file is there,
 * not after the laptop has tunnelled and copied the client file.
 */
const AFTER_ENGINE_FILE = String.raw`import json, runpy, sys, time
import ipyparallel.cluster.app
${WAIT_FOR_ENGINE_FILE}sys.argv = ['ipcluster'] + sys.argv[2:]
runpy.run_module('ipyparallel.cluster', run_name='__main__', alter_sys=True)
`

/**
 * Engines on the ssh server without `ipcluster engines` and N fresh pythons: imports the engine while the controller
 * starts, waits (≤ 300 s) until its engine file (argv[1]) is whole JSON, then forks one engine per `--n=` (argv[2])
 * with the rest of argv as its arguments. The engines share the process group, so stopping it stops them all; the
 * process ends with the last engine, with the first failure's status.
 */
const FORK_ENGINES = String.raw`import json, os, sys, time
from ipyparallel.engine.app import IPEngine
${WAIT_FOR_ENGINE_FILE}n, args = int(sys.argv[2][len('--n='):]), sys.argv[3:]
kids = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            IPEngine.launch_instance(args)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    kids.append(pid)
status = 0
for pid in kids:
    _, st = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(st)
    if status == 0 and code != 0:
        status = code if code > 0 else 128 - code
sys.exit(status)
`

/**
 * The engines' remote process: N forked engines ({@link FORK_ENGINES}) or, with `--engines=mpi`, `ipyparallel.cluster
 * engines --n=N --engines=mpi` (one mpiexec world) on the ssh server once the controller's engine file is written ({@link AFTER_ENGINE_FILE}), or the keeper of a Slurm
 * batch job ({@link slurmEnginesSpec}).
 */
export function enginesSpec(options: EnginesSpecOptions): RemoteProcessSpec {
  if (options.kind === 'slurm') return slurmEnginesSpec(options)
  const mpi = options.kind === 'mpi'
  const n = `--n=${String(options.n)}`
  return {
    name: options.name,
    argv: mpi
      ? [
          options.python,
          '-c',
          AFTER_ENGINE_FILE,
          options.engineFile,
          'engines',
          n,
          ...options.common,
          '--engines=mpi',
        ]
      : [options.python, '-c', FORK_ENGINES, options.engineFile, n, ...options.common],
    env: {
      ...options.env,
      // Open MPI refuses root unless told: the account is the user's choice, not ours
      ...(mpi && options.root && { OMPI_ALLOW_RUN_AS_ROOT: '1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1' }),
    },
    ...(options.persistSeconds !== undefined && { persistSeconds: options.persistSeconds }),
  }
}
