import yargs, { type Argv } from 'yargs'

import { IppTunnelError } from '../errors/index.js'
import { EXIT, Output } from './output.js'
import { registerEngines } from './engines.js'
import { registerExec } from './exec.js'
import { registerUp } from './up.js'
import { registerInstallService } from './install-service.js'
import { registerStatus } from './status.js'
import { registerWatch } from './watch.js'
import { registerPing } from './ping.js'
import { registerPx } from './px.js'

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
  cli = registerPing(cli, run)
  cli = registerPx(cli, run)
  await cli.parseAsync()
  if (usageError !== undefined) {
    const output = new Output({ json: false, debug })
    output.fail(new IppTunnelError('E_USAGE', `${usageError} (see ipp-tunnel --help)`))
    return EXIT.badInput
  }
  return chosen ? await chosen() : EXIT.ok
}
