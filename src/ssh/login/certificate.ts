import { readFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { connect } from 'node:net'
import type { ParsedKey } from 'ssh2'

import { ssh2 } from '../ssh2-lib.js'

/*
 * OpenSSH user certificates (PROTOCOL.certkeys) for ssh2, which has none (ssh2#551).
 *
 * ssh2 takes any object as a key that carries its parsed-key mark, a `type`, `getPublicSSH()` and `sign()`: a
 * certificate key has the certificate algorithm as `type` and the certificate blob as its public key, so ssh2 asks
 * the server with it as it would with a plain key. One thing ssh2 cannot do: a signature made with a certificate
 * names the plain algorithm (`ssh-ed25519`), while the request names the certificate's
 * (`ssh-ed25519-cert-v01@openssh.com`); ssh2 writes the same name in both places, which OpenSSH refuses. So
 * {@link enableCertificates} wraps the connection's `authPK` and writes the signed request of a certificate key
 * itself — with the signature from the private key, or from the ssh-agent that holds the certificate.
 */

const CERT_SUFFIX = '-cert-v01@openssh.com'

/** What a certificate says, as far as a client needs it. */
export interface CertificateInfo {
  /** The certificate's key type, e.g. `ssh-ed25519-cert-v01@openssh.com`. */
  readonly type: string
  /** The certified key's type, e.g. `ssh-ed25519`. */
  readonly keyType: string
  /** The certified public key, as ssh wire blob (what `ParsedKey.getPublicSSH()` of the private key returns). */
  readonly publicKey: Buffer
  /** The whole certificate blob. */
  readonly blob: Buffer
  readonly serial: bigint
  /** 1 user, 2 host. */
  readonly certType: number
  readonly keyId: string
  readonly principals: readonly string[]
  /** Seconds since the epoch. */
  readonly validAfter: bigint
  /** Seconds since the epoch; 2^64-1 means forever. */
  readonly validBefore: bigint
}

class Reader {
  #pos = 0
  readonly #buf: Buffer
  constructor(buf: Buffer) {
    this.#buf = buf
  }
  get pos(): number {
    return this.#pos
  }
  uint32(): number {
    if (this.#pos + 4 > this.#buf.length) throw new Error('truncated certificate')
    const v = this.#buf.readUInt32BE(this.#pos)
    this.#pos += 4
    return v
  }
  uint64(): bigint {
    if (this.#pos + 8 > this.#buf.length) throw new Error('truncated certificate')
    const v = this.#buf.readBigUInt64BE(this.#pos)
    this.#pos += 8
    return v
  }
  string(): Buffer {
    const len = this.uint32()
    if (this.#pos + len > this.#buf.length) throw new Error('truncated certificate')
    const v = this.#buf.subarray(this.#pos, this.#pos + len)
    this.#pos += len
    return v
  }
}

/** How many wire strings of public key follow the nonce, per certified key type. */
const keyFields: Readonly<Record<string, number>> = {
  'ssh-rsa': 2,
  'ssh-dss': 4,
  'ecdsa-sha2-nistp256': 2,
  'ecdsa-sha2-nistp384': 2,
  'ecdsa-sha2-nistp521': 2,
  'ssh-ed25519': 1,
  'sk-ecdsa-sha2-nistp256@openssh.com': 3,
  'sk-ssh-ed25519@openssh.com': 2,
}

function sshString(...parts: (Buffer | string)[]): Buffer {
  return Buffer.concat(
    parts.map((p) => {
      const b = typeof p === 'string' ? Buffer.from(p) : p
      const len = Buffer.alloc(4)
      len.writeUInt32BE(b.length)
      return Buffer.concat([len, b])
    }),
  )
}

/**
 * Parses a certificate blob (PROTOCOL.certkeys); undefined when `blob` is not a certificate.
 *
 * @example
 * const [, base64] = (await readFile('id_ed25519-cert.pub', 'utf8')).split(' ')
 * parseCertificate(Buffer.from(base64, 'base64'))?.validBefore
 */
export function parseCertificate(blob: Buffer): CertificateInfo | undefined {
  try {
    const r = new Reader(blob)
    const type = r.string().toString()
    if (!type.endsWith(CERT_SUFFIX)) return undefined
    const keyType = type.slice(0, -CERT_SUFFIX.length)
    const fields = keyFields[keyType]
    if (fields === undefined) return undefined
    r.string() // nonce
    const parts: Buffer[] = []
    for (let i = 0; i < fields; i++) parts.push(r.string())
    const serial = r.uint64()
    const certType = r.uint32()
    const keyId = r.string().toString()
    const list = r.string()
    const p = new Reader(list)
    const principals: string[] = []
    while (p.pos < list.length) principals.push(p.string().toString())
    const validAfter = r.uint64()
    const validBefore = r.uint64()
    return {
      type,
      keyType,
      publicKey: sshString(keyType, ...parts),
      blob,
      serial,
      certType,
      keyId,
      principals,
      validAfter,
      validBefore,
    }
  } catch {
    return undefined
  }
}

const FOREVER = 0xffffffffffffffffn

function formatTime(seconds: bigint): string {
  if (seconds >= FOREVER) return 'forever'
  return new Date(Number(seconds) * 1000).toISOString().replace('.000Z', 'Z')
}

/** `from 2020-01-01T00:00:00Z to 2020-01-02T00:00:00Z`, as `ssh-keygen -L` shows a certificate's validity. */
export function formatValidity(cert: CertificateInfo): string {
  if (cert.validAfter === 0n && cert.validBefore >= FOREVER) return 'forever'
  return `from ${formatTime(cert.validAfter)} to ${formatTime(cert.validBefore)}`
}

/** `expired`, `not yet valid` or undefined when `now` (ms) is inside the certificate's validity window. */
export function certificateProblem(cert: CertificateInfo, now = Date.now()): string | undefined {
  const t = BigInt(Math.floor(now / 1000))
  if (t < cert.validAfter) return 'not yet valid'
  if (t >= cert.validBefore) return 'expired'
  return undefined
}

/** A certificate found in a file (`KEY-cert.pub`, `CertificateFile`) or held by the ssh-agent. */
export interface Certificate extends CertificateInfo {
  /** Where it came from: a file path, or `ssh-agent (SOCKET)`. */
  readonly source: string
  /** The agent socket that holds it (and its private key); undefined for a file. */
  readonly agent?: string
}

/** Reads an OpenSSH public-key line holding a certificate; undefined when missing or not a certificate. */
export async function readCertificateFile(path: string): Promise<Certificate | undefined> {
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch {
    return undefined
  }
  const base64 = text.trim().split(/\s+/u)[1]
  if (base64 === undefined) return undefined
  const info = parseCertificate(Buffer.from(base64, 'base64'))
  return info && { ...info, source: path }
}

const SSH_AGENTC_REQUEST_IDENTITIES = 11
const SSH_AGENT_IDENTITIES_ANSWER = 12
const SSH_AGENTC_SIGN_REQUEST = 13
const SSH_AGENT_SIGN_RESPONSE = 14
const SSH_AGENT_RSA_SHA2_512 = 4

/** One request/answer with the ssh-agent at `socket`. */
function agentRequest(socket: string, message: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const conn = connect(socket)
    const chunks: Buffer[] = []
    let got = 0
    conn.on('error', reject)
    conn.on('data', (chunk: Buffer) => {
      chunks.push(chunk)
      got += chunk.length
      const all = Buffer.concat(chunks)
      if (got >= 4 && got >= 4 + all.readUInt32BE(0)) {
        conn.destroy()
        resolve(all.subarray(4, 4 + all.readUInt32BE(0)))
      }
    })
    conn.on('close', () => reject(new Error('the ssh-agent closed the connection')))
    const len = Buffer.alloc(4)
    len.writeUInt32BE(message.length)
    conn.write(Buffer.concat([len, message]))
  })
}

/** The certificates the ssh-agent at `socket` holds (`ssh-add` of a key with its `-cert.pub` beside it). */
export async function agentCertificates(socket: string): Promise<Certificate[]> {
  let answer: Buffer
  try {
    answer = await agentRequest(socket, Buffer.from([SSH_AGENTC_REQUEST_IDENTITIES]))
  } catch {
    return []
  }
  if (answer[0] !== SSH_AGENT_IDENTITIES_ANSWER) return []
  const r = new Reader(answer.subarray(1))
  const certs: Certificate[] = []
  try {
    const n = r.uint32()
    for (let i = 0; i < n; i++) {
      const blob = r.string()
      r.string() // comment
      const info = parseCertificate(Buffer.from(blob))
      if (info !== undefined) certs.push({ ...info, source: `ssh-agent (${socket})`, agent: socket })
    }
  } catch {
    // a malformed answer: keep what was read
  }
  return certs
}

async function agentSign(socket: string, blob: Buffer, data: Buffer, flags: number): Promise<Buffer> {
  const flagBuf = Buffer.alloc(4)
  flagBuf.writeUInt32BE(flags)
  const answer = await agentRequest(
    socket,
    Buffer.concat([Buffer.from([SSH_AGENTC_SIGN_REQUEST]), sshString(blob, data), flagBuf]),
  )
  if (answer[0] !== SSH_AGENT_SIGN_RESPONSE) throw new Error('the ssh-agent refused to sign')
  return new Reader(answer.subarray(1)).string()
}

/** The signature algorithm and the certificate algorithm to request with, per certified key type. */
function algorithms(keyType: string, certType: string): { sig: string; request: string; hash?: string } {
  if (keyType === 'ssh-rsa') {
    return { sig: 'rsa-sha2-512', request: `rsa-sha2-512${CERT_SUFFIX}`, hash: 'sha512' }
  }
  return { sig: keyType, request: certType }
}

type Signer = (data: Buffer) => Promise<Buffer>

/** Certificate keys made here, with how they sign: the full `string algo, string sig` blob. */
const signers = new WeakMap<object, Signer>()

// ssh2 recognises its parsed keys by a private symbol; borrow it from a key it parsed
let parsedMark: symbol | undefined
function markOf(): symbol {
  if (parsedMark !== undefined) return parsedMark
  const sample = ssh2().utils.parseKey(
    'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAa5ZdJ0DWOqbUMdqehJyKxhZaLfJEzolVuK6x0eiL63',
  )
  const key: ParsedKey | Error = Array.isArray(sample)
    ? ((sample as ParsedKey[])[0] ?? new Error('no key'))
    : sample
  if (key instanceof Error) throw new Error('unreachable: ssh2 cannot parse a key')
  const mark = Object.getOwnPropertySymbols(key).find(
    (s) => typeof (key as unknown as Record<symbol, unknown>)[s] === 'boolean',
  )
  if (mark === undefined) throw new Error('unreachable: ssh2 keys carry no mark')
  parsedMark = mark
  return mark
}

const utilsRequire = createRequire(import.meta.url)
interface Ssh2Utils {
  convertSignature(signature: Buffer, keyType: string): Buffer | false
  sendPacket(proto: unknown, packet: Buffer): void
}
let ssh2Utils: Ssh2Utils | undefined
function protocolUtils(): Ssh2Utils {
  ssh2Utils ??= utilsRequire('ssh2/lib/protocol/utils.js') as Ssh2Utils
  return ssh2Utils
}

function makeKey(cert: CertificateInfo, sign: Signer): ParsedKey {
  const { request } = algorithms(cert.keyType, cert.type)
  const key = {
    [markOf()]: true,
    type: request,
    comment: '',
    isPrivateKey: () => true,
    getPrivatePEM: () => '',
    getPublicPEM: () => '',
    getPublicSSH: () => cert.blob,
    // ssh2 signs synchronously; a certificate's signed request is written by enableCertificates() instead
    sign: () => new Error('a certificate key signs through enableCertificates()'),
    verify: () => false,
    equals: () => false,
  }
  signers.set(key, sign)
  return key as unknown as ParsedKey
}

/**
 * A key for ssh2 that presents `cert` and signs with `privateKey`; undefined when the certificate is not for this
 * private key.
 */
export function certificateKey(cert: CertificateInfo, privateKey: ParsedKey): ParsedKey | undefined {
  if (!privateKey.getPublicSSH().equals(cert.publicKey)) return undefined
  const { sig, hash } = algorithms(cert.keyType, cert.type)
  return makeKey(cert, (data) => {
    const raw = privateKey.sign(data, hash)
    if (raw instanceof Error) return Promise.reject(raw)
    const converted = protocolUtils().convertSignature(raw, cert.keyType)
    if (converted === false) return Promise.reject(new Error('cannot convert the signature'))
    return Promise.resolve(sshString(sig, converted))
  })
}

/** A key for ssh2 that presents a certificate the ssh-agent at `cert.agent` holds, and signs there. */
export function agentCertificateKey(cert: Certificate & { agent: string }): ParsedKey {
  const flags = cert.keyType === 'ssh-rsa' ? SSH_AGENT_RSA_SHA2_512 : 0
  return makeKey(cert, (data) => agentSign(cert.agent, cert.blob, data, flags))
}

interface Protocol {
  _kex: { sessionID: Buffer }
  _authsQueue: string[]
  _packetRW: { write: { allocStart: number; alloc(n: number): Buffer; finalize(p: Buffer): Buffer } }
  authPK(username: string, key: unknown, keyAlgo?: unknown, cbSign?: unknown): void
}

const USERAUTH_REQUEST = 50

/**
 * Lets `client` authenticate with the certificate keys of {@link certificateKey} / {@link agentCertificateKey}.
 * Call right after `client.connect(…)`; other keys are left to ssh2.
 */
export function enableCertificates(client: object, onError: (err: Error) => void): void {
  const proto = (client as { _protocol?: Protocol })._protocol
  if (proto === undefined) return
  const original = proto.authPK.bind(proto)
  proto.authPK = (username, key, keyAlgo, cbSign) => {
    const sign = typeof key === 'object' && key !== null ? signers.get(key) : undefined
    const signing = typeof cbSign === 'function' || typeof keyAlgo === 'function'
    if (sign === undefined || !signing) {
      original(username, key, keyAlgo, cbSign)
      return
    }
    const k = key as ParsedKey
    const body = Buffer.concat([
      Buffer.from([USERAUTH_REQUEST]),
      sshString(username, 'ssh-connection', 'publickey'),
      Buffer.from([1]),
      sshString(k.type, k.getPublicSSH()),
    ])
    const toSign = Buffer.concat([sshString(proto._kex.sessionID), body])
    sign(toSign).then(
      (signature) => {
        const payload = Buffer.concat([body, sshString(signature)])
        const w = proto._packetRW.write
        const packet = w.alloc(payload.length)
        payload.copy(packet, w.allocStart)
        proto._authsQueue.push('publickey')
        protocolUtils().sendPacket(proto, w.finalize(packet))
      },
      (err: unknown) => onError(err instanceof Error ? err : new Error(String(err))),
    )
  }
}

/** The certificates a hop may offer, and those left out because of their validity window. */
export interface HopCertificates {
  /** From files (`KEY-cert.pub` beside an identity file, `CertificateFile`), in that order. */
  readonly files: readonly Certificate[]
  /** Held by the ssh-agent. */
  readonly agent: readonly (Certificate & { agent: string })[]
  /** Found but expired or not yet valid: not offered, named in the error when nothing else is accepted. */
  readonly invalid: readonly { cert: Certificate; problem: string }[]
}

/**
 * Finds the certificates for a hop as ssh(1) does: `IDENTITY-cert.pub` beside each identity file, each
 * `CertificateFile`, and the certificates the agent at `agentSocket` holds; only user certificates are kept.
 */
export async function findCertificates(
  identityFiles: readonly string[],
  certificateFiles: readonly string[],
  agentSocket: string | undefined,
  now = Date.now(),
): Promise<HopCertificates> {
  const paths = [...new Set([...identityFiles.map((f) => `${f}-cert.pub`), ...certificateFiles])]
  const fromFiles = (await Promise.all(paths.map(readCertificateFile))).filter((c) => c !== undefined)
  const fromAgent = agentSocket === undefined ? [] : await agentCertificates(agentSocket)
  const invalid: { cert: Certificate; problem: string }[] = []
  const valid = (c: Certificate): boolean => {
    if (c.certType !== 1) return false
    const problem = certificateProblem(c, now)
    if (problem !== undefined) invalid.push({ cert: c, problem })
    return problem === undefined
  }
  return {
    files: fromFiles.filter(valid),
    agent: fromAgent.filter((c): c is Certificate & { agent: string } => c.agent !== undefined && valid(c)),
    invalid,
  }
}

/** `CERT (key id "ID") is expired: valid from … to …` for each certificate left out. */
export function describeInvalid(invalid: HopCertificates['invalid']): string {
  return invalid
    .map(
      ({ cert, problem }) =>
        `certificate ${cert.source} (key id ${JSON.stringify(cert.keyId)}) is ${problem}: valid ${formatValidity(cert)}`,
    )
    .join('; ')
}
