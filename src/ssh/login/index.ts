/**
 * Logins: the ssh-agent, identity files, OpenSSH user certificates (with the agent or a key), keyboard-interactive
 * and password prompts, and the `--credential-command` that renews a certificate before a connection needs it.
 *
 * @example
 * import { HopAuth } from '../login/index.js'
 * const attempt = await new HopAuth(hop, { prompt }).begin()
 */
export { HopAuth, type AuthAttempt, type AuthOptions } from './auth.js'
export {
  enableCertificates,
  findCertificates,
  formatValidity,
  parseCertificate,
  type Certificate,
  type CertificateInfo,
  type HopCertificates,
} from './certificate.js'
export { methodOrder } from './methods.js'
export {
  loginCommand,
  quotePrompts,
  type LoginGate,
  type Prompt,
  type PromptProvider,
  type PromptRequest,
} from './prompts.js'
export {
  CredentialRenewer,
  expandCredentialCommand,
  hopCertificate,
  resetCredentialRuns,
  type CertificateStatus,
  type CredentialCommandOptions,
} from './renew.js'
