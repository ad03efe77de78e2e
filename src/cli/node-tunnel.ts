import { mkdir, rm, rmdir } from 'node:fs/promises'
import { hostname } from 'node:os'
import { basename, join, resolve } from 'node:path'

import type { Argv } from 'yargs'

import { readConnectionFile } from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'
import { ensurePrivateDir } from '../safe-fs/index.js'
import { chooseDestination, openTunnel, type Tunnel } from '../tunnel/index.js'
import { EXIT, Output } from './output.js'
import { sshOptionsFrom, withSshOptions, type SshArgs } from './ssh-options.js'
import { followTunnel, readyEvent } from './tunnel-events.js'

interface NodeTunnelArgs extends SshArgs {
  readonly file: string
  readonly 'job-dir': string
  readonly 'until-eof': boolean
  readonly debug: boolean
}

/**
 * `ipp-tunnel node-tunnel FILE --job-dir DIR` (hidden): what `engines --host` runs once per node through the
 * MPI launcher. Opens the tunnel on the node it runs on, writes the loopback file at `DIR/<hostname>/<name>`,
 * prints JSON events on stdout (`node-ready` first), and stays up until SIGTERM; then removes its files.
 */
export function registerNodeTunnel(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command(
    'node-tunnel <file>',
    false,
    (y) =>
      withSshOptions(
        y
          .positional('file', { type: 'string', demandOption: true })
          .option('job-dir', { type: 'string', demandOption: true, requiresArg: true })
          .option('until-eof', { type: 'boolean', default: false }),
      ),
    (args) => run(() => nodeTunnel(args as unknown as NodeTunnelArgs)),
  )
}

async function nodeTunnel(args: NodeTunnelArgs): Promise<number> {
  const output = new Output({ json: true, debug: args.debug })
  const file = resolve(args.file)
  const host = hostname()
  const rank = Number(
    process.env.OMPI_COMM_WORLD_RANK ?? process.env.PMI_RANK ?? process.env.SLURM_PROCID ?? 0,
  )
  const jobDir = resolve(args['job-dir'])
  const nodeDir = join(jobDir, host)
  let madeNodeDir = false
  let tunnel: Tunnel | undefined
  const signals = nodeSignals(args['until-eof'])
  try {
    await ensurePrivateDir(jobDir, { what: 'job directory' })
    try {
      await mkdir(nodeDir, { mode: 0o700 })
      madeNodeDir = true
    } catch (cause) {
      throw new IppTunnelError(
        'E_NODE',
        `${nodeDir}: cannot create this node's directory (two node tunnels on host ${host}?)`,
        { cause },
      )
    }
    const options = sshOptionsFrom(args, output)
    const { info } = await readConnectionFile(file)
    if (info.kind !== 'ipp-engine') {
      throw new IppTunnelError(
        'E_CONNFILE_KIND',
        `${file}: is an ${info.kind} connection file, not an engine file`,
      )
    }
    const { destination } = await chooseDestination(info, file, args.ssh, 'pass --ssh user@host')
    const out = join(nodeDir, basename(file))
    tunnel = await openTunnel(info, { ...options, ssh: destination, out, signal: signals.signal })
    const stopFollowing = followTunnel(tunnel, output, file)
    output.emit({
      event: 'node-ready',
      host,
      rank,
      out,
      ms: Math.round(tunnel.readyMs),
      forwards: readyEvent(tunnel, file, out).forwards,
    })
    const failed = new Promise<Error>((resolveFailed) =>
      tunnel?.once('link:failed', (e) => resolveFailed(e.error)),
    )
    const ending = await Promise.race([signals.promise, failed])
    stopFollowing()
    await tunnel.close()
    if (ending instanceof Error) return output.fail(ending, { file, host, rank })
    output.emit({ event: 'closed', file, host, rank })
    return EXIT.ok
  } catch (err) {
    return output.fail(err, { file, host, rank })
  } finally {
    await tunnel?.close()
    if (madeNodeDir) await rm(nodeDir, { recursive: true, force: true })
    // The last node tunnel on a shared file system removes the job directory.
    await rmdir(jobDir).catch(() => undefined)
    signals.dispose()
  }
}

/**
 * The first SIGINT/SIGTERM aborts; later ones are ignored, so that the node's files are always removed: a
 * launcher may signal its tasks more than once as it ends a step (srun does), and the engines are already
 * gone by then. A launcher's SIGKILL after its grace period still ends us.
 */
function nodeSignals(untilEof: boolean): {
  promise: Promise<NodeJS.Signals | 'EOF'>
  signal: AbortSignal
  dispose: () => void
} {
  const controller = new AbortController()
  let resolveSignal: (s: NodeJS.Signals | 'EOF') => void = () => undefined
  const promise = new Promise<NodeJS.Signals | 'EOF'>((resolve) => (resolveSignal = resolve))
  const handler = (signal: NodeJS.Signals | 'EOF') => {
    if (controller.signal.aborted) return
    resolveSignal(signal)
    controller.abort(new IppTunnelError('E_CLOSED', `interrupted by ${signal}`))
  }
  process.on('SIGINT', handler)
  process.on('SIGTERM', handler)
  // The launcher closes our stdin to stop us (see NodeTunnelsOptions.stopByEof).
  const onEnd = () => handler('EOF')
  if (untilEof) process.stdin.on('end', onEnd).resume()
  return {
    promise,
    signal: controller.signal,
    dispose: () => {
      process.off('SIGINT', handler)
      process.off('SIGTERM', handler)
      if (untilEof) process.stdin.off('end', onEnd).pause()
    },
  }
}
