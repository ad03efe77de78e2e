import { stat } from 'node:fs/promises'
import { resolve } from 'node:path'
import { isDeepStrictEqual } from 'node:util'

import createYargs, { type Argv } from 'yargs'

import { IppTunnelError } from '../errors/index.js'
import { addressText, type ForwardInfo } from '../tunnel/index.js'
import {
  profileSecurityDir,
  runtimeDir,
  statusSocketPath,
  TunnelService,
  type RemoteDir,
} from '../service/index.js'
import { parseRemoteSpec, remoteDefaultDirs } from '../sources/index.js'
import { loginCommand, quotePrompts } from '../ssh/index.js'
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
  readonly remote?: readonly string[] | undefined
  readonly 'remote-profile'?: string | undefined
  readonly poll?: number | undefined
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

/**
 * The remote directories `watch` follows: each `--remote [user@]host[:port]:DIR`, and for a bare `--remote host`
 * the remote profile's security dir (`--remote-profile`, default `default`) and the remote Jupyter runtime dir.
 */
export function remoteDirs(specs: readonly string[], profile: string | undefined): RemoteDir[] {
  if (profile !== undefined && specs.length === 0) {
    throw new IppTunnelError('E_USAGE', '--remote-profile needs --remote host')
  }
  if (profile !== undefined && !/^[\w.-]+$/u.test(profile)) {
    throw new IppTunnelError('E_USAGE', `--remote-profile ${JSON.stringify(profile)} is not a profile name`)
  }
  const out: RemoteDir[] = []
  for (const text of specs) {
    const spec = parseRemoteSpec(text)
    const dirs = spec.path !== undefined ? [spec.path] : remoteDefaultDirs(profile)
    for (const dir of dirs) {
      if (!out.some((r) => r.destination === spec.destination && r.dir === dir))
        out.push({ destination: spec.destination, dir })
    }
  }
  return out
}

/**
 * Every option `watch` takes, ssh and listen options included: `watch` and `install-service` (which puts them into
 * the unit's `watch` command line, see {@link watchArgvOf}) both take them from here, so they cannot drift.
 */
export function withWatchOptions<T>(y: Argv<T>) {
  return withSshOptions(
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
      })
      .option('remote', {
        alias: 'r',
        type: 'string',
        array: true,
        describe:
          'follow a directory on an ssh server over SFTP (repeatable): [user@]host[:port]:DIR (DIR may start with ~/); a bare host follows its ~/.ipython/profile_<remote-profile>/security and ~/.local/share/jupyter/runtime',
      })
      .option('remote-profile', {
        type: 'string',
        describe: 'the remote IPython profile a bare --remote host follows (default "default")',
      })
      .option('poll', {
        type: 'number',
        default: 1000,
        describe: 'milliseconds between polls of each remote directory',
      }),
  )
}

/** The options of `watch` that name local files or directories: made absolute when they go into the unit. */
const PATH_OPTIONS: ReadonlySet<string> = new Set([
  'dir',
  'out-dir',
  'identity',
  'known-hosts',
  'passphrase-file',
  'ssh-config',
])

/** What yargs knows of the options it was given (`getOptions()`, which its typings leave out). */
interface OptionTable {
  readonly key: Readonly<Record<string, unknown>>
  readonly array: readonly string[]
  readonly boolean: readonly string[]
  readonly count: readonly string[]
  readonly default: Readonly<Record<string, unknown>>
  readonly alias: Readonly<Record<string, readonly string[]>>
}

/**
 * The `watch` command line for the values of its options in `args` (as yargs parsed them for `watch` or for
 * `install-service`): every option of {@link withWatchOptions} that is given and differs from its default, paths
 * made absolute against `cwd`. `skip` leaves out option values the caller handles itself.
 */
export function watchArgvOf(
  args: Readonly<Record<string, unknown>>,
  cwd: string,
  skip: (name: string, value: unknown) => boolean = () => false,
): string[] {
  const table = (withWatchOptions(createYargs([])) as unknown as { getOptions(): OptionTable }).getOptions()
  const aliases = new Set(Object.values(table.alias).flat())
  const argv: string[] = []
  for (const name of Object.keys(table.key)) {
    if (name === 'help' || name === 'version' || aliases.has(name)) continue
    const value = args[name]
    if (value === undefined || skip(name, value)) continue
    if (isDeepStrictEqual(value, table.default[name])) continue
    const flag = `--${name}`
    if (table.count.includes(name)) {
      argv.push(...Array.from({ length: Number(value) }, () => flag))
    } else if (table.boolean.includes(name)) {
      argv.push(value === true ? flag : `--no-${name}`)
    } else {
      const values: unknown[] = Array.isArray(value) ? value : [value]
      for (const v of values) argv.push(flag, PATH_OPTIONS.has(name) ? resolve(cwd, String(v)) : String(v))
    }
  }
  return argv
}

/**
 * Checks what `watch` would refuse before it starts anything: a `--remote-profile` without `--remote`, a bad
 * `--poll`. Returns the remote directories and the poll interval.
 *
 * @throws IppTunnelError `E_USAGE`
 */
export function checkWatchArgs(args: {
  readonly remote?: readonly string[] | undefined
  readonly 'remote-profile'?: string | undefined
  readonly poll?: number | undefined
}): { remotes: RemoteDir[]; poll: number } {
  const remotes = remoteDirs(args.remote ?? [], args['remote-profile'])
  const poll = args.poll ?? 1000
  if (!Number.isInteger(poll) || poll < 10) {
    throw new IppTunnelError('E_USAGE', `--poll ${String(args.poll)}: give whole milliseconds, at least 10`)
  }
  return { remotes, poll }
}

/** `ipp-tunnel watch`: the service, in the foreground until SIGINT/SIGTERM. */
export function registerWatch(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command(
    'watch',
    'follow security directories: every connection file that appears gets tunnels and a loopback copy',
    (y) => withWatchOptions(y),
    (args) => run(() => watch(args as unknown as WatchArgs)),
  )
}

/** `source: "remote"`, the destination and the remote path, on events about pulled files. */
function remoteOf(e: { source?: 'remote'; destination?: string; path?: string }) {
  return e.source === 'remote' ? { source: e.source, destination: e.destination, path: e.path } : {}
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
    .format('auth-needed', (e) => String(e.message))
    .format('logged-in', (e) => `logged in to ${String(e.destination)}; its link is up`)
    .format('watching', (e) => {
      const remotes = (e.remotes as RemoteDir[] | undefined) ?? []
      const dirs = [...(e.dirs as string[]), ...remotes.map((r) => `${r.destination}:${r.dir}`)].join(', ')
      return `watching ${dirs}; ipp-tunnel status asks ${String(e.socket)}`
    })
    .format('remote:watching', (e) =>
      e.present === true
        ? `following ${String(e.destination)}:${String(e.dir)}`
        : `waiting for ${String(e.destination)}:${String(e.dir)} to exist`,
    )
    .format('warning', (e) => `warning: ${String(e.message)}`)
  const signals = untilSignal()
  let service: TunnelService | undefined
  try {
    const { remotes, poll } = checkWatchArgs(args)
    const local = (args.profile ?? []).length + (args.dir ?? []).length > 0 || remotes.length === 0
    const dirs = local ? watchedDirs(args.profile ?? [], args.dir ?? [], process.env) : []
    await checkDirs(args.dir ?? [], process.env)
    service = await TunnelService.start({
      ...sshOptionsFrom(args, output),
      dirs,
      remotes,
      pollMs: poll,
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
        ...remoteOf(e),
      }),
    )
    service.on('changed', (e) =>
      output.emit({
        event: 'changed',
        file: e.file,
        out: e.out,
        ms: Math.round(e.ms),
        forwards: forwardsOf(e.forwards),
        ...remoteOf(e),
      }),
    )
    service.on('closed', (e) => output.emit({ event: 'closed', file: e.file, ...remoteOf(e) }))
    service.on('file:error', (e) =>
      output.emit({ event: 'error', file: e.file, code: e.code, message: e.message, ...remoteOf(e) }),
    )
    service.on('remote:watching', (e) => output.emit({ event: 'remote:watching', ...e }))
    service.on('warning', (e) => output.emit({ event: 'warning', file: e.file, message: e.message }))
    service.on('link:reconnecting', (e) => output.emit({ event: 'reconnecting', ...e }))
    service.on('auth-needed', (e) =>
      output.emit({
        event: 'auth-needed',
        destination: e.destination,
        host: e.host,
        ...(e.method !== undefined && { method: e.method }),
        name: e.name,
        instructions: e.instructions,
        prompts: e.prompts,
        message: `${e.destination} needs a login${e.prompts.length > 0 ? ` (it asks ${quotePrompts(e)})` : ''}; its tunnels wait, the rest keeps running. Answer in a terminal with: ${loginCommand(e.destination)}`,
      }),
    )
    service.on('logged-in', (e) => output.emit({ event: 'logged-in', destination: e.destination }))
    service.on('link:reconnected', (e) =>
      output.emit({ event: 'reconnected', ...e, downMs: Math.round(e.downMs) }),
    )
    output.emit({
      event: 'watching',
      dirs,
      ...(remotes.length > 0 && { remotes }),
      socket: statusSocketPath(process.env),
      pid: process.pid,
    })
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
