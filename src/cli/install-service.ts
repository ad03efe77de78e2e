import { fileURLToPath } from 'node:url'

import type { Argv } from 'yargs'

import { installUnit, renderUnit, userUnitPath, type UnitOptions } from '../service/index.js'
import { EXIT, Output } from './output.js'

interface InstallArgs {
  readonly print: boolean
  readonly profile?: readonly string[] | undefined
  readonly dir?: readonly string[] | undefined
  readonly 'out-dir'?: string | undefined
  readonly json: boolean
  readonly debug: boolean
}

/** The launcher this CLI was started from (`bin/ipp-tunnel.js` of this package). */
const BIN = fileURLToPath(new URL('../../../bin/ipp-tunnel.js', import.meta.url))

/** The unit for this node and this package, running `watch` with the given options. */
export function unitFor(
  args: Pick<InstallArgs, 'profile' | 'dir' | 'out-dir'>,
  env: NodeJS.ProcessEnv,
): UnitOptions {
  const watchArgs = [
    ...(args.profile ?? []).flatMap((p) => ['--profile', p]),
    ...(args.dir ?? []).flatMap((d) => ['--dir', d]),
    ...(args['out-dir'] !== undefined ? ['--out-dir', args['out-dir']] : []),
  ]
  const environment: Record<string, string> = {}
  // The user manager does not see the login shell's variables: carry the ones that say where things are.
  for (const name of ['IPYTHONDIR', 'IPP_TUNNEL_RUNTIME_DIR'] as const) {
    const value = env[name]
    if (value !== undefined && value !== '') environment[name] = value
  }
  return { execStart: [process.execPath, BIN, 'watch', ...watchArgs], environment }
}

/** `ipp-tunnel install-service`: writes the systemd user unit that keeps `watch` running. */
export function registerInstallService(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command(
    'install-service',
    `write the systemd user unit (${userUnitPath()}) that keeps "ipp-tunnel watch" running`,
    (y) =>
      y
        .option('print', { type: 'boolean', default: false, describe: 'only print the unit, write nothing' })
        .option('profile', { alias: 'p', type: 'string', array: true, describe: 'passed on to watch' })
        .option('dir', { alias: 'd', type: 'string', array: true, describe: 'passed on to watch' })
        .option('out-dir', { type: 'string', describe: 'passed on to watch' }),
    (args) => run(() => install(args as unknown as InstallArgs)),
  )
}

async function install(args: InstallArgs): Promise<number> {
  const output = new Output({ json: args.json, debug: args.debug })
  const unit = unitFor(args, process.env)
  if (args.print) {
    output.result({ event: 'unit', text: renderUnit(unit) }, renderUnit(unit))
    return EXIT.ok
  }
  const path = userUnitPath(process.env)
  try {
    await installUnit(path, unit)
  } catch (err) {
    return output.fail(err)
  }
  const enable = 'systemctl --user daemon-reload && systemctl --user enable --now ipp-tunnel'
  output.result(
    { event: 'installed', unit: path, enable },
    `wrote ${path}\nstart it now and at every login with:\n  ${enable}\n(to keep it running while logged out: loginctl enable-linger)`,
  )
  return EXIT.ok
}
