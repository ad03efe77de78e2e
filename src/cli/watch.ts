import { stat } from 'node:fs/promises'
import { resolve } from 'node:path'

import type { Argv } from 'yargs'

import { IppTunnelError } from '../errors/index.js'
import { addressText, type ForwardInfo } from '../tunnel/index.js'
import { profileSecurityDir, runtimeDir, statusSocketPath, TunnelService } from '../service/index.js'
import { EXIT, Output } from './output.js'
import { untilSignal } from './signals.js'
import {
  sshOptionsFrom,
  withListenOption,
  withSshOptions,
  type ListenArgs,
  type SshArgs,
} from './ssh-options.js'
import { formatTunnelEvents } from './tunnel-events.js'

interface WatchArgs extends SshArgs, ListenArgs {
  readonly profile?: readonly string[] | undefined
  readonly dir?: readonly string[] | undefined
  readonly 'out-dir'?: string | undefined
  readonly json: boolean
  readonly debug: boolean
}

/** The directories `watch` follows: each `--profile`'s security dir and each `--dir`; by default profile `default`. */
export function watchedDirs(
  profiles: readonly string[],
  dirs: readonly string[],
  env: NodeJS.ProcessEnv,
): string[] {
  const chosen = [...profiles.map((p) => profileSecurityDir(p, env)), ...dirs.map((d) => resolve(d))]
  return chosen.length > 0 ? [...new Set(chosen)] : [profileSecurityDir('default', env)]
}

/**
 * Refuses a `--dir` that is not a directory, or that does not exist (a typo would otherwise be created and watched
 * forever); only the default profile's security directory is created when missing.
 */
export async function checkDirs(dirs: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  const createdIfMissing = profileSecurityDir('default', env)
  for (const dir of dirs) {
    const path = resolve(dir)
    let isDir: boolean
    try {
      isDir = (await stat(path)).isDirectory()
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOENT' && path === createdIfMissing) continue
      const why =
        code === 'ENOENT'
          ? 'no such directory; check the spelling, or create it first'
          : code === 'ENOTDIR'
            ? 'a part of the path is not a directory'
            : `cannot be read (${code ?? 'unknown error'})`
      throw new IppTunnelError('E_USAGE', `watch --dir ${path}: ${why}`, { cause: err })
    }
    if (!isDir)
      throw new IppTunnelError(
        'E_USAGE',
        `watch --dir ${path}: not a directory; name the directory that holds the connection files`,
      )
  }
}

/** `ipp-tunnel watch`: the service, in the foreground until SIGINT/SIGTERM. */
export function registerWatch(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command(
    'watch',
    'follow security directories: every connection file that appears gets tunnels and a loopback copy',
    (y) =>
      withSshOptions(
        withListenOption(y)
          .option('profile', {
            alias: 'p',
            type: 'string',
            array: true,
            describe:
              'IPython profile whose security dir to watch (repeatable); copies go to profile "<name>-tunnel". With neither --profile nor --dir: profile "default"',
          })
          .option('dir', {
            alias: 'd',
            type: 'string',
            array: true,
            describe:
              'a directory to watch (repeatable), e.g. a Jupyter runtime dir; copies go to the sibling "<dir>-tunnel"',
          })
          .option('out-dir', {
            type: 'string',
            describe: 'put every loopback copy here instead (never a watched directory)',
          }),
      ),
    (args) => run(() => watch(args as unknown as WatchArgs)),
  )
}

function forwardsOf(forwards: readonly ForwardInfo[]) {
  return forwards.map((f) => ({
    channel: f.channel,
    local: addressText(f.local),
    remote: addressText(f.remote),
  }))
}

async function watch(args: WatchArgs): Promise<number> {
  const output = formatTunnelEvents(
    new Output({
      json: args.json,
      debug: args.debug,
      humanResults: ['watching', 'ready', 'changed', 'closed'],
    }),
  )
    .format('changed', (e) => `changed: ${String(e.file)} followed in ${String(e.ms)} ms, copy rewritten`)
    .format('error', (e) => {
      const file = String(e.file)
      const message = String(e.message)
      return `error: ${message.includes(file) ? message : `${file}: ${message}`}`
    })
    .format('watching', (e) => {
      const dirs = (e.dirs as string[]).join(', ')
      return `watching ${dirs}; ipp-tunnel status asks ${String(e.socket)}`
    })
  const signals = untilSignal()
  let service: TunnelService | undefined
  try {
    const dirs = watchedDirs(args.profile ?? [], args.dir ?? [], process.env)
    await checkDirs(args.dir ?? [], process.env)
    service = await TunnelService.start({
      ...sshOptionsFrom(args, output),
      dirs,
      runtimeDir: runtimeDir(process.env),
      listen: args.listen ?? 'tcp',
      ...(args['out-dir'] !== undefined && { outDir: resolve(args['out-dir']) }),
    })
    service.on('ready', (e) =>
      output.emit({
        event: 'ready',
        file: e.file,
        out: e.out,
        ms: Math.round(e.ms),
        forwards: forwardsOf(e.forwards),
        ...(e.sshFrom !== undefined && { sshFrom: e.sshFrom }),
      }),
    )
    service.on('changed', (e) =>
      output.emit({
        event: 'changed',
        file: e.file,
        out: e.out,
        ms: Math.round(e.ms),
        forwards: forwardsOf(e.forwards),
      }),
    )
    service.on('closed', (e) => output.emit({ event: 'closed', file: e.file }))
    service.on('file:error', (e) =>
      output.emit({ event: 'error', file: e.file, code: e.code, message: e.message }),
    )
    service.on('link:reconnecting', (e) => output.emit({ event: 'reconnecting', ...e }))
    service.on('link:reconnected', (e) =>
      output.emit({ event: 'reconnected', ...e, downMs: Math.round(e.downMs) }),
    )
    output.emit({ event: 'watching', dirs, socket: statusSocketPath(process.env), pid: process.pid })
    await signals.promise
    await service.close()
    return EXIT.ok
  } catch (err) {
    await service?.close()
    return output.fail(err)
  } finally {
    signals.dispose()
  }
}
