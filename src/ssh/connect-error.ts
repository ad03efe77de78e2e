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
