/**
 * Every failure ipp-tunnel reports is an {@link IppTunnelError} with a stable `code`.
 * Users match on `err.code`; the CLI maps codes to exit status and prints `message` as one line.
 *
 * @example
 * try { await openTunnel(file) } catch (err) {
 *   if (isIppTunnelError(err) && err.code === 'E_HOSTKEY_UNKNOWN') console.error(err.message)
 * }
 */
export type ErrorCode =
  // bad input: the user's file or arguments (exit 2)
  | 'E_CONNFILE_READ'
  | 'E_CONNFILE_JSON'
  | 'E_CONNFILE_KIND'
  | 'E_CONNFILE_FIELD'
  | 'E_DESTINATION'
  | 'E_SSH_CONFIG'
  | 'E_USAGE'
  | 'E_UNSAFE_PATH'
  // ssh link (exit 1)
  | 'E_HOSTKEY_UNKNOWN'
  | 'E_HOSTKEY_CA'
  | 'E_HOSTKEY_MISMATCH'
  | 'E_HOSTKEY_REVOKED'
  | 'E_AUTH'
  | 'E_AUTH_PROMPT'
  | 'E_PASSPHRASE'
  | 'E_IDENTITY'
  | 'E_CERT_EXPIRED'
  | 'E_CREDENTIAL_COMMAND'
  | 'E_CONNECT'
  | 'E_FORWARD_DENIED'
  | 'E_FORWARD'
  | 'E_LINK_DOWN'
  // wire protocol
  | 'E_SIGNATURE_MISSING'
  | 'E_SIGNATURE_MISMATCH'
  | 'E_SIGNATURE_REPLAY'
  | 'E_SIGNATURE_SCHEME'
  | 'E_MESSAGE_FORMAT'
  // sockets, client, service
  | 'E_CONNFILE_WRITE'
  | 'E_CURVE'
  | 'E_TIMEOUT'
  | 'E_REMOTE'
  | 'E_SERVICE_DOWN'
  | 'E_SPAWN'
  | 'E_ENGINE_EXIT'
  | 'E_NODE'
  | 'E_SLURM'
  | 'E_CLOSED'
  // remote sources
  | 'E_REMOTE_DIR'
  | 'E_REMOTE_FILE'
  | 'E_COPY_CONFLICT'
  // processes started on the ssh server
  | 'E_REMOTE_EXISTS'
  | 'E_REMOTE_GONE'
  | 'E_REMOTE_NODE'

/** The one error type of ipp-tunnel. `cause` is set when wrapping an ssh2, zeromq or fs error. */
export class IppTunnelError extends Error {
  override name = 'IppTunnelError'
  readonly code: ErrorCode

  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options)
    this.code = code
  }
}

/** Type guard for {@link IppTunnelError}. */
export function isIppTunnelError(value: unknown): value is IppTunnelError {
  return value instanceof IppTunnelError
}

const badInput: ReadonlySet<ErrorCode> = new Set([
  'E_CONNFILE_READ',
  'E_CONNFILE_JSON',
  'E_CONNFILE_KIND',
  'E_CONNFILE_FIELD',
  'E_DESTINATION',
  'E_SSH_CONFIG',
  'E_USAGE',
  'E_UNSAFE_PATH',
  'E_REMOTE_FILE',
  'E_COPY_CONFLICT',
])

/** True for errors caused by the user's input (files, arguments), which the CLI reports with exit 2. */
export function isBadInput(code: ErrorCode): boolean {
  return badInput.has(code)
}
