import { readFile, stat } from 'node:fs/promises'
import ssh2 from 'ssh2'
import type { AnyAuthMethod, AuthHandlerMiddleware, ParsedKey } from 'ssh2'
import { IppTunnelError } from '../errors/index.js'
import {
  agentCertificateKey,
  certificateKey,
  describeInvalid,
  findCertificates,
  type HopCertificates,
} from './certificate.js'
import type { PassphraseProvider, ResolvedHop } from './types.js'

/** What {@link HopAuth} needs besides the hop: where the agent is and how to get a passphrase. */
export interface AuthOptions {
  /** ssh-agent socket; default `env.SSH_AUTH_SOCK`. `false`: use no agent. */
  readonly agent?: string | false
  readonly passphrase?: PassphraseProvider
  /** Environment to read `SSH_AUTH_SOCK` from; default `process.env`. */
  readonly env?: Readonly<Record<string, string | undefined>>
}

/** One authentication run (one connection attempt) for one hop. */
export interface AuthAttempt {
  /** Pass as ssh2's `authHandler`. Offers the agent, then each identity file, then gives up. */
  readonly authHandler: AuthHandlerMiddleware
  /** True while waiting on the passphrase provider (a connect timeout should not count that time). */
  readonly prompting: boolean
  /** The error to report when the server accepted nothing: `E_PASSPHRASE` or `E_AUTH`. */
  failure(): IppTunnelError
}

type Candidate =
  | { kind: 'agent'; socket: string }
  | { kind: 'key'; path: string; data: Buffer }
  | { kind: 'agent-cert'; key: ParsedKey; source: string }

function hopLabel(hop: ResolvedHop): string {
  const where = `${hop.username}@${hop.host}:${hop.port}`
  return hop.alias === hop.host ? where : `${where} (${hop.alias})`
}

function firstKey(parsed: ParsedKey | ParsedKey[] | Error): ParsedKey | Error {
  if (Array.isArray(parsed)) return parsed[0] ?? new Error('no key in file')
  return parsed
}

const encryptedMessage = /no passphrase given/i

/** True when `data` is an ssh public key (an `id_*.pub` line), which cannot sign. */
function isPublicKey(data: Buffer): boolean {
  const parsed = firstKey(ssh2.utils.parseKey(data))
  return !(parsed instanceof Error) && !parsed.isPrivateKey()
}

/** What to say about a public key passed where a private one is needed. */
function publicKeyAdvice(path: string): string {
  const priv = path.endsWith('.pub') ? `${path.slice(0, -4)}, without .pub` : 'the file without .pub'
  return `${path} is a public key; pass the private key (${priv})`
}

async function isSocket(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isSocket()
  } catch {
    return false
  }
}

/**
 * Authentication for one hop, kept across reconnects: decrypted keys are remembered so a reconnect does not
 * ask for a passphrase again. Offers, in order: the ssh-agent (when its socket exists), then each identity
 * file that exists. An encrypted key is opened with `passphrase(keyPath)`; when that yields nothing the key is
 * skipped, and if nothing else works the run fails with `E_PASSPHRASE` instead of hanging.
 *
 * @example
 * const auth = new HopAuth(hop, { passphrase: fromFile('/run/secrets/pp') })
 * const attempt = await auth.begin() // throws E_IDENTITY when there is nothing to offer
 * client.connect({ host: hop.host, port: hop.port, username: hop.username, authHandler: attempt.authHandler })
 * client.on('error', (e) => { if (e.level === 'client-authentication') throw attempt.failure() })
 */
export class HopAuth {
  readonly #hop: ResolvedHop
  readonly #options: AuthOptions
  readonly #opened = new Map<string, ParsedKey>()
  readonly #lastRead = new Map<string, Buffer>()

  constructor(hop: ResolvedHop, options: AuthOptions = {}) {
    this.#hop = hop
    this.#options = options
  }

  /** Collects what can be offered now; throws `E_IDENTITY` when there is no agent and no key file. */
  async begin(): Promise<AuthAttempt> {
    const hop = this.#hop
    const candidates: Candidate[] = []
    const agent =
      this.#options.agent === false
        ? undefined
        : (this.#options.agent ?? (this.#options.env ?? process.env).SSH_AUTH_SOCK)
    const agentUp = agent !== undefined && agent !== '' && (await isSocket(agent))
    if (agentUp) candidates.push({ kind: 'agent', socket: agent })
    const certs = await findCertificates(
      hop.identityFiles,
      hop.certificateFiles ?? [],
      agentUp ? agent : undefined,
    )
    for (const cert of certs.agent) {
      candidates.push({
        kind: 'agent-cert',
        key: agentCertificateKey(cert),
        source: `certificate ${cert.source}`,
      })
    }
    for (const path of hop.identityFiles) {
      try {
        const data = await readFile(path)
        this.#lastRead.set(path, data)
        candidates.push({ kind: 'key', path, data })
      } catch {
        // A missing default identity file is normal; an unreadable one is not offered, unless an earlier
        // attempt read it: a reconnect must not fail because a home directory went away with the network.
        const data = this.#lastRead.get(path)
        if (data !== undefined) candidates.push({ kind: 'key', path, data })
      }
    }
    const keys = candidates.filter((c) => c.kind === 'key')
    if (keys.length > 0 && keys.length === candidates.length && keys.every((c) => isPublicKey(c.data))) {
      throw new IppTunnelError(
        'E_IDENTITY',
        `No way to authenticate to ${hopLabel(hop)}: ${keys.map((c) => publicKeyAdvice(c.path)).join('; ')}`,
      )
    }
    if (candidates.length === 0 && certs.invalid.length > 0) {
      throw new IppTunnelError(
        'E_CERT_EXPIRED',
        `Cannot authenticate to ${hopLabel(hop)}: ${describeInvalid(certs.invalid)}`,
      )
    }
    if (candidates.length === 0) {
      const files = hop.identityFiles.length > 0 ? hop.identityFiles.join(', ') : 'none configured'
      throw new IppTunnelError(
        'E_IDENTITY',
        `No way to authenticate to ${hopLabel(hop)}: no ssh-agent (SSH_AUTH_SOCK) and no identity file found (looked for ${files}); pass --identity PATH`,
      )
    }
    return this.#attempt(candidates, certs)
  }

  #attempt(candidates: readonly Candidate[], certs: HopCertificates): AuthAttempt {
    const hop = this.#hop
    const tried: string[] = []
    const locked: string[] = []
    const wrong: string[] = []
    const unusable: string[] = []
    let index = 0
    let prompting = false
    // the plain key after its certificate, as ssh(1) offers them
    const queued: AnyAuthMethod[] = []

    const open = async (c: Extract<Candidate, { kind: 'key' }>): Promise<ParsedKey | undefined> => {
      const cached = this.#opened.get(c.path)
      if (cached !== undefined) return cached
      const plain = firstKey(ssh2.utils.parseKey(c.data))
      if (!(plain instanceof Error)) {
        if (!plain.isPrivateKey()) {
          unusable.push(c.path)
          return undefined
        }
        return plain
      }
      if (!encryptedMessage.test(plain.message)) {
        unusable.push(c.path)
        return undefined
      }
      let passphrase: string | undefined
      prompting = true
      try {
        passphrase = await this.#options.passphrase?.(c.path)
      } catch {
        passphrase = undefined
      } finally {
        prompting = false
      }
      if (passphrase === undefined) {
        locked.push(c.path)
        return undefined
      }
      const key = firstKey(ssh2.utils.parseKey(c.data, passphrase))
      if (key instanceof Error) {
        wrong.push(c.path)
        return undefined
      }
      this.#opened.set(c.path, key)
      return key
    }

    const nextMethod = async (): Promise<AnyAuthMethod | false> => {
      for (;;) {
        const next = queued.shift()
        if (next !== undefined) return next
        const c = candidates[index++]
        if (c === undefined) return false
        if (c.kind === 'agent-cert') {
          tried.push(c.source)
          return { type: 'publickey', username: hop.username, key: c.key }
        }
        if (c.kind === 'agent') {
          tried.push(`ssh-agent (${c.socket})`)
          return { type: 'agent', username: hop.username, agent: c.socket }
        }
        const key = await open(c)
        if (key === undefined) continue
        tried.push(c.path)
        const plain: AnyAuthMethod = { type: 'publickey', username: hop.username, key }
        const certKeys = certs.files.flatMap((cert) => {
          const k = certificateKey(cert, key)
          return k === undefined ? [] : [{ key: k, source: cert.source }]
        })
        for (const { key: k, source } of certKeys) {
          tried.push(`certificate ${source}`)
          queued.push({ type: 'publickey', username: hop.username, key: k })
        }
        if (certKeys.length === 0) return plain
        queued.push(plain)
        continue
      }
    }

    const authHandler: AuthHandlerMiddleware = (_methodsLeft, _partial, next) => {
      void nextMethod().then((method) => {
        // ssh2 accepts `false` for "no more methods"; its typings do not say so
        next(method as AnyAuthMethod)
      })
    }

    return {
      authHandler,
      get prompting() {
        return prompting
      },
      failure: () => {
        const where = hopLabel(hop)
        if (wrong.length > 0) {
          return new IppTunnelError(
            'E_PASSPHRASE',
            `Wrong passphrase for private key ${wrong.join(', ')} (connecting to ${where})`,
          )
        }
        if (locked.length > 0) {
          return new IppTunnelError(
            'E_PASSPHRASE',
            `Private key ${locked.join(', ')} is encrypted and no passphrase is available (connecting to ${where}): use --passphrase-file PATH, run on a TTY, or load the key into ssh-agent`,
          )
        }
        if (certs.invalid.length > 0) {
          return new IppTunnelError(
            'E_CERT_EXPIRED',
            `${where} refused authentication; ${describeInvalid(certs.invalid)}: get a new certificate (e.g. run your site's sshproxy/step/vault login again)`,
          )
        }
        const offered = tried.length > 0 ? tried.join(', ') : 'nothing'
        const skipped = unusable
          .map((p) => {
            const data = this.#lastRead.get(p)
            return data !== undefined && isPublicKey(data)
              ? `; ${publicKeyAdvice(p)}`
              : `; not a usable private key: ${p}`
          })
          .join('')
        return new IppTunnelError(
          'E_AUTH',
          `${where} refused authentication; tried ${offered}${skipped}. Check the user name and that the key is in the server's authorized_keys`,
        )
      },
    }
  }
}
