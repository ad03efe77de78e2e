import { realpathSync, rmSync } from 'node:fs'
import { dirname, resolve } from 'node:path'

import type { Argv } from 'yargs'

import { CONNECTION_INFO_ENV } from '../connection-file/index.js'
import {
  startEngines,
  type SupervisedEngines,
  type EngineFileCopy,
  type HostList,
  type NodeSshSettings,
} from '../engines/index.js'
import { IppTunnelError, isIppTunnelError } from '../errors/index.js'
import { remotePathOf } from '../sources/index.js'
import { EXIT, Output } from './output.js'
import { interrupted, untilSignal } from './signals.js'
import {
  sshOptionsFrom,
  withListenOption,
  withSourceFile,
  withSshOptions,
  type ListenArgs,
  type SshArgs,
} from './ssh-options.js'
import { formatEngineEvents, renderEngines } from './engines-events.js'
import { sbatchEngines } from './sbatch.js'
import { openSource } from './source-file.js'

interface EnginesArgs extends SshArgs, ListenArgs {
  /** Absent: the info is in IPP_CONNECTION_INFO (ipyparallel 8+). */
  readonly file?: string | undefined
  readonly poll?: number | undefined
  readonly n: string
  readonly mpi: boolean
  readonly verbose: number
  readonly mpiexec?: string | undefined
  readonly host?: string | undefined
  readonly hostfile?: string | undefined
  readonly slurm: boolean
  readonly sbatch: boolean
  readonly nodes?: string | undefined
  readonly follow: boolean
  readonly 'sbatch-output'?: string | undefined
  readonly 'engine-cmd'?: string | undefined
  readonly json: boolean
  readonly debug: boolean
  readonly '--'?: (string | number)[]
}

/** What `--help` and the command list say the command does. */
const DESCRIPTION =
  "tunnel a controller's engine file and run N engines through one ssh connection until interrupted"

/** `ipp-tunnel engines FILE -n N`: tunnels an engine file and runs N engines on its loopback copy. */
export function registerEngines(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command(
    'engines [file]',
    DESCRIPTION,
    (y) =>
      withSshOptions(
        withSourceFile(withListenOption(y), {
          orElse: `the JSON in $${CONNECTION_INFO_ENV} (ipyparallel 8+ passes it to engines)`,
        })
          .option('n', {
            alias: 'engines',
            type: 'string',
            requiresArg: true,
            demandOption: true,
            describe: 'number of engines (1 to 4096)',
          })
          .option('mpi', {
            type: 'boolean',
            default: false,
            describe: 'one mpiexec -n N launch: the engines share an MPI world (needs mpi4py)',
          })
          .option('mpiexec', { type: 'string', describe: 'MPI launcher command (default: mpiexec)' })
          .option('host', {
            type: 'string',
            requiresArg: true,
            conflicts: 'hostfile',
            describe: "with --mpi: run across these hosts (OpenMPI's a:4,b:4), one node tunnel per host",
          })
          .option('slurm', {
            type: 'boolean',
            default: false,
            describe:
              'inside a Slurm allocation: one node tunnel per allocated node (srun), then the engines (srun, or mpiexec with --mpi)',
          })
          .option('sbatch', {
            type: 'boolean',
            default: false,
            describe:
              'submit a batch job (sbatch) that runs these engines with --slurm, print its id and follow it; arguments after -- go to sbatch',
          })
          .option('nodes', {
            alias: 'N',
            type: 'string',
            requiresArg: true,
            describe: 'with --sbatch: number of nodes of the job (default: as Slurm places -n tasks)',
          })
          .option('follow', {
            type: 'boolean',
            default: true,
            describe: 'with --sbatch: follow the job until it ends (--no-follow: print its id and return)',
          })
          .option('sbatch-output', {
            type: 'string',
            requiresArg: true,
            describe:
              "with --sbatch: the job's output file, where the follower reads its events (%j: the job id; default ./ipp-tunnel-engines-%j.out)",
          })
          .option('hostfile', {
            type: 'string',
            requiresArg: true,
            describe: 'with --mpi: run across the hosts of this OpenMPI hostfile, one node tunnel per host',
          })
          .option('verbose', {
            type: 'count',
            describe: "also show the engines' routine (INFO/DEBUG) log lines on stderr",
          })
          .option('engine-cmd', {
            type: 'string',
            describe:
              'engine command; {} names the loopback file, else --file=FILE is appended (default: /usr/bin/python3 -m ipyparallel.engine)',
          })
          .usage(
            `$0 engines FILE -n N [--mpi] [options] [-- EXTRA ENGINE ARGS…]\n$0 engines FILE -n N --sbatch [-N NODES] [--mpi] [options] [-- SBATCH ARGS…]\n\n${DESCRIPTION}`,
          ),
      ),
    (args) => run(() => engines(args as unknown as EnginesArgs)),
  )
}

export function engineCount(text: string): number {
  const n = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN
  if (!Number.isInteger(n) || n < 1 || n > 4096) {
    throw new IppTunnelError(
      'E_USAGE',
      `-n needs a whole number of engines from 1 to 4096, got "${text}" (see ipp-tunnel engines --help)`,
    )
  }
  return n
}

/** As a shell (and `exec`) says a command cannot be run. */
const EXIT_CANNOT_RUN = 127

/** The hosts of `--host`/`--hostfile`. */
function hostListOf(args: EnginesArgs): HostList | undefined {
  return args.host !== undefined
    ? { kind: 'host', value: args.host }
    : args.hostfile !== undefined
      ? { kind: 'hostfile', path: resolve(args.hostfile) }
      : undefined
}

/** The ssh options of this command, as each node tunnel takes them. */
export function nodeSshOf(args: SshArgs): NodeSshSettings {
  return {
    ssh: args.ssh,
    identity: args.identity,
    knownHosts: args['known-hosts'],
    hostKeyCheck: args['host-key-check'],
    passphraseFile: args['passphrase-file'],
    configFile: args['ssh-config'],
  }
}

/** This very CLI, as the nodes and the batch job run it. */
function ippTunnelCommand(): string[] {
  return [process.execPath, realpathSync(process.argv[1] ?? '')]
}

async function engines(args: EnginesArgs): Promise<number> {
  if (args.sbatch) return sbatchCommand(args)
  for (const flag of ['nodes', 'sbatch-output'] as const) {
    if (args[flag] !== undefined) {
      return new Output({ json: args.json, debug: args.debug }).fail(
        new IppTunnelError('E_USAGE', `--${flag} goes with --sbatch`),
      )
    }
  }
  const output = formatEngineEvents(new Output({ json: args.json, debug: args.debug }))
  let engines: SupervisedEngines | undefined
  /** The loopback copy of a pulled `host:PATH`, which this command holds. */
  let copy: EngineFileCopy | undefined
  const fileOf = () => engines?.file ?? args.file ?? CONNECTION_INFO_ENV
  // A second signal exits at once (see untilSignal): engines and the private directories must not outlive us.
  const killOnExit = () => {
    engines?.killNow()
    if (copy !== undefined) rmSync(dirname(copy.path), { recursive: true, force: true })
  }
  const signals = untilSignal((signal) => {
    output.emit({ event: 'stopping', file: fileOf(), signal })
    void engines?.stop()
  })
  process.once('exit', killOnExit)
  try {
    const n = engineCount(args.n)
    const options = sshOptionsFrom(args, output)
    const remote = args.file !== undefined && remotePathOf(args.file) !== undefined ? args.file : undefined
    engines = startEngines({
      n,
      mpi: args.mpi,
      engineCommand: args['engine-cmd'],
      mpiexec: args.mpiexec,
      extraArgs: (args['--'] ?? []).map(String),
      hosts: hostListOf(args),
      slurm: args.slurm,
      nodeSsh: nodeSshOf(args),
      ippTunnel: ippTunnelCommand(),
      ssh: options,
      listen: args.listen,
      ...(remote === undefined
        ? { file: args.file }
        : {
            // host:PATH: pulled and tunnelled as up does it (ready, changed, … printed); its copy is reached directly
            copy: {
              text: remote,
              open: async (signal) =>
                (copy = await openSource(remote, args, output, { render: true, signal })),
            },
          }),
    })
    renderEngines(engines, output, { n, mpi: args.mpi, verbose: args.verbose > 0, file: fileOf })
    const ending = await engines.done
    const file = fileOf()
    if (ending.reason === 'link-failed' && ending.error !== undefined)
      return output.fail(ending.error, { file })
    if (isIppTunnelError(ending.error) && ending.error.code === 'E_SPAWN') return EXIT_CANNOT_RUN // reported as it happened
    if (ending.error !== undefined) return output.fail(ending.error, { file })
    output.emit({ event: 'closed', file })
    return EXIT.ok
  } catch (err) {
    const signal = signals.received()
    if (signal !== undefined) return interrupted(output, signal, { file: fileOf() })
    const status = output.fail(err, { file: fileOf() })
    return isIppTunnelError(err) && err.code === 'E_SPAWN' ? EXIT_CANNOT_RUN : status
  } finally {
    signals.dispose()
    process.off('exit', killOnExit)
  }
}

/** `engines FILE --sbatch`: the checks of its flags, then the job submitted and followed (see sbatchEngines). */
async function sbatchCommand(args: EnginesArgs): Promise<number> {
  const output = formatEngineEvents(new Output({ json: args.json, debug: args.debug }))
  try {
    if (args.slurm || args.host !== undefined || args.hostfile !== undefined) {
      throw new IppTunnelError(
        'E_USAGE',
        '--sbatch submits a job that runs the engines with --slurm: leave out --slurm, --host and --hostfile',
      )
    }
    if (args.file === undefined) {
      throw new IppTunnelError(
        'E_USAGE',
        `--sbatch: the job's nodes read a local engine file; write $${CONNECTION_INFO_ENV} to one on a filesystem they share`,
      )
    }
    if (remotePathOf(args.file) !== undefined) {
      throw new IppTunnelError(
        'E_USAGE',
        `--sbatch: the job's nodes read a local engine file; ${args.file} is on an ssh server (host:PATH works without --sbatch)`,
      )
    }
    return await sbatchEngines(output, {
      file: resolve(args.file),
      n: engineCount(args.n),
      nodes: args.nodes,
      follow: args.follow,
      outputPath: args['sbatch-output'],
      mpi: args.mpi,
      mpiexec: args.mpiexec,
      engineCommand: args['engine-cmd'],
      listen: args.listen,
      verbose: args.verbose,
      nodeSsh: nodeSshOf(args),
      sbatchArgs: (args['--'] ?? []).map(String),
      ippTunnel: ippTunnelCommand(),
    })
  } catch (err) {
    return output.fail(err, { file: args.file ?? CONNECTION_INFO_ENV })
  }
}
