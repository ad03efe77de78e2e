import { resolve } from 'node:path'

import type { Argv } from 'yargs'

import { IppTunnelError } from '../errors/index.js'
import { splitCommand } from '../engines/index.js'
import { checkJobId, type KernelSlurmOptions } from '../kernels/index.js'
import { startKernel, type StartedKernel } from './kernel-start.js'
import { EXIT, oneLine, Output } from './output.js'
import { interrupted, interruptedStatus } from './signals.js'
import { sshOptionsFrom, withSshOptions, type SshArgs } from './ssh-options.js'

/** The options `kernel` takes beyond the ssh ones; `kernelspec install` writes the same into a spec. */
export interface KernelArgs extends SshArgs {
  readonly python?: string | undefined
  readonly 'kernel-cmd'?: string | undefined
  readonly setup?: string | undefined
  readonly cwd?: string | undefined
  readonly env?: readonly string[] | undefined
  readonly persist?: number | undefined
  readonly 'remote-dir'?: string | undefined
  readonly 'remote-transport'?: 'unix' | 'tcp' | undefined
  readonly slurm?: string | undefined
  readonly 'slurm-jobid'?: string | undefined
}

interface KernelCommandArgs extends KernelArgs {
  readonly service: boolean
  readonly destination: string
  readonly 'connection-file': string
  readonly json: boolean
  readonly debug: boolean
}

/** DEST and the options that say how the remote kernel starts, shared by `kernel` and `kernelspec install`. */
export function withKernelOptions<T>(yargs: Argv<T>) {
  return yargs
    .positional('destination', { type: 'string', demandOption: true, describe: 'user@host or an alias' })
    .option('python', {
      type: 'string',
      describe: 'the remote python (after --setup); default python3',
      conflicts: 'kernel-cmd',
    })
    .option('kernel-cmd', {
      type: 'string',
      describe:
        'the remote command instead of PYTHON -m ipykernel_launcher -f {remote_connection_file} (words split on spaces)',
    })
    .option('setup', {
      type: 'string',
      describe: 'shell lines run first on the server, in the same shell (module load …, conda activate …)',
    })
    .option('cwd', { type: 'string', describe: "the kernel's working directory on the server" })
    .option('env', { type: 'string', array: true, describe: 'K=V set for the remote kernel (repeatable)' })
    .option('persist', {
      type: 'number',
      default: 1800,
      describe: 'seconds the kernel lives on the server with no launcher attached (laptop asleep, link down)',
    })
    .option('remote-dir', {
      type: 'string',
      describe:
        'remote directory of the kernel state (0700); default ~/.ipp-tunnel/remote (with --slurm: shared with the compute nodes)',
    })
    .option('remote-transport', {
      choices: ['unix', 'tcp'] as const,
      describe:
        'how the remote kernel listens: unix sockets in its private dir (default), or tcp on 127.0.0.1',
    })
    .option('slurm', {
      type: 'string',
      describe:
        "run the kernel on a compute node: srun 'SRUN ARGS' (words split as a shell would, no shell run)",
    })
    .option('slurm-jobid', {
      type: 'string',
      describe:
        'run the kernel as a step of this allocation of yours (srun --jobid ID --overlap; salloc --no-shell)',
    })
}

/** `--slurm` / `--slurm-jobid` as the options of a kernel under Slurm, or undefined; tcp only. */
export function slurmOf(args: KernelArgs): KernelSlurmOptions | undefined {
  if (args.slurm === undefined && args['slurm-jobid'] === undefined) return undefined
  if (args['remote-transport'] === 'unix') {
    throw new IppTunnelError(
      'E_USAGE',
      '--slurm runs the kernel on a compute node: --remote-transport is tcp there',
    )
  }
  return {
    ...(args.slurm !== undefined && { srunArgs: splitCommand(args.slurm, '--slurm') }),
    ...(args['slurm-jobid'] !== undefined && { jobId: checkJobId(args['slurm-jobid']) }),
  }
}

/** `--env K=V` words as a record; a word without `=` is a usage error. */
export function envOf(words: readonly string[] | undefined): Record<string, string> | undefined {
  if (words === undefined || words.length === 0) return undefined
  const env: Record<string, string> = {}
  for (const word of words) {
    const at = word.indexOf('=')
    if (at <= 0) throw new IppTunnelError('E_USAGE', `--env ${JSON.stringify(word)}: write K=V`)
    env[word.slice(0, at)] = word.slice(at + 1)
  }
  return env
}

/** `ipp-tunnel kernel DEST --connection-file FILE`: what a kernelspec of ours runs. */
export function registerKernel(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command(
    'kernel <destination>',
    'start a Jupyter kernel on the ssh server for a connection file written here (what our kernelspecs run)',
    (y) =>
      withSshOptions(
        withKernelOptions(
          y
            .option('connection-file', {
              alias: 'f',
              type: 'string',
              demandOption: true,
              describe: 'the connection file Jupyter wrote ({connection_file})',
            })
            .option('service', {
              type: 'boolean',
              default: true,
              describe:
                "start the kernel through the running `ipp-tunnel watch` service's link when there is one (--no-service: a link of its own)",
            }),
        ),
      ),
    (args) => run(() => kernel(args as unknown as KernelCommandArgs)),
  )
}

async function kernel(args: KernelCommandArgs): Promise<number> {
  // everything goes to stderr: Jupyter keeps the launcher's stderr as the kernel's log
  const output = new Output({ json: args.json, debug: args.debug, stdout: process.stderr })
  output
    .format(
      'started',
      (e) =>
        `kernel started on ${String(e.host)} (${typeof e.job === 'string' ? `job step ${e.job}.${String(e.step)}` : `pid ${String(e.pid)}`})`,
    )
    .format('output', (e) => oneLine(String(e.text)))
    .format('warning', (e) => `warning: ${String(e.message)}`)
    .format('kernel-state', (e) => {
      const job =
        typeof e.job === 'string' ? ` (job ${e.job}${typeof e.node === 'string' ? ` on ${e.node}` : ''})` : ''
      return `kernel-state: ${String(e.state)}${job}${typeof e.message === 'string' ? `: ${e.message}` : ''}`
    })
    .format('detached', () => 'link down: the kernel runs on, waiting for the link')
    .format('via-service', (e) => `through the ipp-tunnel service's link to ${String(e.destination)}`)
    .format('waiting', (e) => String(e.message))
    .format('reattached', (e) => `attached again after ${String(e.downMs)} ms`)
    .format(
      'reconnecting',
      (e) => `reconnecting #${String(e.attempt)} in ${String(e.delayMs)} ms: ${String(e.message)}`,
    )
    .format(
      'exited',
      (e) =>
        `kernel exited (${typeof e.code === 'number' ? `status ${e.code}` : `signal ${typeof e.signal === 'number' ? e.signal : '?'}`})`,
    )
  const file = resolve(args['connection-file'])
  const controller = new AbortController()
  let stopping: NodeJS.Signals | undefined
  let remote: StartedKernel | undefined
  // SIGINT is jupyter_client's interrupt (interrupt_mode signal): it goes to the remote kernel, and never stops us
  const onInt = (): void => {
    if (remote === undefined) return
    remote.interrupt().catch((err: unknown) => output.emit({ event: 'warning', file, message: String(err) }))
  }
  const onTerm = (signal: NodeJS.Signals): void => {
    if (stopping !== undefined) process.exit(interruptedStatus(signal))
    stopping = signal
    controller.abort(new IppTunnelError('E_CLOSED', `interrupted by ${signal}`))
    void remote?.close()
  }
  process.on('SIGINT', onInt)
  process.on('SIGTERM', onTerm)
  process.on('SIGHUP', onTerm)
  try {
    const env = envOf(args.env)
    const slurm = slurmOf(args)
    const options = {
      ...sshOptionsFrom(args, output),
      useService: args.service,
      destination: args.destination,
      connectionFile: file,
      // Jupyter's interrupt is SIGINT to this process's whole group: our children must not be in it
      ownProcessGroup: true,
      ...(args.python !== undefined && { python: args.python }),
      ...(args['kernel-cmd'] !== undefined && {
        kernelCmd: args['kernel-cmd'].split(/\s+/u).filter(Boolean),
      }),
      ...(args.setup !== undefined && { setup: args.setup }),
      ...(args.cwd !== undefined && { cwd: args.cwd }),
      ...(env !== undefined && { env }),
      ...(args.persist !== undefined && { persistSeconds: args.persist }),
      ...(args['remote-dir'] !== undefined && { remoteDir: args['remote-dir'] }),
      ...(args['remote-transport'] !== undefined && { remoteTransport: args['remote-transport'] }),
      ...(slurm !== undefined && { slurm }),
      onState: (state: object) => output.emit({ event: 'kernel-state', file, ...state }),
      onWarning: (message: string) => output.emit({ event: 'warning', file, message }),
    }
    let adopt: { host: string; pid: number } | undefined
    for (;;) {
      remote = await startKernel(options, output, controller.signal, adopt)
      const started = remote
      follow(started, output, file)
      if (adopt === undefined) {
        output.emit({
          event: 'started',
          file,
          name: started.name,
          host: started.slurm?.host ?? started.host,
          pid: started.pid,
          ...(started.slurm !== undefined && { job: started.slurm.job, step: started.slurm.step }),
        })
      }
      const ended = await started.exited
      await started.close()
      if (stopping !== undefined) return EXIT.ok
      // the service went away (stopped, restarted): the kernel runs on; follow it over a link of our own
      if (ended.error?.code === 'E_SERVICE_DOWN' && adopt === undefined && started.host !== '') {
        output.emit({
          event: 'warning',
          file,
          message: `${ended.error.message}: following the kernel over a link of our own`,
        })
        adopt = { host: started.host, pid: started.pid }
        continue
      }
      if (ended.error !== undefined) return output.fail(ended.error, { file })
      output.emit({ event: 'exited', file, code: ended.code, signal: ended.signal })
      return ended.code ?? (ended.signal !== null ? 128 + ended.signal : EXIT.runtime)
    }
  } catch (err) {
    await remote?.close()
    if (stopping !== undefined) return interrupted(output, stopping, { file })
    return output.fail(err, { file })
  } finally {
    process.off('SIGINT', onInt)
    process.off('SIGTERM', onTerm)
    process.off('SIGHUP', onTerm)
  }
}

/** The kernel's output and link events, as launcher events (Jupyter's log). */
function follow(started: StartedKernel, output: Output, file: string): void {
  started.on('output', ({ stream, data }) => {
    for (const text of data.toString('utf8').split('\n')) {
      if (text !== '') output.emit({ event: 'output', file, stream, text })
    }
  })
  started.on('detached', () => output.emit({ event: 'detached', file }))
  started.on('reattached', (e) => output.emit({ event: 'reattached', file, ...e }))
  started.on('link:reconnecting', (e) =>
    output.emit({
      event: 'reconnecting',
      file,
      attempt: e.attempt,
      delayMs: e.delayMs,
      message: e.error.message,
    }),
  )
}
