import { FIELD_ORDER, type ConnectionInfo } from './types.js'

/**
 * The JSON text of a connection file as the peers write it (indent 2, no trailing newline): known
 * fields in the peer's order, then the extras in the order they were read.
 */
export function serializeConnectionFile(info: ConnectionInfo): string {
  const fields = info as unknown as Readonly<Record<string, unknown>>
  const known = FIELD_ORDER[info.kind]
  const entries: [string, unknown][] = []
  for (const name of known) {
    if (fields[name] !== undefined) entries.push([name, fields[name]])
  }
  for (const [name, value] of Object.entries(info.extra)) {
    if (!known.includes(name) && name !== 'kind' && name !== 'extra') entries.push([name, value])
  }
  return JSON.stringify(Object.fromEntries(entries), null, 2)
}

const REDACTED = '<redacted>'
const SECRET_EXTRA = /key|secret|password|passphrase|token/i

/**
 * A copy safe to log or show in status: the HMAC key, the Curve secret key and any extra whose name
 * looks secret are replaced by `"<redacted>"` (an empty key stays empty: it means "no signing").
 */
export function redact<T extends ConnectionInfo>(info: T): T {
  const hide = (value: unknown): unknown => (value === '' || value === null ? value : REDACTED)
  const extra = Object.fromEntries(
    Object.entries(info.extra).map(([name, value]) => [name, SECRET_EXTRA.test(name) ? hide(value) : value]),
  )
  const copy = { ...info, key: info.key === '' ? '' : REDACTED, extra }
  if (info.kind === 'kernel' && info.curve_secretkey !== undefined) {
    return { ...copy, curve_secretkey: REDACTED }
  }
  return copy
}
