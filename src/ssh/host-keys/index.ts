/**
 * Host keys: known_hosts files read and written as OpenSSH does (hashed names, markers, CA keys, revoked keys)
 * and the question put to a person about a key not known yet.
 *
 * @example
 * import { checkHostKey } from '../host-keys/index.js'
 */
export {
  checkHostKey,
  fingerprintSha256,
  formatHostKeyNote,
  hostFieldMatches,
  knownHostsName,
  parseKnownHosts,
  type CheckHostKeyOptions,
  type HostKeyNote,
} from './known-hosts.js'
export { hostKeyAsker } from './question.js'
