/** Socket and resolver error codes, in words a user can act on. */
const REASONS: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'connection refused (nothing listens on that port)',
  ETIMEDOUT: 'connection timed out',
  EHOSTUNREACH: 'no route to host',
  ENETUNREACH: 'network unreachable',
  EHOSTDOWN: 'host is down',
  ENETDOWN: 'network is down',
  ECONNRESET: 'connection reset by the server',
  EPIPE: 'connection reset by the server',
  EADDRNOTAVAIL: 'address not available',
  ENOTFOUND: 'name not resolved',
  EAI_NONAME: 'name not resolved',
  EAI_NODATA: 'name not resolved',
  EAI_AGAIN: 'name not resolved (temporary DNS failure)',
  EAI_FAIL: 'name not resolved (DNS failure)',
}

/**
 * Why a connection to an ssh server failed before it was authenticated, as a short phrase: the socket's error
 * code in words (`connection refused`, `no route to host`, `name not resolved`, …), or ssh2's message.
 *
 * @example
 * connectFailureReason(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:22'), { code: 'ECONNREFUSED' }))
 * // 'connection refused (nothing listens on that port)'
 */
export function connectFailureReason(err: unknown): string {
  if (err === undefined) return 'the connection closed before the SSH handshake'
  if (!(err instanceof Error)) return typeof err === 'string' ? err : 'unknown error'
  const code = (err as NodeJS.ErrnoException).code
  const reason = code === undefined ? undefined : REASONS[code]
  if (reason !== undefined) return reason
  if (/Connection lost before handshake/iu.test(err.message)) {
    return 'the server closed the connection before the SSH handshake (not an SSH server, or sshd refused it: MaxStartups, tcp wrappers, a firewall)'
  }
  return code !== undefined && !err.message.includes(code) ? `${code}: ${err.message}` : err.message
}

/** Socket errors that say the network failed, not the server: no route, no address, no answer. */
const NETWORK_CODES: ReadonlySet<string> = new Set([
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EHOSTDOWN',
  'ENETDOWN',
  'EADDRNOTAVAIL',
  'EAI_AGAIN',
])

/**
 * Whether a failure to reach or keep a server is the network's (no route, no answer, a connection that died
 * silently) rather than the server's word (refused, reset, a login failure): the first is worth retrying every
 * second, the second backs off.
 */
export function isNetworkFailure(err: { code: string; cause?: unknown; message: string }): boolean {
  if (err.code === 'E_LINK_DOWN') return true
  if (err.code !== 'E_CONNECT') return false
  const code = (err.cause as NodeJS.ErrnoException | undefined)?.code
  if (code !== undefined) return NETWORK_CODES.has(code)
  return /timed out|no SSH handshake within/u.test(err.message)
}

/** Whether a connect failed on this machine, before any packet left (no route, no address, the network down). */
export function leftNothing(err: { code: string; cause?: unknown }): boolean {
  const code = (err.cause as NodeJS.ErrnoException | undefined)?.code
  return (
    err.code === 'E_CONNECT' && (code === 'ENETUNREACH' || code === 'ENETDOWN' || code === 'EADDRNOTAVAIL')
  )
}
