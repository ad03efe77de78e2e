import { isIP, isIPv6 } from 'node:net'

import { IppTunnelError } from '../../errors/index.js'
import type { Destination } from '../types.js'

/**
 * A host name or ssh config alias: letters, digits, `.`, `-`, `_`, starting with a letter, digit or `_`. Nothing a
 * shell, a glob or a command line would read as syntax, so a host can be pasted into a ProxyCommand as it is.
 */
const HOST_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,252}$/u
/** A user name: letters and digits of any script, `.`, `_`, `-`, `+`, and `@` (`first.last@realm`). */
const USER_NAME = /^[\p{L}\p{N}._+@-]{1,256}$/u

/** `text` as JSON, cut to `max` characters: messages stay one bounded line. */
function shown(text: string, max = 40): string {
  return JSON.stringify(text.length > max ? `${text.slice(0, max)}…` : text)
}

/**
 * Why `host` is not a plain host name, ssh config alias or IP address, or undefined when it is one. The rule of
 * OpenSSH ≥ 9.6 for a host from the command line, and tighter: only letters, digits, `.`, `-`, `_` (no leading `-`),
 * or an IPv4/IPv6 address (a zone, `fe80::1%eth0`, included).
 *
 * @example
 * hostProblem('login.example.org') // undefined
 * hostProblem('$(id)') // 'the host contains the forbidden character "$" (…)'
 */
export function hostProblem(host: string): string | undefined {
  if (host === '') return 'the host is empty'
  if (isIP(host) !== 0 || HOST_NAME.test(host)) return undefined
  if (host.startsWith('-')) return 'the host may not start with "-"'
  if (host.includes(':')) return 'the host is not an IPv6 address'
  const bad = /[^A-Za-z0-9._-]/u.exec(host)?.[0]
  if (bad !== undefined) {
    return `the host contains the forbidden character ${JSON.stringify(bad)} (a host is a name of letters, digits, ".", "-", "_", or an IP address)`
  }
  if (host.length > 253) return 'the host is longer than 253 characters'
  return `the host may not start with ${JSON.stringify(host.charAt(0))}`
}

/**
 * Why `user` is not a plain user name, or undefined when it is one: letters, digits, `.`, `_`, `-`, `+`, `@`, not
 * starting with `-` and not `.` or `..`. OpenSSH ≥ 9.6 refuses shell metacharacters in a user from the command line;
 * this allows less still.
 *
 * @example
 * userProblem('first.last@corp') // undefined
 * userProblem('`id`') // 'the user contains the forbidden character "`" (…)'
 */
export function userProblem(user: string): string | undefined {
  if (user === '') return 'the user before "@" is empty'
  if (user.startsWith('-')) return 'the user may not start with "-"'
  if (user === '.' || user === '..') return `the user may not be ${JSON.stringify(user)}`
  if (USER_NAME.test(user)) return undefined
  const bad = /[^\p{L}\p{N}._+@-]/u.exec(user)?.[0]
  if (bad !== undefined) {
    return `the user contains the forbidden character ${JSON.stringify(bad)} (a user is a name of letters, digits, ".", "_", "-", "+", "@")`
  }
  return 'the user is longer than 256 characters'
}

/**
 * Parses an ssh destination as a user writes it.
 *
 * Accepted forms: `host`, `user@host`, `host:port`, `user@host:port`, `[v6addr]`, `[v6addr]:port`,
 * `user@[v6addr]:port`, a bare IPv6 address (`::1`, `user@fe80::1%eth0`), and the URI form
 * `ssh://[user@]host[:port]` (with `[v6addr]` for IPv6). The user is everything before the last `@`,
 * as in ssh(1). The host may also be an alias from ~/.ssh/config.
 *
 * The user and the host must be plain names ({@link userProblem}, {@link hostProblem}): a destination read from a
 * connection file ends up in a ProxyCommand's shell and on ssh's command line.
 *
 * @param from - where the text came from, for the message: `--ssh`, `FILE: field "ssh"`.
 * @throws IppTunnelError `E_DESTINATION` naming the text (and `from`) when it is empty, malformed, the port is not
 * 1–65535, or the user or host is not a plain name.
 *
 * @example
 * parseDestination('alice@[::1]:2222') // { user: 'alice', host: '::1', port: 2222 }
 */
export function parseDestination(text: string, from?: string): Destination {
  const parsed = parse(text)
  if (typeof parsed !== 'string') return parsed
  throw new IppTunnelError(
    'E_DESTINATION',
    `${from === undefined ? '' : `${from}: `}bad ssh destination ${shown(text, 100)}: ${parsed}`,
  )
}

/**
 * Why `text` is not an ssh destination {@link parseDestination} takes, or undefined when it is one.
 *
 * @example
 * destinationProblem('$(id)@cluster') // 'the user contains the forbidden character "$" (…)'
 */
export function destinationProblem(text: string): string | undefined {
  const parsed = parse(text)
  return typeof parsed === 'string' ? parsed : undefined
}

/** The destination `text` names, or why it names none. */
function parse(text: string): Destination | string {
  let rest = text.trim()
  if (rest === '') return 'it is empty; expected [user@]host[:port]'

  const uri = /^ssh:\/\//iu.exec(rest)
  if (uri !== null) {
    rest = rest.slice(uri[0].length)
    if (rest.endsWith('/')) rest = rest.slice(0, -1)
    if (rest.includes('/')) return 'an ssh:// destination takes no path'
  }

  let user: string | undefined
  const at = rest.lastIndexOf('@')
  if (at >= 0) {
    user = rest.slice(0, at)
    rest = rest.slice(at + 1)
    const problem = userProblem(user)
    if (problem !== undefined) return problem
  }

  let host: string
  let portText: string | undefined
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']')
    if (close < 0) return '"[" without a closing "]"'
    host = rest.slice(1, close)
    const after = rest.slice(close + 1)
    if (after.startsWith(':')) portText = after.slice(1)
    else if (after !== '') return `unexpected ${shown(after)} after "]"`
  } else {
    const colons = rest.split(':').length - 1
    if (colons > 1) {
      if (!isIPv6(rest)) return `${shown(rest)} is not an IPv6 address; write [addr]:port`
      host = rest
    } else if (colons === 1) {
      const colon = rest.indexOf(':')
      host = rest.slice(0, colon)
      portText = rest.slice(colon + 1)
    } else {
      host = rest
    }
  }

  const problem = hostProblem(host)
  if (problem !== undefined) return problem

  let port: number | undefined
  if (portText !== undefined) {
    if (!/^[0-9]{1,5}$/u.test(portText)) return `the port ${shown(portText)} is not a number`
    port = Number(portText)
    if (port < 1 || port > 65535) return `the port ${port} is not in 1-65535`
  }

  return {
    ...(user === undefined ? {} : { user }),
    host,
    ...(port === undefined ? {} : { port }),
  }
}

/**
 * Formats a destination back into the text {@link parseDestination} reads (`[v6]` bracketed when a port is given).
 *
 * @example
 * formatDestination({ user: 'bob', host: '::1', port: 2222 }) // 'bob@[::1]:2222'
 */
export function formatDestination(dest: Destination): string {
  const user = dest.user === undefined ? '' : `${dest.user}@`
  if (dest.port === undefined) return `${user}${dest.host}`
  const host = dest.host.includes(':') ? `[${dest.host}]` : dest.host
  return `${user}${host}:${dest.port}`
}
