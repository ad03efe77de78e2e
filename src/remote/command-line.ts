import type { RemoteCommand } from '../ssh/index.js'
import { SUPERVISOR_SOURCE } from './supervisor.js'

/** What runs commands on the ssh server: a {@link Link} (or anything with its `exec`). */
export interface RemoteExecutor {
  exec(command: string, options?: { signal?: AbortSignal }): Promise<RemoteCommand>
}

/** `value` as one word of a POSIX shell: single-quoted, each `'` written `'\''`. */
export function shellWord(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`
}

/** Where remote processes keep their state unless told otherwise: the user's home, shared by the login nodes. */
export const DEFAULT_REMOTE_DIR = '~/.ipp-tunnel/remote'

/** How the supervisor is run on the server. */
export interface SupervisorOptions {
  /** The remote python; default `python3` (after `setup`). */
  readonly python?: string
  /** Shell lines run first, in the same shell (`module load …`, `conda activate …`); their output goes to stderr. */
  readonly setup?: string
}

/**
 * The command line that runs `argv` on the server after the setup lines. The user's login shell (bash, zsh, tcsh,
 * fish: whatever sshd starts) sees one line of letters, digits and a few quotes: the real script travels
 * base64-encoded and runs under `/bin/sh`, so neither the setup lines nor the words of `argv` meet another shell's
 * quoting rules.
 *
 * @example
 * await link.exec(remoteCommand(['scancel', '--signal=INT', '42.0'], { setup: 'module load slurm' }))
 */
export function remoteCommand(argv: readonly string[], options: { readonly setup?: string } = {}): string {
  const lines = [
    ...(options.setup !== undefined && options.setup.trim() !== ''
      ? [`{ ${options.setup}`, '} </dev/null >&2']
      : []),
    ['exec', ...argv].map(shellWord).join(' '),
  ]
  const script = Buffer.from(lines.join('\n') + '\n').toString('base64')
  return `exec /bin/sh -c 'eval "$(echo ${script} | base64 -d)"'`
}

/** The command line that runs the supervisor's `verb` on the server (see {@link remoteCommand}). */
export function supervisorCommand(
  verb: string,
  args: readonly string[],
  options: SupervisorOptions = {},
): string {
  return remoteCommand([options.python ?? 'python3', '-c', SUPERVISOR_SOURCE, verb, ...args], options)
}
