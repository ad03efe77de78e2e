/**
 * Where to connect: destinations as users write them (`user@host:port`), the OpenSSH client config
 * (ssh_config(5): Host, Match, Include, tokens) and the route to a destination that both give.
 *
 * @example
 * import { readSshConfig, lookupHost } from '../config/index.js'
 * const settings = lookupHost(await readSshConfig('/home/alice/.ssh/config'), 'cluster')
 */
export {
  destinationProblem,
  formatDestination,
  hostProblem,
  parseDestination,
  userProblem,
} from './destination.js'
export { lookupHost, type HostSettings } from './lookup.js'
export { expandTilde, readSshConfig, type SshConfig } from './parse.js'
export { matchPatternList } from './patterns.js'
export { resolveTarget, type ResolveOptions } from './resolve.js'
