import { IppTunnelError } from '../errors/index.js'
import { formatDestination, parseDestination } from '../ssh/index.js'

/** A remote place as the user wrote it: `[user@]host[:port]:PATH`. */
export interface RemoteSpec {
  /** The ssh destination, `[user@]host[:port]` (IPv6 bracketed when a port is given). */
  readonly destination: string
  /** The path on the remote host; undefined when none was given (`--remote host`). */
  readonly path: string | undefined
}

function fail(text: string, why: string): never {
  throw new IppTunnelError('E_DESTINATION', `bad remote path ${JSON.stringify(text)}: ${why}`)
}

/** Splits `host[:port]:path` after the host: a run of digits followed by ":" (or the end) is a port. */
function split(text: string, user: string | undefined, host: string, rest: string | undefined): RemoteSpec {
  let port: number | undefined
  let path = rest
  if (rest !== undefined) {
    const m = /^([0-9]{1,5})(?::(.*))?$/su.exec(rest)
    if (m !== null) {
      port = Number(m[1])
      path = m[2]
    }
  }
  if (path === '') path = undefined
  const dest = parseDestination(
    formatDestination({ ...(user !== undefined && { user }), host, ...(port !== undefined && { port }) }),
  )
  if (path !== undefined && /\p{Cc}/u.test(path)) fail(text, 'the path contains a control character')
  return { destination: formatDestination(dest), path }
}

/**
 * Reads `[user@]host[:port][:PATH]` as `--remote` takes it: `host`, `user@host:~/dir`, `host:2222:/abs/dir`,
 * `[v6addr]:2222:dir`, `user@[v6addr]:dir`. A run of digits right after the host is a port (write `host:./2222`
 * for a directory named so). Without a path, `path` is undefined.
 *
 * @throws IppTunnelError `E_DESTINATION` when the host part is malformed.
 *
 * @example
 * parseRemoteSpec('alice@[::1]:2222:~/run') // { destination: 'alice@[::1]:2222', path: '~/run' }
 */
export function parseRemoteSpec(text: string): RemoteSpec {
  const at = text.startsWith('[') ? -1 : indexOfUserAt(text)
  const user = at >= 0 ? text.slice(0, at) : undefined
  const rest = at >= 0 ? text.slice(at + 1) : text
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']')
    if (close < 0) fail(text, '"[" without a closing "]"')
    const after = rest.slice(close + 1)
    if (after !== '' && !after.startsWith(':')) fail(text, `unexpected ${JSON.stringify(after)} after "]"`)
    return split(text, user, rest.slice(1, close), after === '' ? undefined : after.slice(1))
  }
  const colon = rest.indexOf(':')
  if (colon < 0) return split(text, user, rest, undefined)
  return split(text, user, rest.slice(0, colon), rest.slice(colon + 1))
}

/** The "@" that ends the user: the last one before the first ":" or "/" (users may not contain either). */
function indexOfUserAt(text: string): number {
  const end = text.search(/[:/]/u)
  const head = end < 0 ? text : text.slice(0, end)
  return head.lastIndexOf('@')
}

/**
 * `FILE` of `up FILE` / `exec FILE` read as scp reads its arguments: `[user@]host[:port]:PATH` is remote; a path
 * with no colon, starting with ":", or with a "/" before its first colon (`./a:b`, `/x:y`) is local (undefined).
 *
 * @throws IppTunnelError `E_DESTINATION` when it looks remote but the host part is malformed, or has no path.
 *
 * @example
 * remotePathOf('me@cluster:~/.ipython/profile_default/security/ipcontroller-client.json')
 * // { destination: 'me@cluster', path: '~/.ipython/profile_default/security/ipcontroller-client.json' }
 * remotePathOf('./odd:name.json') // undefined
 */
export function remotePathOf(text: string): RemoteSpec | undefined {
  if (text.startsWith(':')) return undefined
  if (!text.startsWith('[') && !/^[^/]*@\[/u.test(text)) {
    const colon = text.indexOf(':')
    const slash = text.indexOf('/')
    if (colon < 0 || (slash >= 0 && slash < colon)) return undefined
  } else if (!text.includes(']:')) {
    return undefined
  }
  const spec = parseRemoteSpec(text)
  if (spec.path === undefined) fail(text, 'no path after the host; write host:PATH')
  return spec
}
