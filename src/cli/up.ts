import { lstat } from 'node:fs/promises'
import { resolve } from 'node:path'

import type { Argv } from 'yargs'

import { isTunnelledKernelName, readConnectionFile } from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'
import { chooseDestination, defaultOutPath, openTunnel } from '../tunnel/index.js'
import { remotePathOf, type RemoteSpec } from '../sources/index.js'
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

interface UpArgs extends SshArgs, ListenArgs {
  readonly file: string
  readonly out?: string | undefined
  readonly poll?: number | undefined
  readonly json: boolean
  readonly debug: boolean
}

/** Refuses a file already at `out`: a kernel's `-ssh.json` copy that is there is never replaced. */
async function refuseExisting(out: string): Promise<void> {
  if (
    await lstat(out).then(
      () => true,
      () => false,
    )
  ) {
    throw new IppTunnelError(
      'E_COPY_CONFLICT',
      `${out} exists (jupyter console --ssh writes that name too, or an up that was killed left it); remove it, or give --out`,
    )
  }
}

/** `ipp-tunnel up FILE`: tunnels in the foreground until SIGINT/SIGTERM. */
export function registerUp(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command(
    'up <file>',
    'open SSH forwards for a connection file and write its loopback copy; stay up until interrupted',
    (y) =>
      withSshOptions(
        withSourceFile(withListenOption(y)).option('out', {
          alias: 'o',
          type: 'string',
          describe: 'where to write the loopback copy (default: sibling "-tunnel" profile or directory)',
        }),
      ),
    (args) => run(() => up(args as unknown as UpArgs)),
  )
}

async function up(args: UpArgs): Promise<number> {
  // The ready block (loopback file, forwards) is what `up > log` keeps; diagnostics stay on stderr.
  const output = formatTunnelEvents(
    new Output({ json: args.json, debug: args.debug, humanResults: ['ready', 'closed'] }),
  )
  let remote: RemoteSpec | undefined
  try {
    remote = remotePathOf(args.file)
  } catch (err) {
    return output.fail(err, { file: args.file })
  }
  const signals = untilSignal()
  if (remote !== undefined) {
    try {
      // loaded only for a remote file: it brings the service (and chokidar) that a local `up` never needs
      const { defaultRemoteOut, openPulled } = await import('./remote-file.js')
      const out = resolve(args.out ?? defaultRemoteOut(remote, process.env))
      const { pulled, stop } = await openPulled(remote, args, out, output, signals.signal, 'ipp-tunnel up')
      const failed = new Promise<Error>((resolveFailed) =>
        pulled.tunnel.once('link:failed', (e) => resolveFailed(e.error)),
      )
      const ending = await Promise.race([signals.promise, failed])
      stop()
      await pulled.close()
      if (ending instanceof Error) return output.fail(ending, { file: pulled.file })
      output.emit({ event: 'closed', file: pulled.file })
      return EXIT.ok
    } catch (err) {
      const signal = signals.received()
      if (signal !== undefined) return interrupted(output, signal, { file: args.file })
      return output.fail(err, { file: args.file })
    } finally {
      signals.dispose()
    }
  }
  const file = resolve(args.file)
  try {
    const { info, warnings } = await readConnectionFile(file)
    for (const warning of warnings) output.emit({ event: 'warning', file, message: warning })
    const out = resolve(args.out ?? defaultOutPath(file))
    const options = sshOptionsFrom(args, output)
    const { destination, sshFrom } = await chooseDestination(info, file, args.ssh, 'pass --ssh user@host')
    const tunnel = await openTunnel(info, {
      ...options,
      ssh: destination,
      out,
      sourceFile: file,
      owner: 'ipp-tunnel up',
      // a kernel file's default copy, kernel-<id>-ssh.json beside it, is what jupyter console --ssh writes too
      ...(args.out === undefined && isTunnelledKernelName(out) && { beforeWrite: refuseExisting }),
      listen: args.listen ?? 'tcp',
      signal: signals.signal,
    })
    const stopFollowing = followTunnel(tunnel, output, file)
    output.emit({ ...readyEvent(tunnel, file, out), ...(sshFrom !== undefined && { sshFrom }) })
    const failed = new Promise<Error>((resolveFailed) =>
      tunnel.once('link:failed', (e) => resolveFailed(e.error)),
    )
    const ending = await Promise.race([signals.promise, failed])
    stopFollowing()
    await tunnel.close()
    if (ending instanceof Error) return output.fail(ending, { file })
    output.flush()
    output.emit({ event: 'closed', file })
    return EXIT.ok
  } catch (err) {
    const signal = signals.received()
    if (signal !== undefined) return interrupted(output, signal, { file })
    return output.fail(err, { file })
  } finally {
    signals.dispose()
  }
}
