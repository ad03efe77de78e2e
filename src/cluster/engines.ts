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
}

/**
 * The engines' remote process: `ipyparallel.cluster engines --n=N` (with `--engines=mpi`: one mpiexec world) on the
 * ssh server, or the keeper of a Slurm batch job ({@link slurmEnginesSpec}).
 */
export function enginesSpec(options: EnginesSpecOptions): RemoteProcessSpec {
  if (options.kind === 'slurm') return slurmEnginesSpec(options)
  const mpi = options.kind === 'mpi'
  return {
    name: options.name,
    argv: [
      options.python,
      '-m',
      'ipyparallel.cluster',
      'engines',
      `--n=${String(options.n)}`,
      ...options.common,
      ...(mpi ? ['--engines=mpi'] : []),
    ],
    env: {
      ...options.env,
      // Open MPI refuses root unless told: the account is the user's choice, not ours
      ...(mpi && options.root && { OMPI_ALLOW_RUN_AS_ROOT: '1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1' }),
    },
    ...(options.persistSeconds !== undefined && { persistSeconds: options.persistSeconds }),
  }
}
