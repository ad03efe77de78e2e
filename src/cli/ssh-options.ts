import { readFileSync, statSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { Writable } from 'node:stream'

import type { Argv } from 'yargs'

import { IppTunnelError } from '../errors/index.js'
import { CredentialRenewer, formatHostKeyNote, parseDestination } from '../ssh/index.js'
import type {
  HostKeyNote,
  HostKeyPolicy,
  LinkOptions,
  PassphraseProvider,
  PromptProvider,
  PromptRequest,
  SshOptions,
} from '../ssh/index.js'
import type { Output } from './output.js'
import { visible } from './visible.js'

/** The ssh flags every tunnel-opening command takes. */
export interface SshArgs {
  readonly ssh?: string | undefined
  readonly identity?: string | undefined
  readonly 'known-hosts'?: string | undefined
  readonly 'host-key-check'?: HostKeyPolicy | undefined
  readonly 'passphrase-file'?: string | undefined
  readonly 'ssh-config'?: string | undefined
  readonly 'proxy-command'?: string | undefined
  readonly transport?: 'auto' | 'ssh2' | 'openssh' | undefined
  readonly verbose?: number | undefined
  readonly 'credential-command'?: string | undefined
  readonly 'renew-before'?: number | undefined
  readonly 'renew-min-interval'?: number | undefined
}

/** `--listen`: what the local listeners of a tunnel-opening command are. */
export interface ListenArgs {
  readonly listen?: 'tcp' | 'unix' | undefined
}

/** Adds `--listen tcp|unix` to a command that opens tunnels. */
export function withListenOption<T>(yargs: Argv<T>) {
  return yargs.option('listen', {
    choices: ['tcp', 'unix'] as const,
    default: 'tcp' as const,
    describe:
      'tcp: ports on 127.0.0.1 (any local user can connect); unix: unix sockets in a private 0700 directory, the loopback file says ipc:// (only you can connect)',
  })
}

/** The FILE positional of `up` and `exec`: a local path, or `[user@]host[:port]:PATH` pulled and followed. */
export function withSourceFile<T>(yargs: Argv<T>, options: { readonly orElse?: string } = {}) {
  return yargs
    .positional('file', {
      type: 'string',
      demandOption: options.orElse === undefined,
      describe: `connection file, or [user@]host[:port]:PATH to pull it over SFTP and follow it${options.orElse !== undefined ? `; default: ${options.orElse}` : ''}`,
    })
    .option('poll', {
      type: 'number',
      default: 1000,
      describe: 'milliseconds between looks at a remote file',
    })
}

/** Adds the shared ssh flags to a command. */
export function withSshOptions<T>(yargs: Argv<T>) {
  return yargs
    .option('ssh', {
      type: 'string',
      describe: "ssh server to forward through (overrides the file's ssh field)",
    })
    .option('identity', {
      alias: 'i',
      type: 'string',
      describe: 'private key to use (tried first and alone)',
    })
    .option('known-hosts', { type: 'string', describe: 'known_hosts file (default ~/.ssh/known_hosts)' })
    .option('host-key-check', {
      choices: ['ask', 'strict', 'accept-new', 'off'] as const,
      // no default here: without the flag, StrictHostKeyChecking from the ssh config applies, else ask
      describe:
        'ask shows an unknown key on the terminal and records it if you say yes (without a terminal: strict); strict refuses unknown keys; accept-new records them; off trusts anything (default: StrictHostKeyChecking from ssh config, else ask)',
    })
    .option('passphrase-file', { type: 'string', describe: 'file whose first line unlocks an encrypted key' })
    .option('ssh-config', { type: 'string', describe: 'ssh client config (default ~/.ssh/config)' })
    .option('proxy-command', {
      type: 'string',
      describe:
        'command whose stdin/stdout reach the ssh server, as ssh -o ProxyCommand (%h %p %r %n %%; "none" turns a configured one off)',
    })
    .option('transport', {
      choices: ['auto', 'ssh2', 'openssh'] as const,
      describe:
        "auto: reuse the user's OpenSSH master (ControlPath) when one is alive, else our own connection; ssh2: always our own; openssh: only a master, starting one if needed (default auto)",
    })
    .option('credential-command', {
      type: 'string',
      describe:
        'command (sh -c, on a pseudo-terminal; %h host, %r user, %n destination) that renews the certificate when it is missing, expired or about to expire; then keys and certificates are read again',
    })
    .option('renew-before', {
      type: 'number',
      default: 600,
      describe: 'seconds before a certificate expires when --credential-command renews it',
    })
    .option('renew-min-interval', {
      type: 'number',
      default: 3600,
      describe: 'never run --credential-command more often than this many seconds per destination',
    })
    .option('verbose', {
      alias: 'v',
      type: 'count',
      describe:
        'say, per ssh hop, the settings used, what the server offers, each login attempt and its result, the host-key check (never a secret)',
    })
}

/**
 * Maps the flags onto the library's SshOptions; with `output`, host-key notes (a key recorded by accept-new, a
 * check skipped by off) are printed as `hostkey` events.
 *
 * @throws IppTunnelError `E_USAGE` when `--passphrase-file` cannot be read, `E_DESTINATION` naming `--ssh` when it
 * is not `[user@]host[:port]` with a plain user and host: checked now, before any connection.
 */
export function sshOptionsFrom(
  args: SshArgs,
  output?: Output,
): SshOptions &
  Pick<LinkOptions, 'onHostKey' | 'onProxyStderr' | 'transport' | 'prompt' | 'verbose' | 'credential'> {
  if (args.ssh !== undefined) parseDestination(args.ssh, '--ssh')
  return {
    ...(args.transport !== undefined && { transport: args.transport }),
    ...(args['proxy-command'] !== undefined && { proxyCommand: args['proxy-command'] }),
    // what a ProxyCommand says goes to our stderr, as ssh(1) lets it through to the terminal
    onProxyStderr: (text) => process.stderr.write(text),
    ...(args.ssh !== undefined && { ssh: args.ssh }),
    ...(args.identity !== undefined && { identity: args.identity }),
    ...(args['known-hosts'] !== undefined && { knownHosts: args['known-hosts'] }),
    ...(args['ssh-config'] !== undefined && { configFile: args['ssh-config'] }),
    ...(args['host-key-check'] !== undefined && { hostKeyCheck: args['host-key-check'] }),
    passphrase: passphraseProvider(args['passphrase-file']),
    prompt: terminalPrompts,
    ...(args['credential-command'] !== undefined && {
      credential: new CredentialRenewer({
        command: args['credential-command'],
        ...(args['renew-before'] !== undefined && { renewBeforeS: args['renew-before'] }),
        ...(args['renew-min-interval'] !== undefined && { minIntervalS: args['renew-min-interval'] }),
      }),
    }),
    ...(output !== undefined && (args.verbose ?? 0) > 0 && { verbose: verbosePrinter(output) }),
    ...(output !== undefined && { onHostKey: hostKeyPrinter(output) }),
  }
}

/** Prints `--verbose` lines as `verbose` events (human: `ssh: …` on stderr). */
function verbosePrinter(output: Output): (message: string) => void {
  output.format('verbose', (e) => `ssh: ${String(e.message)}`)
  return (message) => output.emit({ event: 'verbose', message })
}

/** Prints each host-key note as one `hostkey` event (`kind`: recorded, mismatch-ignored, unchecked). */
function hostKeyPrinter(output: Output): (note: HostKeyNote) => void {
  output.format('hostkey', (e) => String(e.message))
  return (note) => {
    const { type, ...fields } = note
    output.emit({
      event: 'hostkey',
      kind: type.slice('hostkey:'.length),
      ...fields,
      message: formatHostKeyNote(note),
    })
  }
}

/** The first line of a passphrase file; only a regular file is read (a FIFO or a device would block). */
function readPassphraseFile(file: string): string {
  try {
    if (!statSync(file).isFile()) {
      throw new IppTunnelError('E_USAGE', `cannot read --passphrase-file ${file}: not a regular file`)
    }
    return readFileSync(file, 'utf8').split(/\r?\n/, 1)[0] ?? ''
  } catch (cause) {
    if (cause instanceof IppTunnelError) throw cause
    const code = (cause as NodeJS.ErrnoException).code
    const why = code === 'ENOENT' ? 'no such file' : (code ?? String(cause))
    throw new IppTunnelError('E_USAGE', `cannot read --passphrase-file ${file}: ${why}`, { cause })
  }
}

function passphraseProvider(file: string | undefined): PassphraseProvider {
  if (file !== undefined) {
    // read now, so that a typo fails at start rather than after connecting
    const passphrase = readPassphraseFile(file)
    return () => Promise.resolve(passphrase)
  }
  return (keyPath) =>
    process.stdin.isTTY
      ? onTerminal(() => askHidden(`Passphrase for ${keyPath}: `))
      : Promise.resolve(undefined)
}

/** One question on the terminal at a time: links to several hosts may ask at once. */
let terminalQueue: Promise<unknown> = Promise.resolve()

function onTerminal<T>(task: () => Promise<T>): Promise<T> {
  const asked = terminalQueue.then(task, task)
  terminalQueue = asked
  return asked
}

/**
 * Shows a server's name, instructions and prompts, their control characters escaped (a server chooses them: raw,
 * they could retitle the terminal or rewrite what is on it), and reads each answer (without echo unless allowed).
 * Ctrl-C at a prompt answers nothing and interrupts the command, as Ctrl-C anywhere else does.
 */
export async function answerOnTerminal(
  request: Pick<PromptRequest, 'name' | 'instructions' | 'prompts'>,
): Promise<readonly string[] | undefined> {
  if (request.name !== '') process.stderr.write(`${visible(request.name)}\n`)
  if (request.instructions !== '') {
    process.stderr.write(visible(request.instructions, { newlines: true }).replace(/\n?$/u, '\n'))
  }
  const answers: string[] = []
  for (const p of request.prompts) {
    const prompt = visible(p.prompt, { newlines: true })
    const answer = p.echo ? await askVisible(prompt) : await askHidden(prompt)
    if (answer === undefined) return undefined
    answers.push(answer)
  }
  return answers
}

/**
 * Ctrl-C while readline holds the terminal (raw mode) reaches readline, not the process: passed on as the SIGINT
 * the command's own handler takes (it aborts what runs and exits 130); with no handler, the default ends us.
 */
function interruptFromPrompt(): void {
  if (process.listenerCount('SIGINT') > 0) process.emit('SIGINT', 'SIGINT')
  else process.kill(process.pid, 'SIGINT')
}

/**
 * Answers a server's keyboard-interactive or password prompts on the terminal, as ssh(1) does: its name and
 * instructions shown as sent, each prompt read without echo unless the server allows echo. Without a terminal it
 * answers nothing at once (the login then fails with `E_AUTH_PROMPT`, quoting the prompt).
 */
export const terminalPrompts: PromptProvider = (request) => {
  if (!process.stdin.isTTY) return Promise.resolve(undefined)
  return onTerminal(() => answerOnTerminal(request))
}

/** Prompts on the terminal, showing what is typed. */
export function askVisible(prompt: string): Promise<string | undefined> {
  const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true })
  return new Promise((resolve) => {
    rl.question(prompt, (answer) => {
      rl.close()
      resolve(answer)
    })
    rl.on('SIGINT', () => {
      rl.close()
      process.stderr.write('\n')
      resolve(undefined)
      interruptFromPrompt()
    })
  })
}

/** Prompts on the terminal without echoing what is typed. */
export function askHidden(prompt: string): Promise<string | undefined> {
  let muted = false
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      if (!muted) process.stderr.write(chunk)
      callback()
    },
  })
  const rl = createInterface({ input: process.stdin, output: sink, terminal: true })
  return new Promise((resolve) => {
    rl.question(prompt, (answer) => {
      rl.close()
      process.stderr.write('\n')
      resolve(answer)
    })
    muted = true
    rl.on('SIGINT', () => {
      rl.close()
      process.stderr.write('\n')
      resolve(undefined)
      interruptFromPrompt()
    })
  })
}
