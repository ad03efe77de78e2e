import { randomBytes } from 'node:crypto'
import { realpathSync, rmSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, dirname, join, resolve } from 'node:path'

import type { Argv } from 'yargs'

import { HubQuery } from '../client/index.js'
import {
  CONNECTION_INFO_ENV,
  connectionInfoFromEnv,
  isLoopbackOnly,
  readConnectionFile,
  writeConnectionFileAtomic,
  type ConnectionInfo,
  type IppEngineInfo,
} from '../connection-file/index.js'
import {
  engineArgvs,
  findProgram,
  hostArgs,
  isRoutineLog,
  launchEngines,
  NODE_FILE,
  nodeEngineWrapper,
  nodeNames,
  parseTagged,
  redactLine,
  slurmNodeLauncher,
  startNodeTunnels,
  type EngineExit,
  type EngineGroup,
  type HostList,
  type NodeTunnels,
  ENGINE_STEP_NAME,
  settleEngineSteps,
} from '../engines/index.js'
import { IppTunnelError, isIppTunnelError } from '../errors/index.js'
import { makePrivateTempDir } from '../safe-fs/index.js'
import { refuseUnreachable } from '../sockets/index.js'
import { remotePathOf } from '../sources/index.js'
import { parseDestination } from '../ssh/index.js'
import { chooseDestination, openTunnel, type DestinationChoice, type Tunnel } from '../tunnel/index.js'
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
import { followTunnel, formatTunnelEvents, readyEvent } from './tunnel-events.js'
import { sbatchEngines } from './sbatch.js'
import { openSource, type LocalSource } from './source-file.js'
import { visible } from './visible.js'

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

// `index` is the process we started (`process #i`); `id` is the engine id the controller gave (`engine id N`).
export function formatEngineEvents(output: Output): Output {
  return formatTunnelEvents(output)
    .format('engine-started', (e) => `process #${String(e.index)} started (pid ${String(e.pid)})`)
    .format(
      'engine-registered',
      (e) => `process #${String(e.index)}: the controller lists engine id ${String(e.id)}`,
    )
    .format('registered', (e) => {
      const all = `the controller lists all ${String(e.engines)} engines (ids ${(e.ids as number[]).join(', ')}), ${String(e.ms)} ms after launch`
      const nodes = e.nodes as Record<string, number[]> | undefined
      if (nodes === undefined) return all
      const per = Object.entries(nodes).map(([host, ids]) => `  node ${host}: engine ids ${ids.join(', ')}`)
      return [all, ...per].join('\n')
    })
    .format('engine-exited', (e) => {
      const how = typeof e.signal === 'string' ? `by ${e.signal}` : `with status ${String(e.code)}`
      return `process #${String(e.index)} (pid ${String(e.pid)}) exited ${how}${e.stopped === true ? '' : ' on its own'}`
    })
    .format('stopping', (e) => `${String(e.signal)}: stopping the engines`)
    .format('node-ready', (e) => {
      const forwards = Array.isArray(e.forwards) ? e.forwards.length : 0
      return `node ${String(e.host)}: tunnel ready in ${String(e.ms)} ms (${String(forwards)} forwards), loopback file ${String(e.out)}`
    })
    .format(
      'node-reconnecting',
      (e) =>
        `node ${String(e.host)}: link lost (${String(e.message)}); reconnecting (attempt ${String(e.attempt)})`,
    )
    .format('node-reconnected', (e) => `node ${String(e.host)}: link back after ${String(e.downMs)} ms`)
    .format('node-error', (e) => `node ${String(e.host)}: ${String(e.message)}`)
    .format('node-warning', (e) => `node ${String(e.host)}: warning: ${String(e.message)}`)
    .format('unregistered', (e) => {
      const remaining = e.remaining as number[]
      return remaining.length === 0
        ? `the controller lists none of our engines${typeof e.ms === 'number' ? ` (${String(e.ms)} ms after the signal)` : ''}`
        : `the controller still lists engine ids ${remaining.join(', ')}; it drops them when their heartbeats stop`
    })
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

/**
 * The hub drops our engines the moment we stop (see EngineGroup.stop), so an engine still winding Python
 * down after 1 s (it takes 1–2 s on a busy host) is SIGKILLed; then at most 1 s for the hub to confirm.
 */
const STOP = { killAfterMs: 1000, unregisterMs: 1000 } as const

/** Why the supervision ended. */
type Ending =
  | { readonly kind: 'signal'; readonly signal: NodeJS.Signals }
  | { readonly kind: 'exited'; readonly exits: readonly EngineExit[] }
  | { readonly kind: 'link-failed'; readonly error: Error }

/** The hosts of `--host`/`--hostfile`, which need --mpi. */
function hostListOf(args: EnginesArgs): HostList | undefined {
  const hosts: HostList | undefined =
    args.host !== undefined
      ? { kind: 'host', value: args.host }
      : args.hostfile !== undefined
        ? { kind: 'hostfile', path: resolve(args.hostfile) }
        : undefined
  if (hosts !== undefined && args.slurm) {
    throw new IppTunnelError(
      'E_USAGE',
      '--slurm runs on the allocated nodes: leave out --host and --hostfile',
    )
  }
  if (hosts !== undefined && !args.mpi) {
    throw new IppTunnelError('E_USAGE', '--host and --hostfile run the engines under one mpiexec: add --mpi')
  }
  return hosts
}

/** The number of nodes of the Slurm allocation this runs in. */
function slurmNodeCount(env: NodeJS.ProcessEnv): number {
  if ((env.SLURM_JOB_ID ?? '') === '') {
    throw new IppTunnelError(
      'E_USAGE',
      '--slurm runs inside a Slurm allocation (SLURM_JOB_ID is not set): run it under salloc or in an sbatch script',
    )
  }
  const nodes = Number(env.SLURM_JOB_NUM_NODES ?? env.SLURM_NNODES ?? '1')
  if (!Number.isInteger(nodes) || nodes < 1) {
    throw new IppTunnelError(
      'E_USAGE',
      `SLURM_JOB_NUM_NODES is not a node count: ${String(env.SLURM_JOB_NUM_NODES)}`,
    )
  }
  return nodes
}

/** The ssh options of this command, as `node-tunnel` takes them. */
export function sshArgvOf(args: SshArgs): string[] {
  const argv: string[] = []
  const pairs = [
    ['--ssh', args.ssh],
    ['--identity', args.identity],
    ['--known-hosts', args['known-hosts']],
    ['--host-key-check', args['host-key-check']],
    ['--passphrase-file', args['passphrase-file']],
    ['--ssh-config', args['ssh-config']],
  ] as const
  for (const [flag, value] of pairs) {
    if (value === undefined) continue
    if (flag === '--ssh') parseDestination(value, '--ssh')
    argv.push(flag, flag === '--ssh' || flag === '--host-key-check' ? value : resolve(value))
  }
  return argv
}

/**
 * The ssh server to tunnel an engine file through ({@link chooseDestination}), or `'direct'` when none is named and
 * every endpoint is on this host (a loopback copy such as `watch` writes, or a local controller): the engines then
 * connect as `ipengine` would, with no tunnel. Engines on other nodes cannot reach this host's loopback.
 */
async function destinationOrDirect(
  info: IppEngineInfo,
  file: string,
  ssh: string | undefined,
  nodes: readonly string[] | undefined,
): Promise<DestinationChoice | 'direct'> {
  try {
    return await chooseDestination(info, file, ssh, 'pass --ssh user@host')
  } catch (err) {
    if (!(isIppTunnelError(err) && err.code === 'E_DESTINATION') || !isLoopbackOnly(info)) throw err
    if (nodes !== undefined) {
      throw new IppTunnelError(
        'E_USAGE',
        `${file}: its endpoints are on this host's loopback, out of reach of other nodes; give the controller's own engine file with --ssh user@host`,
        { cause: err },
      )
    }
    return 'direct'
  }
}

/** Follows the node tunnels' events, naming the node of each. */
function followNodes(nodeTunnels: NodeTunnels, output: Output, file: string): void {
  nodeTunnels.on('node-ready', (e) =>
    output.emit({
      event: 'node-ready',
      file,
      host: e.host,
      rank: e.rank,
      ms: e.ms,
      out: e.out,
      forwards: e.forwards,
    }),
  )
  nodeTunnels.on('node-event', ({ host, rank, event }) => {
    const { event: name, ...rest } = event
    if (name === 'reconnecting' || name === 'reconnected' || name === 'error' || name === 'warning') {
      output.emit({ ...rest, event: `node-${name}`, file, host, rank })
    }
  })
  nodeTunnels.on('node-output', (e) =>
    process.stderr.write(
      `[node ${e.rank === undefined ? 'mpiexec' : nodeTunnels.hostOf(e.rank)}] ${visible(e.line)}\n`,
    ),
  )
}

async function engines(args: EnginesArgs): Promise<number> {
  if (args.sbatch) {
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
      const file = resolve(args.file)
      const n = engineCount(args.n)
      // A wrong file fails here, not in a job that may wait in the queue first.
      const { info } = await readConnectionFile(file)
      requireEngineInfo(info, file)
      const inner = [
        process.execPath,
        realpathSync(process.argv[1] ?? ''),
        'engines',
        file,
        '-n',
        String(n),
        '--slurm',
        '--json',
        ...(args.mpi ? ['--mpi'] : []),
        ...(args.mpiexec !== undefined ? ['--mpiexec', args.mpiexec] : []),
        ...(args['engine-cmd'] !== undefined ? ['--engine-cmd', args['engine-cmd']] : []),
        ...(args.listen !== undefined ? ['--listen', args.listen] : []),
        ...Array.from({ length: args.verbose }, () => '--verbose'),
        ...sshArgvOf(args),
      ]
      return await sbatchEngines({
        output,
        file,
        tasks: n,
        nodes: args.nodes,
        follow: args.follow,
        outputPath: args['sbatch-output'],
        inner,
        sbatchArgs: (args['--'] ?? []).map(String),
      })
    } catch (err) {
      return output.fail(err, { file: args.file ?? CONNECTION_INFO_ENV })
    }
  }
  for (const flag of ['nodes', 'sbatch-output'] as const) {
    if (args[flag] !== undefined) {
      return new Output({ json: args.json, debug: args.debug }).fail(
        new IppTunnelError('E_USAGE', `--${flag} goes with --sbatch`),
      )
    }
  }
  const output = formatEngineEvents(new Output({ json: args.json, debug: args.debug }))
  let file = args.file ?? CONNECTION_INFO_ENV
  let source: LocalSource | undefined
  let privateDir: string | undefined
  /** Where the info of IPP_CONNECTION_INFO is written for the engines to read (private, removed at the end). */
  let envDir: string | undefined
  let tunnel: Tunnel | undefined
  let hub: HubQuery | undefined
  let group: EngineGroup | undefined
  let nodeTunnels: NodeTunnels | undefined
  let signalledAt: number | undefined
  // A second signal exits at once (see untilSignal): engines and the private directory must not outlive us.
  const killOnExit = () => {
    group?.killNow()
    nodeTunnels?.killNow()
    if (privateDir !== undefined) rmSync(privateDir, { recursive: true, force: true })
    if (source?.pulled === true) rmSync(dirname(source.path), { recursive: true, force: true })
    if (envDir !== undefined) rmSync(envDir, { recursive: true, force: true })
  }
  const signals = untilSignal((signal) => {
    signalledAt = performance.now()
    output.emit({ event: 'stopping', file, signal })
    // ipengine ignores SIGINT: SIGTERM whatever we received (mpiexec passes it on to its ranks).
    void group?.stop('SIGTERM', STOP)
    if (group === undefined) void nodeTunnels?.close()
  })
  process.once('exit', killOnExit)
  try {
    const launch = {
      file,
      n: engineCount(args.n),
      mpi: args.mpi,
      ...(args['engine-cmd'] !== undefined && { engineCommand: args['engine-cmd'] }),
      ...(args.mpiexec !== undefined && { mpiexec: args.mpiexec }),
      extraArgs: (args['--'] ?? []).map(String),
      root: process.getuid?.() === 0,
    }
    const hosts = hostListOf(args)
    const slurmNodes = args.slurm ? slurmNodeCount(process.env) : undefined
    const nodes =
      hosts !== undefined
        ? await nodeNames(hosts)
        : slurmNodes !== undefined
          ? Array.from({ length: slurmNodes }, (_, i) => `slurm node #${String(i)}`)
          : undefined
    const [program] = engineArgvs(launch)[0] ?? [] // bad command lines fail here, before any connection
    if (program !== undefined) await findProgram(program, process.env.PATH)
    const options = sshOptionsFrom(args, output)
    if (nodes !== undefined && (args.file === undefined || remotePathOf(args.file) !== undefined)) {
      throw new IppTunnelError(
        'E_USAGE',
        `--host, --hostfile and --slurm: each node reads a local engine file; ${args.file === undefined ? `write $${CONNECTION_INFO_ENV} to one on a filesystem they share` : `${args.file} is on an ssh server`}`,
      )
    }
    if (args.file === undefined) {
      envDir = await makePrivateTempDir('ipp-tunnel-engines-env-')
      source = await envSource(envDir, process.env)
    } else {
      // host:PATH: pulled and tunnelled as up does it (ready, changed, … printed); its copy is then reached directly
      source = await openSource(args.file, args, output, { render: true, signal: signals.signal })
    }
    file = source.file
    const { info, warnings } = await readConnectionFile(source.path)
    requireEngineInfo(info, file)
    for (const warning of warnings) output.emit({ event: 'warning', file, message: warning })
    let out: string
    let stopFollowing = (): void => undefined
    const choice = source.pulled ? 'direct' : await destinationOrDirect(info, file, args.ssh, nodes)
    if (choice === 'direct') {
      // a loopback copy (the service's, or pulled just now) or a controller on this host: no ssh, as ipengine does it
      out = source.path
      if (!source.pulled) {
        await refuseUnreachable(info, file)
        output.emit({
          event: 'ready',
          file,
          out,
          direct: true,
          forwards: [],
          engines: launch.n,
          mpi: args.mpi,
        })
      }
      hub = HubQuery.open(info, file)
    } else {
      const { destination, sshFrom } = choice
      privateDir = await makePrivateTempDir('ipp-tunnel-engines-')
      out = join(privateDir, basename(source.path))
      tunnel = await openTunnel(info, {
        ...options,
        ssh: destination,
        out,
        listen: args.listen ?? 'tcp',
        signal: signals.signal,
      })
      stopFollowing = followTunnel(tunnel, output, file)
      output.emit({
        ...readyEvent(tunnel, file, out),
        ...(sshFrom !== undefined && { sshFrom }),
        engines: launch.n,
        mpi: args.mpi,
      })
      // Registration and unregistration are what the hub says, asked through this same tunnel.
      const loopback = tunnel.loopback
      if (loopback.kind === 'ipp-engine') hub = HubQuery.open(loopback, file)
    }
    let across = {}
    const hostOfRank = new Map<number, string>()
    if (nodes !== undefined) {
      // A path of the same name on every node; each node tunnel makes its own <hostname> directory in it.
      const jobDir = join(tmpdir(), `ipp-tunnel-job-${randomBytes(6).toString('hex')}`)
      const script = realpathSync(process.argv[1] ?? '')
      nodeTunnels = startNodeTunnels({
        ...(hosts !== undefined && { hosts }),
        ...(slurmNodes !== undefined && { launcher: slurmNodeLauncher(slurmNodes) }),
        nodes,
        command: [
          process.execPath,
          script,
          'node-tunnel',
          file,
          '--job-dir',
          jobDir,
          ...(slurmNodes !== undefined ? ['--until-eof'] : []),
          ...sshArgvOf(args),
        ],
        stopByEof: slurmNodes !== undefined,
        ...(args.mpiexec !== undefined && { mpiexec: args.mpiexec }),
        root: launch.root,
      })
      followNodes(nodeTunnels, output, file)
      await nodeTunnels.ready(signals.signal)
      across = {
        file: NODE_FILE,
        // Under Slurm, OpenMPI's mpiexec runs its ranks on the allocation's nodes by itself.
        mpiArgs: [...(hosts === undefined ? [] : hostArgs(hosts)), '--tag-output'],
        wrapper: nodeEngineWrapper(jobDir, basename(file)),
        ...(slurmNodes !== undefined &&
          !args.mpi && { launcher: ['srun', '--overlap', '--label', `--job-name=${ENGINE_STEP_NAME}`] }),
      }
    }
    // mpiexec launches its daemons with srun: a step of that name too (see settleEngineSteps).
    const env =
      slurmNodes !== undefined && args.mpi
        ? {
            ...process.env,
            OMPI_MCA_plm_slurm_args: process.env.OMPI_MCA_plm_slurm_args ?? `--job-name=${ENGINE_STEP_NAME}`,
          }
        : process.env
    group = launchEngines({ ...launch, env, file: out, ...across, ...(hub !== undefined && { hub }) })
    if (nodeTunnels !== undefined) {
      group.on('engine-output', (e) => {
        const tagged = parseTagged(e.line)
        const node = tagged === undefined ? undefined : /^ipp-tunnel-node (\S+)/.exec(tagged.text)
        if (tagged !== undefined && node) hostOfRank.set(tagged.rank, node[1] ?? '')
      })
    }
    const announcedBy = new Map<number, number>()
    group.on('engine-output', (e) => {
      const tagged = parseTagged(e.line)
      const id = tagged === undefined ? undefined : /Completed registration with id (\d+)/.exec(tagged.text)
      if (tagged !== undefined && id) announcedBy.set(Number(id[1]), tagged.rank)
    })
    superviseOutput(group, output, {
      nodesOf:
        nodeTunnels === undefined
          ? undefined
          : (ids) => {
              const per: Record<string, number[]> = {}
              for (const id of ids) {
                const rank = announcedBy.get(id)
                const host = (rank === undefined ? undefined : hostOfRank.get(rank)) ?? 'unknown'
                ;(per[host] ??= []).push(id)
              }
              return per
            },
      file,
      n: launch.n,
      verbose: args.verbose > 0,
      secrets: [info.key],
      signalledAt: () => signalledAt,
    })
    const failed = new Promise<Ending>((resolveFailed) => {
      tunnel?.once('link:failed', (e) => resolveFailed({ kind: 'link-failed', error: e.error }))
      void source?.linkFailed?.then((error) => resolveFailed({ kind: 'link-failed', error }))
    })
    const nodesEnded = new Promise<Ending>((resolveEnded) => {
      void nodeTunnels?.exited.then(({ code, signal }) => {
        const how = signal !== null ? signal : `status ${String(code)}`
        resolveEnded({
          kind: 'link-failed',
          error: new IppTunnelError('E_NODE', `the node tunnels ended (${how}); their output is above`),
        })
      })
    })
    const ending = await Promise.race<Ending>([
      signals.promise.then((signal) => ({ kind: 'signal', signal })),
      group.done.then((exits) => ({ kind: 'exited', exits })),
      failed,
      nodesEnded,
    ])
    // Also after the engines exited on their own: the hub is told before the tunnels close.
    const exits = await group.stop('SIGTERM', STOP)
    if (slurmNodes !== undefined) await settleSteps(output, file)
    await nodeTunnels?.close()
    await hub?.close()
    stopFollowing()
    await tunnel?.close()
    await source.close()
    if (ending.kind === 'link-failed') return output.fail(ending.error, { file })
    const died = exits.filter((e) => !e.stopped && (e.code !== 0 || e.signal !== null))
    const first = died[0]
    if (died.length > 0 && died.every((e) => e.pid === 0)) return EXIT_CANNOT_RUN // reported as it happened
    if (first !== undefined) {
      const how = first.signal === null ? `status ${String(first.code)}` : first.signal
      return output.fail(
        new IppTunnelError(
          'E_ENGINE_EXIT',
          `${String(died.length)} of ${String(exits.length)} engine processes died on their own (first: process #${String(first.index)}, ${how}); their output is above`,
        ),
        { file },
      )
    }
    output.emit({ event: 'closed', file })
    return EXIT.ok
  } catch (err) {
    if (group !== undefined) await group.stop('SIGTERM', STOP)
    if (group !== undefined && args.slurm) await settleSteps(output, file)
    await nodeTunnels?.close()
    const signal = signals.received()
    if (signal !== undefined && group === undefined) return interrupted(output, signal, { file })
    const status = output.fail(err, { file })
    return isIppTunnelError(err) && err.code === 'E_SPAWN' ? EXIT_CANNOT_RUN : status
  } finally {
    await nodeTunnels?.close()
    await hub?.close()
    await tunnel?.close()
    await source?.close()
    if (privateDir !== undefined) await rm(privateDir, { recursive: true, force: true })
    if (envDir !== undefined) await rm(envDir, { recursive: true, force: true })
    signals.dispose()
    process.off('exit', killOnExit)
  }
}

/** @throws IppTunnelError `E_CONNFILE_KIND` naming `file` when `info` is not a controller's engine info. */
function requireEngineInfo(info: ConnectionInfo, file: string): asserts info is IppEngineInfo {
  if (info.kind !== 'ipp-engine') {
    throw new IppTunnelError(
      'E_CONNFILE_KIND',
      `${file}: is an ${info.kind} connection file; engines needs the controller's engine file (ipcontroller-engine.json)`,
    )
  }
}

/**
 * The engine connection info ipyparallel 8+ passes in IPP_CONNECTION_INFO, validated as a file is (errors name the
 * variable), written into `dir` (private) for the engines, which read a file.
 * @throws IppTunnelError `E_USAGE` when the variable is unset too, `E_CONNFILE_*` naming the variable.
 */
async function envSource(dir: string, env: NodeJS.ProcessEnv): Promise<LocalSource> {
  const info = connectionInfoFromEnv(env)
  if (info === undefined) {
    throw new IppTunnelError(
      'E_USAGE',
      `give the controller's engine file (ipcontroller-engine.json), or its JSON in $${CONNECTION_INFO_ENV}`,
    )
  }
  requireEngineInfo(info, CONNECTION_INFO_ENV)
  const path = join(dir, 'ipcontroller-engine.json')
  await writeConnectionFileAtomic(path, info)
  const close = () => Promise.resolve()
  return {
    file: CONNECTION_INFO_ENV,
    path,
    pulled: false,
    linkFailed: undefined,
    close,
    [Symbol.asyncDispose]: close,
  }
}

/**
 * Under Slurm, a launcher killed after its grace period (srun, or mpiexec's srun of its daemons) leaves its step
 * while the tasks wind down on the nodes: wait for it, cancel it if it lingers, and say so if it stays.
 */
async function settleSteps(output: Output, file: string): Promise<void> {
  const job = process.env.SLURM_JOB_ID ?? ''
  try {
    const left = await settleEngineSteps(job, process.env)
    if (left.length > 0) {
      output.emit({
        event: 'warning',
        file,
        message: `job steps ${left.map((s) => s.id).join(', ')} still run after scancel; Slurm kills them after its KillWait`,
      })
    }
  } catch (err) {
    output.emit({ event: 'warning', file, message: `waiting for the engines' job steps: ${String(err)}` })
  }
}

/** Renders the group's events; engine output goes to stderr, each line tagged with its process. */
function superviseOutput(
  group: EngineGroup,
  output: Output,
  options: {
    file: string
    n: number
    verbose: boolean
    secrets: readonly string[]
    signalledAt: () => number | undefined
    /** With node tunnels: the engine ids of each node. */
    nodesOf?: ((ids: readonly number[]) => Record<string, number[]>) | undefined
  },
): void {
  const { file } = options
  group.on('engine-started', (e) =>
    output.emit({ event: 'engine-started', file, index: e.index, pid: e.pid }),
  )
  group.on('engine-registered', (e) =>
    output.emit({ event: 'engine-registered', file, index: e.index, id: e.id }),
  )
  group.on('registered', (e) =>
    output.emit({
      event: 'registered',
      file,
      engines: options.n,
      ids: e.ids,
      ...(options.nodesOf !== undefined && { nodes: options.nodesOf(e.ids) }),
      ms: Math.round(performance.now() - group.startedAt),
    }),
  )
  group.on('engine-output', (e) => {
    // Across hosts, mpiexec tags each line with its rank (--tag-output).
    const tagged = options.nodesOf === undefined ? undefined : parseTagged(e.line)
    const text = tagged?.text ?? e.line
    if (!options.verbose && (isRoutineLog(text) || text.startsWith('ipp-tunnel-node '))) return
    const who = tagged === undefined ? `process #${String(e.index)}` : `rank ${String(tagged.rank)}`
    process.stderr.write(`[${who}] ${visible(redactLine(text, options.secrets))}\n`)
  })
  let spawnFailures = 0
  group.on('engine-error', (e) => {
    // The same command fails the same way for every process: one line.
    if (spawnFailures++ === 0) output.fail(e.error, { file, index: e.index })
  })
  group.on('engine-exited', (e) =>
    output.emit({
      event: 'engine-exited',
      file,
      index: e.index,
      pid: e.pid,
      code: e.code,
      signal: e.signal,
      stopped: e.stopped,
    }),
  )
  group.on('unregistered', (e) => {
    const since = options.signalledAt()
    output.emit({
      event: 'unregistered',
      file,
      remaining: e.remaining,
      ...(since !== undefined && { ms: Math.round(performance.now() - since) }),
    })
  })
  let hubErrors = 0
  group.on('hub-error', (e) => {
    if (hubErrors++ === 0) {
      output.emit({ event: 'warning', file, message: `asking the hub for its engines: ${e.error.message}` })
    }
  })
}
