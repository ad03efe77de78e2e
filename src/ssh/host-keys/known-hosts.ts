import { createHash, createHmac, randomBytes } from 'node:crypto'
import { mkdir, open, readFile } from 'node:fs/promises'
import path from 'node:path'

import { IppTunnelError } from '../../errors/index.js'
import { matchPatternList } from '../config/index.js'
import type { HostKeyPolicy } from '../types.js'

/**
 * The OpenSSH SHA-256 fingerprint of a public key blob (ssh wire format), as `ssh-keygen -lf` prints it.
 *
 * @example
 * fingerprintSha256(Buffer.from(pubLine.split(' ')[1], 'base64')) // 'SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU'
 */
export function fingerprintSha256(keyBlob: Buffer): string {
  return `SHA256:${createHash('sha256').update(keyBlob).digest('base64').replace(/=+$/u, '')}`
}

/**
 * The key type named inside a public key blob (`ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`, …),
 * or undefined when the blob is not in ssh wire format.
 *
 * @example
 * keyTypeOfBlob(blob) // 'ssh-ed25519'
 */
export function keyTypeOfBlob(keyBlob: Buffer): string | undefined {
  if (keyBlob.length < 4) return undefined
  const len = keyBlob.readUInt32BE(0)
  if (len === 0 || len > 64 || len > keyBlob.length - 4) return undefined
  const type = keyBlob.subarray(4, 4 + len).toString('latin1')
  return /^[\x21-\x7e]+$/u.test(type) ? type : undefined
}

/** One usable line of a known_hosts file. */
export interface KnownHostsEntry {
  readonly file: string
  readonly line: number
  readonly marker: 'revoked' | 'cert-authority' | undefined
  /** The host field as written: a comma-separated pattern list or one `|1|salt|hash`. */
  readonly hosts: string
  readonly keyType: string
  readonly key: Buffer
}

/**
 * Parses the text of a known_hosts file. Comments, blank lines, lines with an unknown marker or a key that does not
 * decode are skipped, as ssh(1) skips them.
 *
 * @example
 * parseKnownHosts('[10.0.0.2]:2222 ssh-ed25519 AAAAC3…\n', '/root/.ssh/known_hosts')
 */
export function parseKnownHosts(text: string, file: string): KnownHostsEntry[] {
  const entries: KnownHostsEntry[] = []
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const words = (lines[i] ?? '').trim().split(/\s+/u)
    const head = words[0] ?? ''
    if (head === '' || head.startsWith('#')) continue
    let marker: KnownHostsEntry['marker']
    if (head.startsWith('@')) {
      if (head === '@revoked') marker = 'revoked'
      else if (head === '@cert-authority') marker = 'cert-authority'
      else continue
    }
    const fields = marker === undefined ? words : words.slice(1)
    const hosts = fields[0] ?? ''
    const keyType = fields[1] ?? ''
    const base64 = fields[2] ?? ''
    if (!/^[A-Za-z0-9+/]+={0,2}$/u.test(base64)) continue
    const key = Buffer.from(base64, 'base64')
    if (keyTypeOfBlob(key) !== keyType) continue
    entries.push({ file, line: i + 1, marker, hosts, keyType, key })
  }
  return entries
}

/**
 * The name OpenSSH looks up in known_hosts: `host` for port 22, `[host]:port` otherwise (lower case).
 *
 * @example
 * knownHostsName('10.0.0.2', 2222) // '[10.0.0.2]:2222'
 */
export function knownHostsName(host: string, port: number): string {
  const h = host.toLowerCase()
  return port === 22 ? h : `[${h}]:${port}`
}

/**
 * True when a known_hosts host field names `name` (from {@link knownHostsName}): a hashed `|1|salt|hash`
 * (HMAC-SHA1 of the name keyed by the salt) or a pattern list with `*`, `?` and `!negation`.
 *
 * @example
 * hostFieldMatches('[*.lab]:2222,!bad.lab', '[node1.lab]:2222') // true
 */
export function hostFieldMatches(field: string, name: string): boolean {
  if (field.startsWith('|')) {
    const m = /^\|1\|([A-Za-z0-9+/=]+)\|([A-Za-z0-9+/=]+)$/u.exec(field)
    if (m === null) return false
    const salt = Buffer.from(m[1] ?? '', 'base64')
    const hash = createHmac('sha1', salt).update(name).digest('base64')
    return hash === m[2]
  }
  return matchPatternList(name, field)
}

/**
 * A hashed known_hosts host field for `name`, as `ssh-keygen -H` writes it (`HashKnownHosts yes`).
 *
 * @example
 * hashHostName('[10.0.0.2]:2222') // '|1|base64salt|base64hmac'
 */
export function hashHostName(name: string, salt: Buffer = randomBytes(20)): string {
  const hash = createHmac('sha1', salt).update(name).digest('base64')
  return `|1|${salt.toString('base64')}|${hash}`
}

/** What {@link checkHostKey} is asked to verify. */
export interface CheckHostKeyOptions {
  /** known_hosts files in order; a missing one is empty. `accept-new` records into `files[0]`. */
  readonly files: readonly string[]
  /** The address connected to (HostName applied). */
  readonly host: string
  readonly port: number
  /** The server's public key blob in ssh wire format, as ssh2 hands it to `hostVerifier`. */
  readonly key: Buffer
  /** The key type, used only when the blob does not name one. */
  readonly keyType?: string
  readonly policy: HostKeyPolicy
  /** Where the policy came from when a config set it (`file:line`); carried into notes. */
  readonly policyFrom?: string
  /** Told what was done that the user should know of: a key recorded, or a check skipped by policy `off`. */
  readonly note?: (note: HostKeyNote) => void
  /**
   * Under policy `ask`: asks someone whether to trust an unknown key (true: record it; false: refuse; undefined:
   * no one can answer, so refuse as `strict` does).
   */
  readonly ask?: ((question: HostKeyQuestion) => Promise<boolean | undefined>) | undefined
}

/** What is asked about an unknown host key: the name looked up, the key's type and fingerprint. */
export interface HostKeyQuestion {
  readonly name: string
  readonly keyType: string
  /** `SHA256:…` */
  readonly fingerprint: string
}

/**
 * Something {@link checkHostKey} did or let pass that a user should hear about (the CLI prints one line each):
 * `hostkey:recorded` — accept-new added the key to `file`; `hostkey:mismatch-ignored` — policy `off` let a key
 * through that differs from the one on record at `known`; `hostkey:unchecked` — policy `off` let an unknown key
 * through. Fingerprints only, never key material.
 */
export type HostKeyNote =
  | (HostKeyNoteBase & { readonly type: 'hostkey:recorded'; readonly file: string })
  | (HostKeyNoteBase & {
      readonly type: 'hostkey:mismatch-ignored'
      readonly known: { readonly file: string; readonly line: number; readonly fingerprint: string }
    })
  | (HostKeyNoteBase & { readonly type: 'hostkey:unchecked' })

interface HostKeyNoteBase {
  /** The name looked up in known_hosts: `host` or `[host]:port`. */
  readonly name: string
  readonly keyType: string
  /** `SHA256:…` of the key the server offered. */
  readonly fingerprint: string
  /** Where the policy came from when a config set it (`file:line`); absent when an option or the default did. */
  readonly policyFrom?: string
}

/**
 * One line for a {@link HostKeyNote}, as the CLI prints it.
 *
 * @example
 * formatHostKeyNote(note) // 'recorded the host key of [10.0.0.2]:2222 (ssh-ed25519 SHA256:…) in /root/.ssh/known_hosts'
 */
export function formatHostKeyNote(note: HostKeyNote): string {
  const key = `${note.keyType} ${note.fingerprint}`
  const policy =
    note.policyFrom === undefined
      ? 'host key checking is off'
      : `StrictHostKeyChecking at ${note.policyFrom} turns checking off`
  switch (note.type) {
    case 'hostkey:recorded':
      return `recorded the host key of ${note.name} (${key}) in ${note.file}`
    case 'hostkey:mismatch-ignored':
      return (
        `warning: the host key of ${note.name} (${key}) differs from the one on record at ${note.known.file}:` +
        `${note.known.line} (${note.known.fingerprint}); connecting anyway because ${policy}`
      )
    case 'hostkey:unchecked':
      return `warning: the host key of ${note.name} (${key}) is not in known_hosts and was not checked because ${policy}`
  }
}

/**
 * Verifies a server's host key against known_hosts files, as ssh(1) does.
 * A key listed under `@revoked` is refused under every policy. With `strict`, an unknown key is refused; with
 * `ask`, `opts.ask` decides (yes records it in `files[0]`, as ssh(1) does), and without an answer it is refused;
 * with `accept-new` it is recorded (hashed) in `files[0]`; a changed key (another key of the same type for the host)
 * is refused under both. `off` refuses nothing but a revoked key, and tells `note` when it lets a changed or unknown
 * key through; `accept-new` tells `note` what it recorded.
 *
 * @returns `'known'` (listed), `'recorded'` (accept-new added it) or `'unchecked'` (policy off).
 * A host covered only by a `@cert-authority` line is refused under `strict` with `E_HOSTKEY_CA` (ssh2 cannot
 * negotiate a certificate host key, so the CA cannot vouch for the plain key offered).
 *
 * @throws IppTunnelError `E_HOSTKEY_UNKNOWN`, `E_HOSTKEY_CA`, `E_HOSTKEY_MISMATCH` or `E_HOSTKEY_REVOKED`, each naming the host,
 * the offered key type and `SHA256:` fingerprint, and the file to fix.
 *
 * @example
 * await checkHostKey({ files: ['/root/.ssh/known_hosts'], host: '10.0.0.2', port: 2222, key, policy: 'strict' })
 */
export async function checkHostKey(opts: CheckHostKeyOptions): Promise<'known' | 'recorded' | 'unchecked'> {
  const name = knownHostsName(opts.host, opts.port)
  const keyType = keyTypeOfBlob(opts.key) ?? opts.keyType ?? 'unknown'
  const offered = `${keyType} ${fingerprintSha256(opts.key)}`

  const entries: KnownHostsEntry[] = []
  for (const file of opts.files) entries.push(...parseKnownHosts(await readKnownHosts(file), file))

  // Stricter than ssh(1), which consults only @revoked lines whose pattern matches: a revoked key is never accepted.
  const revoked = entries.find((e) => e.marker === 'revoked' && e.key.equals(opts.key))
  if (revoked !== undefined) {
    throw new IppTunnelError(
      'E_HOSTKEY_REVOKED',
      `host key for ${name} is marked @revoked at ${revoked.file}:${revoked.line} (server offered ${offered}); ` +
        'refusing to connect: ask the server administrator for its current host key',
    )
  }
  const forHost = entries.filter((e) => e.marker === undefined && hostFieldMatches(e.hosts, name))
  if (forHost.some((e) => e.key.equals(opts.key))) return 'known'

  const base = {
    name,
    keyType,
    fingerprint: fingerprintSha256(opts.key),
    ...(opts.policyFrom === undefined ? {} : { policyFrom: opts.policyFrom }),
  }
  const changed = forHost.find((e) => e.keyType === keyType)
  if (opts.policy === 'off') {
    opts.note?.(
      changed === undefined
        ? { ...base, type: 'hostkey:unchecked' }
        : {
            ...base,
            type: 'hostkey:mismatch-ignored',
            known: { file: changed.file, line: changed.line, fingerprint: fingerprintSha256(changed.key) },
          },
    )
    return 'unchecked'
  }
  if (changed !== undefined) {
    throw new IppTunnelError(
      'E_HOSTKEY_MISMATCH',
      `REMOTE HOST IDENTIFICATION HAS CHANGED for ${name}: server offered ${offered} but ${changed.file}:${changed.line} ` +
        `holds a different ${changed.keyType} key (${fingerprintSha256(changed.key)}); someone could be doing something ` +
        `nasty (man-in-the-middle), or the host key was just replaced; if you have verified the new key, remove the ` +
        `old one with ssh-keygen -R '${name}' -f ${changed.file}`,
    )
  }

  const first = opts.files[0]
  const ca = entries.find((e) => e.marker === 'cert-authority' && hostFieldMatches(e.hosts, name))
  if (ca !== undefined && (opts.policy === 'strict' || opts.policy === 'ask')) {
    const portFlag = opts.port === 22 ? '' : `-p ${opts.port} `
    throw new IppTunnelError(
      'E_HOSTKEY_CA',
      `${name} vouches for its host key with a host certificate authority (@cert-authority at ${ca.file}:${ca.line}), ` +
        `which ipp-tunnel cannot check: ssh2 cannot negotiate certificate host keys, so the server offered its plain ` +
        `key ${offered}. Safe ways through: log in once with ssh and let ipp-tunnel reuse that connection ` +
        `(ControlMaster/ControlPath in ~/.ssh/config, --transport auto or openssh); or check that fingerprint out ` +
        `of band (your site's published host keys, or ssh-keyscan ${portFlag}${opts.host} | ssh-keygen -lf - from a ` +
        `trusted network) and then run once with --host-key-check accept-new`,
    )
  }
  if (opts.policy === 'ask' && first !== undefined && opts.ask !== undefined) {
    const answer = await opts.ask({ name, keyType, fingerprint: fingerprintSha256(opts.key) })
    if (answer === false) {
      throw new IppTunnelError(
        'E_HOSTKEY_UNKNOWN',
        `host key for ${name} (${offered}) not trusted: the answer was no; nothing was recorded`,
      )
    }
    if (answer === true) {
      await recordHostKey(first, name, keyType, opts.key)
      opts.note?.({ ...base, type: 'hostkey:recorded', file: first })
      return 'recorded'
    }
  }
  if (opts.policy === 'strict' || opts.policy === 'ask' || first === undefined) {
    const where = opts.files.length === 0 ? 'any known_hosts file (none configured)' : opts.files.join(', ')
    const portFlag = opts.port === 22 ? '' : `-p ${opts.port} `
    throw new IppTunnelError(
      'E_HOSTKEY_UNKNOWN',
      `host key for ${name} not in ${where} (server offered ${offered}); run ipp-tunnel with ` +
        `--host-key-check accept-new to trust it, or, after checking the fingerprint, add it with ` +
        `ssh-keyscan -H ${portFlag}${opts.host} >> ${first ?? '~/.ssh/known_hosts'}`,
    )
  }

  await recordHostKey(first, name, keyType, opts.key)
  opts.note?.({ ...base, type: 'hostkey:recorded', file: first })
  return 'recorded'
}

async function readKnownHosts(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT' || code === 'ENOTDIR') return ''
    throw new IppTunnelError('E_SSH_CONFIG', `cannot read known_hosts file ${file}: ${code ?? String(err)}`, {
      cause: err,
    })
  }
}

/** Appends a hashed line for `name` to `file`, creating the file 0600 (and its directory 0700) when needed. */
async function recordHostKey(file: string, name: string, keyType: string, key: Buffer): Promise<void> {
  try {
    await mkdir(path.dirname(file), { recursive: true, mode: 0o700 })
    const handle = await open(file, 'a+', 0o600)
    try {
      const { size } = await handle.stat()
      let prefix = ''
      if (size > 0) {
        const last = Buffer.alloc(1)
        await handle.read(last, 0, 1, size - 1)
        if (last[0] !== 0x0a) prefix = '\n'
      }
      await handle.appendFile(`${prefix}${hashHostName(name)} ${keyType} ${key.toString('base64')}\n`)
    } finally {
      await handle.close()
    }
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new IppTunnelError(
      'E_HOSTKEY_UNKNOWN',
      `cannot record the host key for ${name} in ${file}: ${code ?? String(err)}`,
      { cause: err },
    )
  }
}
