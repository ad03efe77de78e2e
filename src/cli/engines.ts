import { rmSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import { basename, join, resolve } from 'node:path'

import type { Argv } from 'yargs'

import { readConnectionFile } from '../connection-file/index.js'
import { engineArgvs, launchEngines, type EngineExit, type EngineGroup } from '../engines/index.js'
import { IppTunnelError } from '../errors/index.js'
import { makePrivateTempDir } from '../safe-fs/index.js'
import { chooseDestination, openTunnel, type Tunnel } from '../tunnel/index.js'
import { EXIT, Output } from './output.js'
import { interrupted, untilSignal } from './signals.js'
import {
  sshOptionsFrom,
  withListenOption,
  withSshOptions,
  type ListenArgs,
  type SshArgs,
} from './ssh-options.js'
import { followTunnel, formatTunnelEvents, readyEvent } from './tunnel-events.js'

interface EnginesArgs extends SshArgs, ListenArgs {
  readonly file: string
  readonly n: number
  readonly mpi: boolean
  readonly mpiexec?: string | undefined
  readonly 'engine-cmd'?: string | undefined
  readonly json: boolean
  readonly debug: boolean
  readonly '--'?: (string | number)[]
}

/** `ipp-tunnel engines FILE -n N`: tunnels an engine file and runs N engines on its loopback copy. */
export function registerEngines(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command(
    'engines <file>',
    "tunnel a controller's engine file and run N engines through one ssh connection until interrupted",
    (y) =>
      withSshOptions(
        withListenOption(y)
          .positional('file', {
            type: 'string',
            demandOption: true,
            describe: "the controller's engine file (ipcontroller-engine.json)",
          })
          .option('n', {
            alias: 'engines',
            type: 'number',
            demandOption: true,
            describe: 'number of engines',
          })
          .option('mpi', {
            type: 'boolean',
            default: false,
            describe: 'one mpiexec -n N launch: the engines share an MPI world (needs mpi4py)',
          })
          .option('mpiexec', { type: 'string', describe: 'MPI launcher command (default: mpiexec)' })
          .option('engine-cmd', {
            type: 'string',
            describe:
              'engine command; {} names the loopback file, else --file=FILE is appended (default: /usr/bin/python3 -m ipyparallel.engine)',
          })
          .usage('$0 engines FILE -n N [--mpi] [options] [-- EXTRA ENGINE ARGS…]'),
      ),
    (args) => run(() => engines(args as unknown as EnginesArgs)),
  )
}

function formatEngineEvents(output: Output): Output {
  return formatTunnelEvents(output)
    .format('engine-started', (e) => `engine ${String(e.index)} started (pid ${String(e.pid)})`)
    .format('engine-registered', (e) => `engine ${String(e.index)} registered as id ${String(e.id)}`)
    .format(
      'registered',
      (e) => `all ${String(e.engines)} engines registered, ${String(e.ms)} ms after launch`,
    )
    .format('engine-exited', (e) => {
      const how = typeof e.signal === 'string' ? `by ${e.signal}` : `with status ${String(e.code)}`
      return `engine ${String(e.index)} (pid ${String(e.pid)}) exited ${how}${e.stopped === true ? '' : ' on its own'}`
    })
    .format('stopping', (e) => `${String(e.signal)}: stopping the engines`)
}

/** Why the supervision ended. */
type Ending =
  | { readonly kind: 'signal'; readonly signal: NodeJS.Signals }
  | { readonly kind: 'exited'; readonly exits: readonly EngineExit[] }
  | { readonly kind: 'link-failed'; readonly error: Error }

async function engines(args: EnginesArgs): Promise<number> {
  const output = formatEngineEvents(new Output({ json: args.json, debug: args.debug }))
  const file = resolve(args.file)
  let privateDir: string | undefined
  let tunnel: Tunnel | undefined
  let group: EngineGroup | undefined
  // A second signal exits at once (see untilSignal): engines and the private directory must not outlive us.
  const killOnExit = () => {
    group?.killNow()
    if (privateDir !== undefined) rmSync(privateDir, { recursive: true, force: true })
  }
  const signals = untilSignal((signal) => {
    output.emit({ event: 'stopping', file, signal })
    void group?.stop(signal)
  })
  process.once('exit', killOnExit)
  try {
    const launch = {
      file,
      n: args.n,
      mpi: args.mpi,
      ...(args['engine-cmd'] !== undefined && { engineCommand: args['engine-cmd'] }),
      ...(args.mpiexec !== undefined && { mpiexec: args.mpiexec }),
      extraArgs: (args['--'] ?? []).map(String),
      root: process.getuid?.() === 0,
    }
    engineArgvs(launch) // bad -n or command lines fail here, before any connection
    const options = sshOptionsFrom(args, output)
    const { info, warnings } = await readConnectionFile(file)
    if (info.kind !== 'ipp-engine') {
      throw new IppTunnelError(
        'E_CONNFILE_KIND',
        `${file}: is an ${info.kind} connection file; engines needs the controller's engine file (ipcontroller-engine.json)`,
      )
    }
    for (const warning of warnings) output.emit({ event: 'warning', file, message: warning })
    privateDir = await makePrivateTempDir('ipp-tunnel-engines-')
    const out = join(privateDir, basename(file))
    const { destination, sshFrom } = await chooseDestination(info, file, args.ssh, 'pass --ssh user@host')
    tunnel = await openTunnel(info, {
      ...options,
      ssh: destination,
      out,
      listen: args.listen ?? 'tcp',
      signal: signals.signal,
    })
    const stopFollowing = followTunnel(tunnel, output, file)
    output.emit({
      ...readyEvent(tunnel, file, out),
      ...(sshFrom !== undefined && { sshFrom }),
      engines: args.n,
      mpi: args.mpi,
    })
    group = launchEngines({ ...launch, file: out })
    superviseOutput(group, output, file, args.n)
    const failed = new Promise<Ending>((resolveFailed) =>
      tunnel?.once('link:failed', (e) => resolveFailed({ kind: 'link-failed', error: e.error })),
    )
    const ending = await Promise.race<Ending>([
      signals.promise.then((signal) => ({ kind: 'signal', signal })),
      group.done.then((exits) => ({ kind: 'exited', exits })),
      failed,
    ])
    if (ending.kind !== 'exited') await group.stop(ending.kind === 'signal' ? ending.signal : 'SIGTERM')
    const exits = await group.done
    stopFollowing()
    await tunnel.close()
    if (ending.kind === 'link-failed') return output.fail(ending.error, { file })
    const died = exits.filter((e) => !e.stopped && (e.code !== 0 || e.signal !== null))
    const first = died[0]
    if (first !== undefined) {
      const how = first.signal === null ? `status ${String(first.code)}` : first.signal
      return output.fail(
        new IppTunnelError(
          'E_ENGINE_EXIT',
          `${String(died.length)} of ${String(exits.length)} engine processes died on their own (first: engine ${String(first.index)}, ${how}); their output is above`,
        ),
        { file },
      )
    }
    output.emit({ event: 'closed', file })
    return EXIT.ok
  } catch (err) {
    if (group !== undefined) await group.stop('SIGTERM')
    const signal = signals.received()
    if (signal !== undefined && group === undefined) return interrupted(output, signal, { file })
    return output.fail(err, { file })
  } finally {
    await tunnel?.close()
    if (privateDir !== undefined) await rm(privateDir, { recursive: true, force: true })
    signals.dispose()
    process.off('exit', killOnExit)
  }
}

/** Renders the group's events; engine output goes to stderr, each line tagged with its engine. */
function superviseOutput(group: EngineGroup, output: Output, file: string, n: number): void {
  const registered = new Set<number>()
  group.on('engine-started', (e) =>
    output.emit({ event: 'engine-started', file, index: e.index, pid: e.pid }),
  )
  group.on('engine-registered', (e) => {
    output.emit({ event: 'engine-registered', file, index: e.index, id: e.id })
    registered.add(e.id)
    if (registered.size === n) {
      output.emit({
        event: 'registered',
        file,
        engines: n,
        ms: Math.round(performance.now() - group.startedAt),
      })
    }
  })
  group.on('engine-output', (e) => process.stderr.write(`[engine ${String(e.index)}] ${e.line}\n`))
  group.on('engine-error', (e) => output.fail(e.error, { file, index: e.index }))
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
}
