/**
 * The {@link Link} and what carries it: a chain of ssh2 connections through jump hosts and ProxyCommands, or the
 * user's OpenSSH master; its channels (forwards, SFTP, commands), keepalives, and reconnects after drops, suspends
 * and network changes.
 *
 * @example
 * import { Link } from '../transport/index.js'
 * const link = new Link(target, { hostKeyCheck: 'strict' })
 */
export { label } from './channels.js'
export type { RemoteCommand, RemoteExit } from './exec.js'
export { Link } from './link.js'
export type { BackoffOptions, LinkEvents, LinkOptions, LinkState, LinkStats } from './options.js'
export { OpenSshMaster, type Transport } from './openssh-master.js'
export { ProxyCommand, type ProxyCommandOptions } from './proxy-command.js'
