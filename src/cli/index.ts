import { readFileSync } from 'node:fs'

import type { Argv } from 'yargs'

import { IppTunnelError } from '../errors/index.js'
import { releaseHeapAfterBursts } from '../tunnel/heap-release.js'
import { EXIT, Output } from './output.js'

/** The commands, for "unknown command" and its suggestion. */
const COMMANDS = [
  'up',
  'exec',
  'watch',
  'status',
  'login',
  'install-service',
  'engines',
  'ping',
  'px',
  'kernel',
  'kernelspec',
  'cluster',
  'doctor',
] as const

type Command = (typeof COMMANDS)[number]
type Register = (yargs: Argv, run: (task: () => Promise<number>) => void) => Argv

/**
 * Each command's module, loaded only when that command runs (or for --help): `up` never loads zeromq (client,
 * sockets) or chokidar (service), which take most of the start-up time.
 */
const LOADERS: Readonly<Record<Command, () => Promise<Register>>> = {
  up: async () => (await import('./up.js')).registerUp,
  exec: async () => (await import('./exec.js')).registerExec,
  watch: async () => (await import('./watch.js')).registerWatch,
  status: async () => (await import('./status.js')).registerStatus,
  login: async () => (await import('./login.js')).registerLogin,
  'install-service': async () => (await import('./install-service.js')).registerInstallService,
  engines: async () => (await import('./engines.js')).registerEngines,
  ping: async () => (await import('./ping.js')).registerPing,
  px: async () => (await import('./px.js')).registerPx,
  kernel: async () => (await import('./kernel.js')).registerKernel,
  kernelspec: async () => (await import('./kernelspec.js')).registerKernelspec,
  cluster: async () => (await import('./cluster.js')).registerCluster,
  doctor: async () => (await import('./doctor.js')).registerDoctor,
}

/** The commands whose modules a command line needs: the one it names; none for a bare --version; else all (help). */
function commandsFor(argv: readonly string[], first: string | undefined): readonly Command[] {
  if (first !== undefined) return COMMANDS.filter((c) => c === first)
  if (argv.includes('--version') && !argv.includes('--help')) return []
  return COMMANDS
}

/** The package's version, from its package.json (dist/src/cli/index.js → package.json). */
function packageVersion(): string {
  const text = readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')
  const { version } = JSON.parse(text) as { version?: unknown }
  return typeof version === 'string' ? version : 'unknown'
}

/**
 * yargs renders the whole help text (cliui, string-width: ~100 ms of CPU) after running any command, in case its
 * handler fails later; ours only hand their task over, so that text is never shown and not worth making.
 */
function skipHelpCache(cli: Argv): void {
  type Internal = {
    getInternalMethods?: () => { getUsageInstance?: () => { cacheHelpMessage?: () => void } }
  }
  const usage = (cli as unknown as Internal).getInternalMethods?.().getUsageInstance?.()
  if (typeof usage?.cacheHelpMessage === 'function') usage.cacheHelpMessage = () => undefined
}

/** yargs names a missing option by its key (`Missing required argument: n`): say it as typed, `-n`. */
export function flagNames(message: string): string {
  return message.replace(
    /^(Missing required arguments?: )(.+)$/u,
    (_, head: string, names: string) =>
      head +
      names
        .split(', ')
        .map((n) => (/^[A-Za-z]$/u.test(n) ? `-${n}` : n))
        .join(', '),
  )
}

/** Edit distance, for suggesting the command a typo meant. */
function distance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, i) => i)
  for (let i = 1; i <= a.length; i++) {
    const next = [i]
    for (let j = 1; j <= b.length; j++) {
      next[j] = Math.min(
        (row[j] ?? 0) + 1,
        (next[j - 1] ?? 0) + 1,
        (row[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1),
      )
    }
    row = next
  }
  return row[b.length] ?? 0
}

/** The message for a first word that is no command, with the nearest command when one is close. */
export function unknownCommand(word: string): string {
  const near = COMMANDS.map((c) => ({ c, d: distance(word, c) })).sort((x, y) => x.d - y.d)[0]
  const hint = near !== undefined && near.d <= 2 ? `did you mean ${near.c}? ` : ''
  return `unknown command ${JSON.stringify(word)}; ${hint}commands: ${COMMANDS.join(', ')} (see ipp-tunnel --help)`
}

/**
 * Runs the ipp-tunnel command line on `argv` (without node and the script) and resolves with the exit status.
 * Only this folder touches `process`.
 */
export async function main(argv: readonly string[]): Promise<number> {
  // Commands hand over their work instead of starting it: yargs runs a handler even after .fail() fired.
  let chosen: (() => Promise<number>) | undefined
  const run = (task: () => Promise<number>) => {
    chosen = task
  }
  const debug = argv.includes('--debug')
  // The global options are flags, so the first word that is not one is the command.
  const first = argv
    .slice(0, argv.includes('--') ? argv.indexOf('--') : argv.length)
    .find((a) => !a.startsWith('-'))
  if (first === 'help') return main(['--help'])
  // node-tunnel is hidden: what `engines --host` runs on each node.
  if (first !== undefined && first !== 'node-tunnel' && !(COMMANDS as readonly string[]).includes(first)) {
    new Output({ json: argv.includes('--json'), debug }).fail(
      new IppTunnelError('E_USAGE', unknownCommand(first)),
    )
    return EXIT.badInput
  }
  let usageError: string | undefined
  // yargs alone takes about as long as node's own start: a bare --version does without it
  if (argv.length === 1 && argv[0] === '--version') {
    process.stdout.write(`${packageVersion()}\n`)
    return EXIT.ok
  }
  const { default: yargs } = await import('yargs')
  let cli: Argv = yargs([...argv])
    .scriptName('ipp-tunnel')
    .parserConfiguration({ 'populate--': true })
    .option('json', { type: 'boolean', default: false, describe: 'one JSON object per line on stdout' })
    .option('debug', { type: 'boolean', default: false, describe: 'stack traces and ssh details on errors' })
    .strict()
    .demandCommand(1, 'say what to do, e.g. ipp-tunnel up FILE')
    .recommendCommands()
    .exitProcess(false)
    .fail((message: string | undefined, err: Error | undefined) => {
      usageError = flagNames(message ?? err?.message ?? 'bad arguments')
    })
    .help()
    .version()
    .wrap(null)
  skipHelpCache(cli)
  const registers = await Promise.all(commandsFor(argv, first).map((c) => LOADERS[c]()))
  for (const register of registers) cli = register(cli, run)
  // hidden: what `engines --host/--slurm` runs on each node
  if (first === 'node-tunnel') cli = (await import('./node-tunnel.js')).registerNodeTunnel(cli, run)
  await cli.parseAsync()
  if (usageError !== undefined) {
    const output = new Output({ json: argv.includes('--json'), debug })
    output.fail(new IppTunnelError('E_USAGE', `${usageError} (see ipp-tunnel --help)`))
    return EXIT.badInput
  }
  if (chosen === undefined) return EXIT.ok
  releaseHeapAfterBursts()
  return await chosen()
}
