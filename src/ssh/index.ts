/**
 * SSH: destinations, ssh_config resolution, known_hosts checks, authentication and the reconnecting
 * {@link Link} that carries every forward to one destination over one connection.
 *
 * Its rooms, each with its own `index.ts` door: `config/` (destinations, ssh_config, the route to a destination),
 * `host-keys/` (known_hosts, the host-key question), `login/` (agent, keys, certificates, prompts, credential
 * command), `transport/` (the Link, its chain of ssh2 connections or the OpenSSH master, channels, reconnects).
 * Beside them, shared by the rooms: `types.ts`, `shell.ts` (quoting), `ssh2-lib.ts` (ssh2 loaded on first need).
 *
 * @example
 * import { resolveTarget, Link } from '../ssh/index.js'
 * const target = await resolveTarget('user@cluster:2222', { hostKeyCheck: 'strict' })
 * const link = new Link(target, { hostKeyCheck: 'strict' })
 * await link.connect()
 * const stream = await link.forwardOut('127.0.0.1', 55123)
 * await link.close()
 */
export type {
  Destination,
  HostKeyPolicy,
  PassphraseProvider,
  ResolvedHop,
  ResolvedTarget,
  SshOptions,
} from './types.js'
export {
  destinationProblem,
  expandTilde,
  formatDestination,
  hostProblem,
  lookupHost,
  parseDestination,
  readSshConfig,
  resolveTarget,
  userProblem,
  type HostSettings,
  type ResolveOptions,
  type SshConfig,
} from './config/index.js'
export {
  checkHostKey,
  fingerprintSha256,
  hostFieldMatches,
  knownHostsName,
  parseKnownHosts,
  formatHostKeyNote,
  type CheckHostKeyOptions,
  type HostKeyNote,
} from './host-keys/index.js'
export {
  CredentialRenewer,
  HopAuth,
  expandCredentialCommand,
  findCertificates,
  formatValidity,
  hopCertificate,
  loginCommand,
  methodOrder,
  parseCertificate,
  quotePrompts,
  resetCredentialRuns,
  type AuthAttempt,
  type AuthOptions,
  type Certificate,
  type CertificateInfo,
  type CertificateStatus,
  type CredentialCommandOptions,
  type HopCertificates,
  type LoginGate,
  type Prompt,
  type PromptProvider,
  type PromptRequest,
} from './login/index.js'
export { shellQuote } from './shell.js'
export {
  Link,
  OpenSshMaster,
  ProxyCommand,
  label as hopLabel,
  type BackoffOptions,
  type LinkEvents,
  type LinkOptions,
  type LinkState,
  type LinkStats,
  type ProxyCommandOptions,
  type RemoteCommand,
  type RemoteExit,
  type Transport,
} from './transport/index.js'
