/**
 * How host keys are checked against known_hosts. `ask` (OpenSSH's default) asks on the terminal about an unknown key
 * and records it when the answer is yes; where no one can answer it is `strict`. `off` must be asked for by name.
 */
export type HostKeyPolicy = 'strict' | 'ask' | 'accept-new' | 'off'

/** An ssh destination as a user writes it: `user@host`, `user@host:port`, `[v6addr]:port`, or a config alias. */
export interface Destination {
  readonly user?: string
  readonly host: string
  readonly port?: number
}

/** One hop of an ssh route after ~/.ssh/config is applied. Jump hosts come first, the destination last. */
export interface ResolvedHop {
  /** The name the user (or ProxyJump) wrote, before HostName was applied; used in messages. */
  readonly alias: string
  /** The address to connect to (HostName applied). */
  readonly host: string
  readonly port: number
  readonly username: string
  /** Candidate private key files in order (explicit --identity first, then IdentityFile, then defaults). */
  readonly identityFiles: readonly string[]
  /** True when only the listed identity files may be offered (IdentitiesOnly yes, or --identity given). */
  readonly identitiesOnly: boolean
  /** known_hosts files to check, in order; the first is where accept-new records keys. */
  readonly knownHostsFiles: readonly string[]
  /** Host-key policy for this hop (`StrictHostKeyChecking`); a Link's own `hostKeyCheck` option wins over it. */
  readonly hostKeyPolicy?: HostKeyPolicy
  /** Where the policy came from when a config set it (`file:line`), for warnings. */
  readonly hostKeyPolicyFrom?: string
  /** Bound on TCP connect plus SSH handshake (`ConnectTimeout`), in milliseconds. */
  readonly connectTimeoutMs?: number
  /** Keepalive interval (`ServerAliveInterval`) in milliseconds; 0 sends none. */
  readonly keepaliveIntervalMs?: number
  /** Unanswered keepalives before the hop counts as dead (`ServerAliveCountMax`). */
  readonly keepaliveCountMax?: number
  /** `ProxyCommand` with its tokens expanded: run with `sh -c`, the hop's SSH connection goes over its stdio. */
  readonly proxyCommand?: string
  /** OpenSSH certificates to offer (`CertificateFile`); `KEY-cert.pub` beside each identity file is found too. */
  readonly certificateFiles?: readonly string[]
  /** `ControlPath` with its tokens expanded: where the user's OpenSSH master for this hop listens. */
  readonly controlPath?: string
  /** `PreferredAuthentications`: the methods to try, in order; default OpenSSH's order. */
  readonly preferredAuthentications?: readonly string[]
}

/** The full route to a destination: `hops.at(-1)` is the server that forwards, the rest are jumps. */
export interface ResolvedTarget {
  readonly hops: readonly ResolvedHop[]
}

/** Asked for a private key's passphrase; resolve undefined when none can be had (never hang). */
export type PassphraseProvider = (keyPath: string) => Promise<string | undefined>

/** Options a user gives for reaching an ssh server (CLI flags map one to one). */
export interface SshOptions {
  /** Overrides the connection file's `ssh` field. */
  readonly ssh?: string
  /** `--identity PATH`: tried first, and alone. */
  readonly identity?: string
  /** `--known-hosts PATH`: replaces the default known_hosts files. */
  readonly knownHosts?: string
  readonly hostKeyCheck?: HostKeyPolicy
  readonly passphrase?: PassphraseProvider
  /** ssh config file; default `~/.ssh/config` (silently none when missing); a named file must exist. `false`: none. */
  readonly configFile?: string | false
  /** ssh-agent socket; default `$SSH_AUTH_SOCK`. Pass `false` to use no agent. */
  readonly agent?: string | false
  /** `--proxy-command CMD`: the destination's ProxyCommand, winning over the config's; `none` turns it off. */
  readonly proxyCommand?: string
}
