import { isIPv6 } from 'node:net'

import { IppTunnelError } from '../errors/index.js'
import type { Destination } from './types.js'

/** Characters a host name, alias or user may never contain (whitespace, control, separators). */
const FORBIDDEN = /[\s\p{Cc}@/,[\]'"\\]/u
const FORBIDDEN_IN_USER = /[\s\p{Cc}/:[\]'"\\]/u

/**
 * Parses an ssh destination as a user writes it.
 *
 * Accepted forms: `host`, `user@host`, `host:port`, `user@host:port`, `[v6addr]`, `[v6addr]:port`,
 * `user@[v6addr]:port`, a bare IPv6 address (`::1`, `user@fe80::1%eth0`), and the URI form
 * `ssh://[user@]host[:port]` (with `[v6addr]` for IPv6). The user is everything before the last `@`,
 * as in ssh(1). The host may also be an alias from ~/.ssh/config.
 *
 * @throws IppTunnelError `E_DESTINATION` naming the text when it is empty, malformed, or the port is not 1–65535.
 *
 * @example
 * parseDestination('alice@[::1]:2222') // { user: 'alice', host: '::1', port: 2222 }
 */
export function parseDestination(text: string): Destination {
  const fail = (why: string): never => {
    throw new IppTunnelError('E_DESTINATION', `bad ssh destination ${JSON.stringify(text)}: ${why}`)
  }
  let rest = text.trim()
  if (rest === '') return fail('it is empty; expected [user@]host[:port]')

  const uri = /^ssh:\/\//iu.exec(rest)
  if (uri !== null) {
    rest = rest.slice(uri[0].length)
    if (rest.endsWith('/')) rest = rest.slice(0, -1)
    if (rest.includes('/')) return fail('an ssh:// destination takes no path')
  }

  let user: string | undefined
  const at = rest.lastIndexOf('@')
  if (at >= 0) {
    user = rest.slice(0, at)
    rest = rest.slice(at + 1)
    if (user === '') return fail('the user before "@" is empty')
    if (FORBIDDEN_IN_USER.test(user))
      return fail(`the user ${JSON.stringify(user)} contains a forbidden character`)
    if (user.startsWith('-')) return fail('the user may not start with "-"')
  }

  let host: string
  let portText: string | undefined
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']')
    if (close < 0) return fail('"[" without a closing "]"')
    host = rest.slice(1, close)
    const after = rest.slice(close + 1)
    if (after.startsWith(':')) portText = after.slice(1)
    else if (after !== '') return fail(`unexpected ${JSON.stringify(after)} after "]"`)
  } else {
    const colons = rest.split(':').length - 1
    if (colons > 1) {
      if (!isIPv6(rest)) return fail(`${JSON.stringify(rest)} is not an IPv6 address; write [addr]:port`)
      host = rest
    } else if (colons === 1) {
      const colon = rest.indexOf(':')
      host = rest.slice(0, colon)
      portText = rest.slice(colon + 1)
    } else {
      host = rest
    }
  }

  if (host === '') return fail('the host is empty')
  if (host.startsWith('-')) return fail('the host may not start with "-"')
  if (FORBIDDEN.test(host)) return fail(`the host ${JSON.stringify(host)} contains a forbidden character`)
  if (host.includes(':') && !isIPv6(host)) return fail(`${JSON.stringify(host)} is not an IPv6 address`)

  let port: number | undefined
  if (portText !== undefined) {
    if (!/^[0-9]{1,5}$/u.test(portText)) return fail(`the port ${JSON.stringify(portText)} is not a number`)
    port = Number(portText)
    if (port < 1 || port > 65535) return fail(`the port ${port} is not in 1-65535`)
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
