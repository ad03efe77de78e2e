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

/** Where a word goes in the unit: the program of ExecStart, one of its arguments, or an Environment= assignment. */
type Place = 'program' | 'argument' | 'environment'

/**
 * One word as systemd reads it back (systemd.syntax(7) "Quoting", systemd.service(5) "Command lines"): `%` doubled
 * (specifiers), `$` doubled in an argument (variable expansion; not in the program or in Environment=, where `$` is
 * plain), double quotes when it holds a space, quote, backslash, `;` or control character, control characters as
 * `\uXXXX`. The program and Environment= values may hold no control character at all (systemd refuses them).
 *
 * @throws IppTunnelError `E_USAGE` for a control character in the program or an environment value.
 */
function unitWord(word: string, place: Place): string {
  if (place !== 'argument' && /\p{Cc}/u.test(word)) {
    const what = place === 'program' ? 'the program' : 'the Environment= value'
    throw new IppTunnelError(
      'E_USAGE',
      `${what} ${JSON.stringify(word.length > 80 ? `${word.slice(0, 80)}…` : word)} holds a control character, which a systemd unit cannot`,
    )
  }
  let escaped = word.replaceAll('%', '%%')
  if (place === 'argument') escaped = escaped.replaceAll('$', () => '$$')
  if (escaped !== '' && !/[\s"'\\;\p{Cc}]/u.test(escaped)) return escaped
  const inner = escaped
    .replace(/["\\]/gu, '\\$&')
    .replace(/\p{Cc}/gu, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
  return `"${inner}"`
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
    ([name, value]) => `Environment=${unitWord(`${name}=${value}`, 'environment')}`,
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
    `ExecStart=${options.execStart.map((word, i) => unitWord(word, i === 0 ? 'program' : 'argument')).join(' ')}`,
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
