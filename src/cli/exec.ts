import { spawn } from 'node:child_process'
import { createWriteStream, fstatSync } from 'node:fs'
import type { Writable } from 'node:stream'
import { rm } from 'node:fs/promises'
import { basename, join, resolve } from 'node:path'
import { constants } from 'node:os'

import type { Argv } from 'yargs'

import { readConnectionFile } from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'
import { makePrivateTempDir } from '../safe-fs/index.js'
import { openTunnel } from '../tunnel/index.js'
import { remotePathOf, type RemoteSpec } from '../sources/index.js'
import { Output } from './output.js'
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

interface ExecArgs extends SshArgs, ListenArgs {
  readonly file: string
  readonly out?: string | undefined
  readonly poll?: number | undefined
  readonly json: boolean
  readonly debug: boolean
  readonly 'events-fd'?: number | undefined
  readonly '--'?: (string | number)[]
}

/** What `--help` and the command list say the command does. */
const DESCRIPTION =
  'run a command against the loopback copy of a connection file ({} and $IPP_CONNECTION_FILE name it)'

/** `ipp-tunnel exec FILE -- CMD…`: tunnels up for as long as CMD runs; exits with CMD's status. */
export function registerExec(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command(
    'exec <file>',
    DESCRIPTION,
    (y) =>
      withSshOptions(
        withSourceFile(withListenOption(y))
          .option('out', {
            alias: 'o',
            type: 'string',
            describe: 'where to write the loopback copy (default: private temp dir)',
          })
          .option('events-fd', {
            type: 'number',
            describe: 'write events (human or --json) to this open file descriptor instead of stderr',
          })
          .usage(`$0 exec FILE [options] -- CMD [ARGS…]\n\n${DESCRIPTION}`),
      ),
    (args) => run(() => exec(args as unknown as ExecArgs)),
  )
}

async function exec(args: ExecArgs): Promise<number> {
  const events = eventsStream(args['events-fd'])
  if (events instanceof IppTunnelError) return new Output({ json: args.json, debug: args.debug }).fail(events)
  // The command's stdout is its own: our events, JSON too, go to stderr or --events-fd.
  const output = formatTunnelEvents(
    new Output({ json: args.json, debug: args.debug, stderr: events, events }),
  )
  let remote: RemoteSpec | undefined
  try {
    remote = remotePathOf(args.file)
  } catch (err) {
    return output.fail(err, { file: args.file })
  }
  const file = remote === undefined ? resolve(args.file) : args.file
  const command = (args['--'] ?? []).map(String)
  const [program, ...rest] = command
  if (program === undefined) {
    return output.fail(
      new IppTunnelError(
        'E_USAGE',
        'exec needs a command after --, e.g. ipp-tunnel exec FILE -- python3 my.py {}',
      ),
    )
  }
  let privateDir: string | undefined
  // set up before the tunnel opens, so that a signal aborts the start-up; passed on to CMD once it runs
  let passOn: ((signal: NodeJS.Signals) => void) | undefined
  const signals = untilSignal((signal) => passOn?.(signal))
  let opened: AsyncDisposable | undefined
  try {
    let out: string
    if (args.out === undefined) {
      privateDir = await makePrivateTempDir('ipp-tunnel-')
      out = join(privateDir, basename(file))
    } else {
      out = resolve(args.out)
    }
    let stopFollowing: () => void
    if (remote !== undefined) {
      const { openPulled } = await import('./remote-file.js') // only for a remote file, as in up
      const { pulled, stop } = await openPulled(remote, args, out, output, signals.signal, 'ipp-tunnel exec')
      opened = pulled
      stopFollowing = stop
    } else {
      const { info, warnings } = await readConnectionFile(file)
      for (const warning of warnings) output.emit({ event: 'warning', file, message: warning })
      const tunnel = await openTunnel(info, {
        ...sshOptionsFrom(args, output),
        out,
        sourceFile: file,
        owner: 'ipp-tunnel exec',
        listen: args.listen ?? 'tcp',
        signal: signals.signal,
      })
      opened = tunnel
      stopFollowing = followTunnel(tunnel, output, file)
      output.emit(readyEvent(tunnel, file, out))
    }
    const child = spawn(
      program,
      rest.map((a) => a.replaceAll('{}', out)),
      { stdio: 'inherit', env: { ...process.env, IPP_CONNECTION_FILE: out } },
    )
    passOn = (signal) => child.kill(signal)
    try {
      const status = await new Promise<number>((resolveStatus) => {
        child.once('error', (cause) => {
          output.fail(new IppTunnelError('E_SPAWN', `cannot run ${program}: ${cause.message}`, { cause }))
          resolveStatus(127)
        })
        child.once('exit', (code, signal) => {
          resolveStatus(code ?? 128 + (signal ? constants.signals[signal] : 0))
        })
      })
      stopFollowing()
      output.flush()
      return status
    } finally {
      signals.dispose()
    }
  } catch (err) {
    const signal = signals.received()
    if (signal !== undefined && passOn === undefined) return interrupted(output, signal, { file })
    return output.fail(err, { file })
  } finally {
    signals.dispose()
    await opened?.[Symbol.asyncDispose]()
    if (privateDir !== undefined) await rm(privateDir, { recursive: true, force: true })
  }
}

/** Where exec's events go: stderr, or the descriptor `--events-fd` names (checked to be open). */
function eventsStream(fd: number | undefined): Writable | IppTunnelError {
  if (fd === undefined) return process.stderr
  if (!Number.isInteger(fd) || fd < 1) {
    return new IppTunnelError(
      'E_USAGE',
      `--events-fd must be an open file descriptor number, got ${String(fd)}`,
    )
  }
  try {
    fstatSync(fd)
  } catch {
    return new IppTunnelError('E_USAGE', `--events-fd ${fd} is not an open file descriptor`)
  }
  if (fd === 2) return process.stderr
  if (fd === 1) return process.stdout
  const stream = createWriteStream('', { fd, autoClose: false })
  stream.once('error', (err: NodeJS.ErrnoException) =>
    process.stderr.write(
      `ipp-tunnel: cannot write events to --events-fd ${fd} (${err.code ?? err.message})\n`,
    ),
  )
  return stream
}
