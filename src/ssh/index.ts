/**
 * SSH: destinations, ssh_config resolution, known_hosts checks, authentication and the reconnecting
 * {@link Link} that carries every forward to one destination over one connection.
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
  formatDestination,
  hostProblem,
  parseDestination,
  userProblem,
} from './destination.js'
export { expandTilde, lookupHost, readSshConfig, type HostSettings, type SshConfig } from './config.js'
export {
  checkHostKey,
  fingerprintSha256,
  hostFieldMatches,
  knownHostsName,
  parseKnownHosts,
  formatHostKeyNote,
  type CheckHostKeyOptions,
  type HostKeyNote,
} from './known-hosts.js'
export { resolveTarget, type ResolveOptions } from './resolve.js'
export { HopAuth, methodOrder, type AuthAttempt, type AuthOptions } from './auth.js'
export {
  loginCommand,
  quotePrompts,
  type LoginGate,
  type Prompt,
  type PromptProvider,
  type PromptRequest,
} from './prompts.js'
export { ProxyCommand, type ProxyCommandOptions } from './proxy-command.js'
export { shellQuote } from './shell.js'
export { label as hopLabel } from './channels.js'
export { OpenSshMaster, type Transport } from './openssh-master.js'
export type { RemoteCommand, RemoteExit } from './exec.js'
export {
  parseCertificate,
  formatValidity,
  findCertificates,
  type Certificate,
  type CertificateInfo,
  type HopCertificates,
} from './certificate.js'
export {
  CredentialRenewer,
  expandCredentialCommand,
  hopCertificate,
  resetCredentialRuns,
  type CertificateStatus,
  type CredentialCommandOptions,
} from './renew.js'
export {
  Link,
  type BackoffOptions,
  type LinkEvents,
  type LinkOptions,
  type LinkState,
  type LinkStats,
} from './link.js'
