import type { Argv } from 'yargs'

import {
  RemoteCluster,
  type ClusterOptions,
  type ControllerKind,
  type EnginesKind,
} from '../cluster/index.js'
import { EXIT, oneLine, Output } from './output.js'
import { interrupted, untilSignal } from './signals.js'
import {
  sshOptionsFrom,
  withListenOption,
  withSshOptions,
  type ListenArgs,
  type SshArgs,
} from './ssh-options.js'

interface ClusterArgs extends SshArgs, ListenArgs {
  readonly destination: string
  readonly profile: string
  readonly python?: string | undefined
  readonly setup?: string | undefined
  readonly 'remote-ipython-dir'?: string | undefined
  readonly 'remote-dir'?: string | undefined
  readonly json: boolean
  readonly debug: boolean
}

interface StartArgs extends ClusterArgs {
  readonly n: number
  readonly controller: ControllerKind
  readonly engines?: EnginesKind | undefined
  readonly 'slurm-args'?: string | undefined
  readonly curve?: boolean | undefined
  readonly persist?: number | undefined
  readonly 'local-python': string
  readonly check: boolean
}

function withClusterOptions<T>(yargs: Argv<T>) {
  return withSshOptions(
    yargs
      .positional('destination', { type: 'string', demandOption: true, describe: 'user@host or an alias' })
      .option('profile', { type: 'string', default: 'default', describe: 'the ipyparallel profile' })
      .option('python', { type: 'string', describe: 'the remote python (after --setup); default python3' })
      .option('setup', {
        type: 'string',
        describe:
          'shell lines run first on the server before every command (module load …, conda activate …)',
      })
      .option('remote-ipython-dir', {
        type: 'string',
        describe: 'the remote IPython directory; default the remote $IPYTHONDIR, else ~/.ipython',
      })
      .option('remote-dir', {
        type: 'string',
        describe: 'remote directory of our processes (0700); default ~/.ipp-tunnel/remote',
      }),
  )
}

/** `ipp-tunnel cluster start|stop|list|attach DEST`. */
export function registerCluster(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command('cluster', 'a whole ipyparallel cluster on an ssh server, over one link', (y) =>
    y
      .command(
        'start <destination>',
        'start a controller and N engines on DEST, tunnel and copy the client file; Ctrl-C stops it all',
        (c) =>
          withListenOption(withClusterOptions(c))
            .option('n', { type: 'number', default: 2, describe: 'engines to start' })
            .option('controller', {
              choices: ['login', 'slurm'] as const,
              default: 'login' as const,
              describe:
                "on the ssh server itself, or inside the engines' batch job on its first node (implies --engines slurm)",
            })
            .option('engines', {
              choices: ['login', 'mpi', 'slurm'] as const,
              describe:
                'on the ssh server itself (default), as one mpiexec -n N world there, or as a Slurm batch job (sbatch)',
            })
            .option('slurm-args', {
              type: 'string',
              describe:
                "more sbatch arguments with --engines slurm ('-N 2 --time=1:00:00'), split without a shell",
            })
            .option('curve', {
              type: 'boolean',
              describe: 'CurveZMQ (IPP_ENABLE_CURVE=1); default on with --engines slurm (--no-curve: off)',
            })
            .option('persist', {
              type: 'number',
              describe: 'seconds the cluster runs on with no one attached; default: until cluster stop',
            })
            .option('local-python', {
              type: 'string',
              default: 'python3',
              describe: 'the local python that will use the cluster, checked against the remote one',
            })
            .option('check', {
              type: 'boolean',
              default: true,
              describe: 'check that both pythons have compatible ipyparallel (--no-check skips it)',
            }),
        (args) => run(() => start(args as unknown as StartArgs)),
      )
      .command(
        'attach <destination>',
        'follow a running cluster of ours again (tunnel, copy); Ctrl-C leaves it running',
        (c) => withListenOption(withClusterOptions(c)),
        (args) => run(() => attach(args as unknown as ClusterArgs)),
      )
      .command(
        'stop <destination>',
        'stop the cluster of the profile on DEST and remove its files',
        (c) => withClusterOptions(c),
        (args) => run(() => stop(args as unknown as ClusterArgs)),
      )
      .command(
        'list <destination>',
        'the clusters of ours on DEST',
        (c) => withClusterOptions(c),
        (args) => run(() => list(args as unknown as ClusterArgs)),
      )
      .demandCommand(1, 'say start, attach, stop or list'),
  )
}

function optionsOf(args: ClusterArgs, output: Output, signal?: AbortSignal): ClusterOptions {
  return {
    ...sshOptionsFrom(args, output),
    destination: args.destination,
    profile: args.profile,
    ...(args.python !== undefined && { python: args.python }),
    ...(args.setup !== undefined && { setup: args.setup }),
    ...(args['remote-ipython-dir'] !== undefined && { remoteIpythonDir: args['remote-ipython-dir'] }),
    ...(args['remote-dir'] !== undefined && { remoteDir: args['remote-dir'] }),
    ...(args.listen !== undefined && { listen: args.listen }),
    ...(signal !== undefined && { signal }),
  }
}

function formats(output: Output): Output {
  return output
    .format('controller', (e) =>
      typeof e.node === 'string'
        ? `controller running on ${e.node} (${String(e.address)}), the job's first node`
        : `controller running on ${String(e.host)} (pid ${String(e.pid)})`,
    )
    .format('copy', (e) => `copy written: ${String(e.out)}`)
    .format('engines', (e) => `${String(e.n)} engines started (${String(e.kind)}, pid ${String(e.pid)})`)
    .format('job', (e) =>
      e.state === 'SUBMITTED'
        ? `job ${String(e.job)} submitted`
        : e.state === 'GONE'
          ? `job ${String(e.job)} ended`
          : `job ${String(e.job)} ${String(e.state).toLowerCase()}`,
    )
    .format('registered', (e) => `registered: ${String(e.count)} of ${String(e.n)} engines`)
    .format('output', (e) => `${String(e.process)}: ${oneLine(String(e.text))}`)
    .format('detached', () => 'link down: the cluster runs on, waiting for the link')
    .format('reattached', (e) => `attached again after ${String(e.downMs)} ms`)
    .format('exited', (e) => `${String(e.process)} exited (status ${String(e.code ?? e.signal)})`)
}

/** Renders a cluster's events until a signal (then `leave`) or the controller's end. */
async function followCluster(
  cluster: RemoteCluster,
  output: Output,
  signals: ReturnType<typeof untilSignal>,
  leave: 'stop' | 'detach',
): Promise<number> {
  const where = { destination: cluster.host, profile: cluster.profile }
  cluster.on('registered', (e) => output.emit({ event: 'registered', ...where, ...e }))
  cluster.on('warning', (e) => output.emit({ event: 'warning', ...where, ...e }))
  cluster.on('job', (e) => output.emit({ event: 'job', ...where, ...e }))
  cluster.on('detached', () => output.emit({ event: 'detached', ...where }))
  cluster.on('reattached', (e) => output.emit({ event: 'reattached', ...where, ...e }))
  cluster.on('output', (e) => {
    if (!output.debug) return
    for (const text of e.data.toString('utf8').split('\n')) {
      if (text !== '') output.emit({ event: 'output', ...where, process: e.process, stream: e.stream, text })
    }
  })
  cluster.on('exited', (e) =>
    output.emit({ event: 'exited', ...where, process: e.process, code: e.end.code, signal: e.end.signal }),
  )
  const ended = await Promise.race([signals.promise, cluster.ended])
  if (typeof ended === 'string') {
    if (leave === 'stop') await cluster.stop()
    else await cluster.detach()
    output.emit({ event: leave === 'stop' ? 'stopped' : 'detached', ...where })
    return EXIT.ok
  }
  await cluster.stop()
  return ended.error !== undefined ? output.fail(ended.error, where) : EXIT.runtime
}

async function start(args: StartArgs): Promise<number> {
  const output = formats(new Output({ json: args.json, debug: args.debug }))
  output.format('stopped', () => 'cluster stopped; nothing left on either side')
  const signals = untilSignal()
  try {
    let cluster: RemoteCluster
    try {
      cluster = await RemoteCluster.start({
        ...optionsOf(args, output, signals.signal),
        n: args.n,
        controller: args.controller,
        onJob: (e) =>
          output.emit({ event: 'job', destination: args.destination, profile: args.profile, ...e }),
        ...(args.engines !== undefined && { engines: args.engines }),
        ...(args['slurm-args'] !== undefined && { slurmArgs: args['slurm-args'] }),
        ...(args.curve !== undefined && { curve: args.curve }),
        ...(args.persist !== undefined && { persistSeconds: args.persist }),
        localPython: args.check ? args['local-python'] : false,
      })
    } catch (err) {
      const signal = signals.received()
      if (signal !== undefined) return interrupted(output, signal, { destination: args.destination })
      return output.fail(err, { destination: args.destination, profile: args.profile })
    }
    announce(cluster, output)
    return await followCluster(cluster, output, signals, 'stop')
  } finally {
    signals.dispose()
  }
}

function announce(cluster: RemoteCluster, output: Output): void {
  const where = { destination: cluster.host, profile: cluster.profile }
  output.emit({
    event: 'controller',
    ...where,
    host: cluster.node?.name ?? cluster.host,
    pid: cluster.controllerPid,
    ...(cluster.node !== undefined && { node: cluster.node.name, address: cluster.node.address }),
  })
  output.emit({ event: 'copy', ...where, out: cluster.pulled.tunnel.out ?? '' })
  if (cluster.engines !== undefined) output.emit({ event: 'engines', ...where, ...cluster.engines })
}

async function attach(args: ClusterArgs): Promise<number> {
  const output = formats(new Output({ json: args.json, debug: args.debug }))
  output.format('detached', () => 'detached: the cluster runs on')
  const signals = untilSignal()
  try {
    let cluster: RemoteCluster
    try {
      cluster = await RemoteCluster.attach(optionsOf(args, output, signals.signal))
    } catch (err) {
      const signal = signals.received()
      if (signal !== undefined) return interrupted(output, signal, { destination: args.destination })
      return output.fail(err, { destination: args.destination, profile: args.profile })
    }
    announce(cluster, output)
    return await followCluster(cluster, output, signals, 'detach')
  } finally {
    signals.dispose()
  }
}

async function stop(args: ClusterArgs): Promise<number> {
  const output = new Output({ json: args.json, debug: args.debug })
  try {
    const stopped = await RemoteCluster.stop(optionsOf(args, output))
    output.result(stopped, `stopped cluster ${stopped.profile} on ${stopped.host}`)
    return EXIT.ok
  } catch (err) {
    return output.fail(err, { destination: args.destination, profile: args.profile })
  }
}

async function list(args: ClusterArgs): Promise<number> {
  const output = new Output({ json: args.json, debug: args.debug })
  try {
    const clusters = await RemoteCluster.list(optionsOf(args, output))
    const rows = clusters.map((c) => ({
      profile: c.profile,
      host: c.host,
      state: c.controller.state,
      controllerPid: c.controller.pid,
      controllerKind: c.controllerKind,
      node: c.node?.name,
      nodeAddress: c.node?.address,
      engines: c.n,
      enginesKind: c.kind,
      enginesState: c.engines?.state ?? 'none',
      job: c.job,
      startedAt: c.controller.startedAt?.toISOString(),
    }))
    const human =
      rows.length === 0
        ? `no cluster of ours on ${args.destination}`
        : rows
            .map(
              (r) =>
                `${r.profile}  ${r.host}  controller ${r.state} (${r.controllerKind === 'slurm' ? `in the job, on ${r.node ?? 'its first node'}; keeper ` : ''}pid ${String(r.controllerPid ?? '?')})  engines ${String(r.engines ?? '-')} ${r.enginesState}${r.job === undefined ? '' : ` (job ${r.job})`}  since ${r.startedAt ?? '?'}`,
            )
            .join('\n')
    output.result({ clusters: rows }, human)
    return EXIT.ok
  } catch (err) {
    return output.fail(err, { destination: args.destination })
  }
}
