import { readFile } from 'node:fs/promises'
import type { Duplex } from 'node:stream'
import type { ParsedKey } from 'ssh2'

import { fingerprintSha256 } from '../ssh/index.js'

/** The 10-byte ZMTP 3 signature every peer sends first: 0xFF, 8 bytes of padding, 0x7F. */
export function isZmtpSignature(bytes: Buffer): boolean {
  return bytes.length >= 10 && bytes[0] === 0xff && bytes[9] === 0x7f
}

/**
 * The first 10 bytes a freshly opened channel carries (a ZeroMQ peer sends its signature at once), or what arrived
 * before the peer closed or `timeoutMs` passed. Destroys the stream.
 */
export function firstBytes(stream: Duplex, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = []
    let length = 0
    const done = (): void => {
      clearTimeout(timer)
      stream.off('data', onData)
      stream.destroy()
      resolve(Buffer.concat(chunks))
    }
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk)
      length += chunk.length
      if (length >= 10) done()
    }
    const timer = setTimeout(done, timeoutMs)
    stream.on('data', onData)
    stream.once('end', done)
    stream.once('close', done)
    stream.on('error', () => undefined)
  })
}

/** `SHA256:…` of an OpenSSH public key line (`type base64 comment`), or undefined when it is not one. */
export function lineFingerprint(line: string): { type: string; fingerprint: string } | undefined {
  const [type, base64] = line.trim().split(/\s+/u)
  if (type === undefined || base64 === undefined || !/^[A-Za-z0-9+/]+={0,2}$/u.test(base64)) return undefined
  return { type, fingerprint: fingerprintSha256(Buffer.from(base64, 'base64')) }
}

/** What can be said about an identity file without reading its secret: the fingerprint of `PATH.pub`. */
export async function identityFingerprint(path: string): Promise<string> {
  try {
    const pub = lineFingerprint(await readFile(`${path}.pub`, 'utf8'))
    if (pub !== undefined) return `${pub.type} ${pub.fingerprint}`
  } catch {
    // no .pub beside it
  }
  const { default: ssh2 } = await import('ssh2')
  const parsed: ParsedKey | ParsedKey[] | Error = ssh2.utils.parseKey(await readFile(path))
  const key: ParsedKey | Error | undefined = parsed instanceof Array ? (parsed as ParsedKey[])[0] : parsed
  if (key === undefined || key instanceof Error) return 'encrypted or unreadable, no .pub beside it'
  return `${key.type} ${fingerprintSha256(key.getPublicSSH())}`
}

/** The keys the ssh-agent at `socket` holds: type, fingerprint and comment of each. */
export async function agentKeys(socket: string): Promise<string[]> {
  const { default: ssh2 } = await import('ssh2')
  const agent = new ssh2.OpenSSHAgent(socket)
  return new Promise((resolve, reject) => {
    agent.getIdentities((err, keys) => {
      if (err) {
        reject(err)
        return
      }
      resolve(
        (keys ?? []).flatMap((k) =>
          'getPublicSSH' in k
            ? [`${k.type} ${fingerprintSha256(k.getPublicSSH())}${k.comment === '' ? '' : ` (${k.comment})`}`]
            : [],
        ),
      )
    })
  })
}

/**
 * A shell command for the ssh server that listens on a fresh unix socket in a private temp dir, prints its path,
 * and removes it when its stdin closes: what tells a server that forbids unix-socket forwarding from an absent
 * socket (OpenSSH answers "connect failed" to both).
 */
export const UNIX_LISTENER_COMMAND =
  `d=$(mktemp -d) && python3 -c 'import socket,sys` +
  `\ns=socket.socket(socket.AF_UNIX);s.bind(sys.argv[1]);s.listen(4);print(sys.argv[1],flush=True);sys.stdin.read()'` +
  ` "$d/s"; rm -rf "$d"`
