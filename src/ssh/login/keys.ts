import type { ParsedKey } from 'ssh2'

import { ssh2 } from '../ssh2-lib.js'

/* What a login offers (the agent, key files, certificates in the agent) and the checks on a key file before it is offered. */

export type Candidate =
  | { kind: 'agent'; socket: string }
  | { kind: 'key'; path: string; data: Buffer }
  | { kind: 'agent-cert'; key: ParsedKey; source: string }

export function firstKey(parsed: ParsedKey | ParsedKey[] | Error): ParsedKey | Error {
  if (Array.isArray(parsed)) return parsed[0] ?? new Error('no key in file')
  return parsed
}

export const encryptedMessage = /no passphrase given/i

/** True when `data` is an ssh public key (an `id_*.pub` line), which cannot sign. */
export function isPublicKey(data: Buffer): boolean {
  const parsed = firstKey(ssh2().utils.parseKey(data))
  return !(parsed instanceof Error) && !parsed.isPrivateKey()
}

/** What to say about a public key passed where a private one is needed. */
export function publicKeyAdvice(path: string): string {
  const priv = path.endsWith('.pub') ? `${path.slice(0, -4)}, without .pub` : 'the file without .pub'
  return `${path} is a public key; pass the private key (${priv})`
}
