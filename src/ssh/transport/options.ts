import type { IppTunnelError } from '../../errors/index.js'
import type { HostKeyNote } from '../host-keys/index.js'
import type { CredentialRenewer, LoginGate, PromptProvider } from '../login/index.js'
import type { HostKeyPolicy, PassphraseProvider } from '../types.js'
import type { Transport } from './openssh-master.js'

/*
 * The options, states, events and counters of a {@link Link}, apart from the class: the chain that opens its
 * connections reads the options too, and imports them from here rather than from the Link that imports it.
 */

/** Where a {@link Link} is. `idle` only before the first `connect()`. */
export type LinkState = 'idle' | 'connecting' | 'up' | 'reconnecting' | 'failed' | 'closed'

/** Capped exponential backoff between reconnect attempts. */
export interface BackoffOptions {
  /** Delay before the first reconnect attempt; default 250 ms. */
  readonly initialMs?: number
  /** Largest delay; default 15000 ms. */
  readonly maxMs?: number
  /** Random spread as a fraction of the delay (0..1); default 0.2, so a delay d becomes d·(1 ± 0.2). */
  readonly jitter?: number
}

/** Options of a {@link Link}. */
export interface LinkOptions {
  /** Wins over each hop's own `hostKeyPolicy` (from ssh config); default `strict`. */
  readonly hostKeyCheck?: HostKeyPolicy
  /** Told when a host key is recorded (accept-new) or let through unchecked (off); also the `hostkey` event. */
  readonly onHostKey?: (note: HostKeyNote) => void
  readonly passphrase?: PassphraseProvider
  /** Answers keyboard-interactive and password prompts; without it those methods are not tried. */
  readonly prompt?: PromptProvider
  /**
   * For a process no one watches (the service): when a login needs an answer no one gave (`E_AUTH_PROMPT`), or
   * answers given were refused, the link waits in `login.wait()` instead of failing, and tries again after it.
   */
  readonly login?: LoginGate
  /**
   * `--verbose`: told, per hop, the resolved settings, what the server offers, each login attempt and its result,
   * and the host-key check; never a key, passphrase or answer.
   */
  readonly verbose?: (message: string) => void
  /** ssh-agent socket; default `$SSH_AUTH_SOCK`; `false`: no agent. */
  readonly agent?: string | false
  /** Environment for `SSH_AUTH_SOCK`; default `process.env`. */
  readonly env?: Readonly<Record<string, string | undefined>>
  /**
   * SSH keepalive interval; wins over each hop's own (ServerAliveInterval); default 5000 ms. With `keepaliveCountMax`
   * it bounds how long a dead link goes unnoticed.
   */
  readonly keepaliveIntervalMs?: number
  /**
   * Unanswered keepalives before the link counts as dead; wins over each hop's own (ServerAliveCountMax); default 3,
   * or, for a hop whose login asked a person (a one-time code), as many as make five minutes of silence.
   */
  readonly keepaliveCountMax?: number
  /**
   * Time allowed per hop from TCP connect to authenticated (time spent asking for a passphrase excluded); default
   * 20000 ms, or the hop's `connectTimeoutMs` when longer. A hop's `connectTimeoutMs` bounds connect plus handshake.
   */
  readonly readyTimeoutMs?: number
  readonly backoff?: BackoffOptions
  /**
   * `auto` (default): carry the forwards through the user's live OpenSSH master at the destination's ControlPath
   * when there is one (no new login), else connect with ssh2; `ssh2`: always our own connection; `openssh`: only
   * through a master, starting one (`ssh -M`, prompts on the terminal) when none is alive.
   */
  readonly transport?: Transport
  /** Told what a hop's ProxyCommand writes to its stderr; also the `proxy-stderr` event. */
  readonly onProxyStderr?: (text: string) => void
  /**
   * Start every child (ProxyCommand, `ssh` through a master) in a session and process group of its own, so that a
   * signal meant for this process's group alone — Jupyter's interrupt is `killpg(SIGINT)` on the launcher — does not
   * end them (and the link with them). Such children cannot prompt on the terminal. Default false.
   */
  readonly ownProcessGroup?: boolean
  /** How long `forwardOut` waits for a link that is (re)connecting; default 10000 ms. */
  readonly waitForLinkMs?: number
  /**
   * Reconnect to the address the first connection reached instead of resolving the destination's name again: a
   * login alias with round-robin DNS then cannot land a reconnect on another login node, where the processes and
   * sockets the caller started do not exist. The host key is still checked against the name. Only a destination
   * this process connects to itself has an address to pin; through a ProxyCommand, a jump host (ProxyJump) or an
   * OpenSSH master the name is resolved elsewhere, and the caller's own check of the node it reached is what holds
   * (remote processes compare host name and boot id: `E_REMOTE_NODE`). Default false.
   */
  readonly pinAddress?: boolean
  /** `--credential-command`: renews the certificate a hop needs before each (re)connect. */
  readonly credential?: CredentialRenewer
}

/** Events of a {@link Link}; failures are named events, there is no bare `error` event. */
export interface LinkEvents {
  state: [state: LinkState]
  reconnecting: [info: { attempt: number; delayMs: number; error: IppTunnelError }]
  reconnected: [info: { attempt: number; downMs: number }]
  failed: [info: { error: IppTunnelError }]
  /** A host key was recorded (accept-new) or let through unchecked (off); once per key and kind per link. */
  hostkey: [note: HostKeyNote]
  /** A ProxyCommand wrote to its stderr (ssh(1) shows that on the terminal). */
  'proxy-stderr': [info: { hop: string; text: string }]
  closed: []
}

/** Counters of a {@link Link}. */
export interface LinkStats {
  /** Successful reconnects since `connect()`. */
  readonly reconnects: number
  /** Forwarded channels open now. */
  readonly channelsOpen: number
}
