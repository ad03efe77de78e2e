import { mkdir, writeFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'

import { IppTunnelError } from '../errors/index.js'

/** What the systemd user unit runs: the program and its arguments, each one word. */
export interface UnitOptions {
  /** e.g. `['/usr/bin/node', '/usr/lib/node_modules/ipp-tunnel/bin/ipp-tunnel.js', 'watch']`. */
  readonly execStart: readonly string[]
  /** Extra `Environment=` lines, e.g. `{ IPYTHONDIR: '/srv/ipython' }`. */
  readonly environment?: Readonly<Record<string, string>>
}

/** The unit's file name, and so its name for `systemctl --user`. */
export const UNIT_NAME = 'ipp-tunnel.service'

/** Quotes one word for a unit file's command line: `%` doubled, quotes when it holds space, quote or backslash. */
function unitWord(word: string): string {
  const escaped = word.replaceAll('%', '%%')
  if (!/[\s"'\\;]/.test(escaped) && escaped !== '') return escaped
  return `"${escaped.replaceAll('\\', '\\\\').replaceAll('"', '\\"')}"`
}

/**
 * The systemd user unit that keeps `ipp-tunnel watch` running: restarted on failure, stopped with SIGTERM
 * (which closes every tunnel and removes every loopback copy).
 *
 * @example
 * renderUnit({ execStart: [process.execPath, '/opt/ipp-tunnel/bin/ipp-tunnel.js', 'watch'] })
 */
export function renderUnit(options: UnitOptions): string {
  const environment = Object.entries(options.environment ?? {}).map(
    ([name, value]) => `Environment=${unitWord(`${name}=${value}`)}`,
  )
  return [
    '# ipp-tunnel: follows IPython Parallel / Jupyter connection files and keeps SSH tunnels for them.',
    `# Install: ipp-tunnel install-service (or copy to ~/.config/systemd/user/${UNIT_NAME}), then`,
    '#   systemctl --user daemon-reload && systemctl --user enable --now ipp-tunnel',
    "# ExecStart names node and ipp-tunnel's bin/ipp-tunnel.js (or an ipp-tunnel on the user manager's PATH).",
    '# Status: ipp-tunnel status; logs: journalctl --user -u ipp-tunnel',
    "# ssh-agent: the user manager does not see your login shell's SSH_AUTH_SOCK. Use a key it can read alone",
    '# (--identity, --passphrase-file), or an agent socket that outlives your login, passed with',
    '# install-service --ssh-auth-sock PATH (e.g. /run/user/UID/ssh-agent.socket) or --pass-agent.',
    '[Unit]',
    'Description=ipp-tunnel: SSH tunnels for IPython Parallel connection files',
    '',
    '[Service]',
    'Type=simple',
    `ExecStart=${options.execStart.map(unitWord).join(' ')}`,
    ...environment,
    'Restart=on-failure',
    'RestartSec=5',
    'KillMode=mixed',
    'KillSignal=SIGTERM',
    'TimeoutStopSec=20',
    '',
    '[Install]',
    'WantedBy=default.target',
    '',
  ].join('\n')
}

/**
 * Where a systemd user unit goes: `$XDG_CONFIG_HOME/systemd/user/`, else `~/.config/systemd/user/`.
 *
 * @example
 * userUnitPath() // '/home/me/.config/systemd/user/ipp-tunnel.service'
 */
export function userUnitPath(env: NodeJS.ProcessEnv = process.env): string {
  const config =
    env.XDG_CONFIG_HOME !== undefined && env.XDG_CONFIG_HOME !== ''
      ? env.XDG_CONFIG_HOME
      : join(env.HOME ?? homedir(), '.config')
  return join(config, 'systemd', 'user', UNIT_NAME)
}

/**
 * Writes the unit to `path` (creating its directory) and returns the text written. An existing unit is kept
 * (`E_USAGE`) unless `force` is set: it may hold the user's own edits.
 *
 * @example
 * await installUnit(userUnitPath(), { execStart: [process.execPath, binPath, 'watch'] })
 */
export async function installUnit(
  path: string,
  options: UnitOptions,
  { force = false }: { readonly force?: boolean } = {},
): Promise<string> {
  const text = renderUnit(options)
  await mkdir(dirname(path), { recursive: true })
  try {
    await writeFile(path, text, { mode: 0o644, flag: force ? 'w' : 'wx' })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new IppTunnelError(
        'E_USAGE',
        `${path} exists; pass --force to replace it (--print shows the new unit)`,
        { cause: err },
      )
    }
    throw err
  }
  return text
}
