/** What an sshd of our own (the demo's "remote", the tests' servers) is configured with. */
export interface SshdConfigOptions {
  /** `ADDRESS:PORT` to listen on. */
  readonly listen: string
  readonly hostKey: string
  readonly authorizedKeys: string
  readonly allowTcpForwarding: boolean
  /** `MaxStartups` and `MaxSessions`: how many connections may be starting, and channels per connection. */
  readonly maxStartups: number
  /** `LogLevel`; sshd's default (INFO) when absent. */
  readonly logLevel?: string
  /** Lines appended as they are. */
  readonly extra?: string
  /** Log in through PAM too: keyboard-interactive (and root by it) allowed, `UsePAM yes`. Default false. */
  readonly pam?: boolean
}

/**
 * The text of an sshd_config for a throw-away, key-only sshd run as root by this project (no PAM, no passwords,
 * no pid file, the keys in a temp dir that `StrictModes no` lets sshd read).
 *
 * @example
 * await writeFile(config, sshdConfig({ listen: '10.232.1.2:2222', hostKey, authorizedKeys, allowTcpForwarding: true, maxStartups: 200 }))
 */
export function sshdConfig(options: SshdConfigOptions): string {
  return [
    `ListenAddress ${options.listen}`,
    `HostKey ${options.hostKey}`,
    `PermitRootLogin ${options.pam === true ? 'yes' : 'prohibit-password'}`,
    'PubkeyAuthentication yes',
    'PasswordAuthentication no',
    `KbdInteractiveAuthentication ${options.pam === true ? 'yes' : 'no'}`,
    `UsePAM ${options.pam === true ? 'yes' : 'no'}`,
    'StrictModes no',
    'UseDNS no',
    'PidFile none',
    ...(options.logLevel !== undefined ? [`LogLevel ${options.logLevel}`] : []),
    `AuthorizedKeysFile ${options.authorizedKeys}`,
    `AllowTcpForwarding ${options.allowTcpForwarding ? 'yes' : 'no'}`,
    `MaxStartups ${options.maxStartups}`,
    `MaxSessions ${options.maxStartups}`,
    // a login shell that runs `pyenv init` rehashes under a lock in every session; a session killed with its sshd
    // leaves the lock, and every later one would wait 60 s for it
    'SetEnv PYENV_REHASH_TIMEOUT=1',
    options.extra ?? '',
    '',
  ].join('\n')
}
