import yargs, { type Argv } from 'yargs'

import { IppTunnelError } from '../errors/index.js'
import { EXIT, Output } from './output.js'
import { registerEngines } from './engines.js'
import { registerNodeTunnel } from './node-tunnel.js'
import { registerExec } from './exec.js'
import { registerUp } from './up.js'
import { registerInstallService } from './install-service.js'
import { registerStatus } from './status.js'
import { registerWatch } from './watch.js'
import { registerPing } from './ping.js'
import { registerPx } from './px.js'

/** The commands, for "unknown command" and its suggestion. */
const COMMANDS = ['up', 'exec', 'watch', 'status', 'install-service', 'engines', 'ping', 'px'] as const

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
      usageError = message ?? err?.message ?? 'bad arguments'
    })
    .help()
    .version()
    .wrap(null)
  cli = registerUp(cli, run)
  cli = registerExec(cli, run)
  cli = registerWatch(cli, run)
  cli = registerStatus(cli, run)
  cli = registerInstallService(cli, run)
  cli = registerEngines(cli, run)
  cli = registerNodeTunnel(cli, run)
  cli = registerPing(cli, run)
  cli = registerPx(cli, run)
  await cli.parseAsync()
  if (usageError !== undefined) {
    const output = new Output({ json: argv.includes('--json'), debug })
    output.fail(new IppTunnelError('E_USAGE', `${usageError} (see ipp-tunnel --help)`))
    return EXIT.badInput
  }
  return chosen ? await chosen() : EXIT.ok
}
