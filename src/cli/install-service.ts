import { fileURLToPath } from 'node:url'
import { resolve } from 'node:path'

import type { Argv } from 'yargs'

import { IppTunnelError } from '../errors/index.js'
import { installUnit, renderUnit, userUnitPath, type UnitOptions } from '../service/index.js'
import { parseDestination } from '../ssh/index.js'
import { EXIT, Output } from './output.js'
import type { SshArgs } from './ssh-options.js'
import { checkWatchArgs, watchArgvOf, withWatchOptions } from './watch.js'

interface InstallArgs extends Partial<SshArgs> {
  readonly print: boolean
  readonly force: boolean
  readonly remote?: readonly string[] | undefined
  readonly 'remote-profile'?: string | undefined
  readonly poll?: number | undefined
  readonly 'ssh-auth-sock'?: string | undefined
  readonly 'pass-agent': boolean
  readonly json: boolean
  readonly debug: boolean
}

/** The launcher this CLI was started from (`bin/ipp-tunnel.js` of this package). */
const BIN = fileURLToPath(new URL('../../../bin/ipp-tunnel.js', import.meta.url))

/**
 * The unit for this node and this package, running `watch` with the given options. The user manager starts in
 * the home directory with its own environment, so every path becomes absolute (against `cwd`) and the variables
 * that say where things are travel as `Environment=` lines.
 */
export function unitFor(
  args: Readonly<Record<string, unknown>> & Pick<InstallArgs, 'ssh-auth-sock'> & { 'pass-agent'?: boolean },
  env: NodeJS.ProcessEnv,
  cwd: string = process.cwd(),
): UnitOptions {
  const abs = (path: string) => resolve(cwd, path)
  const watchArgs = watchArgvOf(
    args,
    cwd,
    // the service cannot ask, so ask (the default) is strict there; naming strict would override the ssh config
    (name, value) => name === 'host-key-check' && (value === 'strict' || value === 'ask'),
  )
  const environment: Record<string, string> = {}
  for (const name of ['IPYTHONDIR', 'IPP_TUNNEL_RUNTIME_DIR'] as const) {
    const value = env[name]
    if (value !== undefined && value !== '') environment[name] = abs(value)
  }
  const agent = args['ssh-auth-sock'] ?? (args['pass-agent'] === true ? env.SSH_AUTH_SOCK : undefined)
  if (agent !== undefined && agent !== '') environment.SSH_AUTH_SOCK = abs(agent)
  return { execStart: [process.execPath, BIN, 'watch', ...watchArgs], environment }
}

/** `ipp-tunnel install-service`: writes the systemd user unit that keeps `watch` running. */
export function registerInstallService(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command(
    'install-service',
    `write the systemd user unit (${userUnitPath()}) that keeps "ipp-tunnel watch" running`,
    (y) =>
      withWatchOptions(y)
        .option('print', {
          type: 'boolean',
          default: false,
          describe: 'only print the unit, write nothing',
        })
        .option('force', { type: 'boolean', default: false, describe: 'replace an existing unit' })
        .option('ssh-auth-sock', {
          type: 'string',
          describe:
            "ssh-agent socket the service uses (the user manager does not see your shell's SSH_AUTH_SOCK)",
        })
        .option('pass-agent', {
          type: 'boolean',
          default: false,
          describe:
            "put this shell's SSH_AUTH_SOCK into the unit (only useful if that agent outlives your login)",
        }),
    (args) => run(() => install(args as unknown as InstallArgs)),
  )
}

async function install(args: InstallArgs): Promise<number> {
  const output = new Output({ json: args.json, debug: args.debug })
  if (args['pass-agent'] && (process.env.SSH_AUTH_SOCK ?? '') === '' && args['ssh-auth-sock'] === undefined) {
    return output.fail(new IppTunnelError('E_USAGE', '--pass-agent: SSH_AUTH_SOCK is not set in this shell'))
  }
  const path = userUnitPath(process.env)
  let unit: UnitOptions
  try {
    // the service would only fail at its start, unseen: a bad --ssh fails here
    if (args.ssh !== undefined) parseDestination(args.ssh, '--ssh')
    checkWatchArgs(args)
    unit = unitFor(args as unknown as Readonly<Record<string, unknown>>, process.env)
    if (args.print) {
      const text = renderUnit(unit)
      output.result({ event: 'unit', text }, text)
      return EXIT.ok
    }
    await installUnit(path, unit, { force: args.force })
  } catch (err) {
    return output.fail(err)
  }
  const enable = 'systemctl --user daemon-reload && systemctl --user enable --now ipp-tunnel'
  const agent =
    unit.environment?.SSH_AUTH_SOCK === undefined
      ? "\nssh-agent: the unit does not see your shell's SSH_AUTH_SOCK; see --ssh-auth-sock and --pass-agent"
      : ''
  output.result(
    { event: 'installed', unit: path, enable },
    `wrote ${path}\nstart it now and at every login with:\n  ${enable}\n(to keep it running while logged out: loginctl enable-linger)${agent}`,
  )
  return EXIT.ok
}
