import { readFile } from 'node:fs/promises'
import type { AnyAuthMethod, AuthHandlerMiddleware, ParsedKey } from 'ssh2'
import { IppTunnelError } from '../../errors/index.js'
import {
  agentCertificateKey,
  certificateKey,
  describeInvalid,
  findCertificates,
  type HopCertificates,
} from './certificate.js'
import { loadSsh2, ssh2 } from '../ssh2-lib.js'
import type { CredentialRenewer } from './renew.js'
import { loginCommand, quotePrompts, type PromptProvider, type PromptRequest } from './prompts.js'
import { hopLabel } from '../hop-label.js'
import type { PassphraseProvider, ResolvedHop } from '../types.js'
import { isSocket } from '../../safe-fs/index.js'
import { encryptedMessage, firstKey, isPublicKey, publicKeyAdvice, type Candidate } from './keys.js'
import { INTERACTIVE, MAX_TRIES, methodOrder, type Method } from './methods.js'

/** What {@link HopAuth} needs besides the hop: where the agent is, how to get a passphrase and answers. */
export interface AuthOptions {
  /** ssh-agent socket; default `env.SSH_AUTH_SOCK`. `false`: use no agent. */
  readonly agent?: string | false
  readonly passphrase?: PassphraseProvider
  /** Answers keyboard-interactive and password prompts; without it those methods are not tried. */
  readonly prompt?: PromptProvider
  /** The link's destination, put in every {@link PromptRequest}; default this hop's `user@host:port`. */
  readonly destination?: string
  /** Told, as lines of text, what the server offers and each attempt with its result (never a secret). */
  readonly verbose?: (message: string) => void
  /** Environment to read `SSH_AUTH_SOCK` from; default `process.env`. */
  readonly env?: Readonly<Record<string, string | undefined>>
  /** `--credential-command`: asked before each attempt to renew a missing or expiring certificate. */
  readonly credential?: CredentialRenewer
}

/** One authentication run (one connection attempt) for one hop. */
export interface AuthAttempt {
  /** Pass as ssh2's `authHandler`. Offers the agent, then each identity file, then gives up. */
  readonly authHandler: AuthHandlerMiddleware
  /** True while waiting on the passphrase or prompt provider (a connect timeout should not count that time). */
  readonly prompting: boolean
  /** True once a prompt of the server was put to the prompt provider (answered or not). */
  readonly prompted: boolean
  /** The error to report when the server accepted nothing: `E_AUTH_PROMPT`, `E_PASSPHRASE`, `E_IDENTITY` or `E_AUTH`. */
  failure(): IppTunnelError
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

  /**
   * Collects what can be offered now; throws `E_IDENTITY` when there is no agent, no key file and no way to answer
   * a prompt.
   */
  async begin(): Promise<AuthAttempt> {
    await loadSsh2()
    const hop = this.#hop
    await this.#options.credential?.ensure(hop, this.#options.destination ?? hop.alias)
    const methods = methodOrder(hop.preferredAuthentications)
    const canAsk = this.#options.prompt !== undefined && methods.some((m) => INTERACTIVE.has(m))
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
    const nothing = this.#nothingToOffer(methods.includes('publickey') ? candidates : [])
    // only public keys given (`-i id_ed25519.pub`): a mistake to report before connecting, prompts or not
    const onlyPublic =
      candidates.length > 0 && candidates.every((c) => c.kind === 'key' && isPublicKey(c.data))
    if (nothing !== undefined && !canAsk && certs.invalid.length > 0 && candidates.length === 0) {
      throw new IppTunnelError(
        'E_CERT_EXPIRED',
        `Cannot authenticate to ${hopLabel(hop)}: ${describeInvalid(certs.invalid)}`,
      )
    }
    if (nothing !== undefined && (!canAsk || onlyPublic)) throw nothing
    return this.#attempt(methods.includes('publickey') ? candidates : [], methods, nothing, certs)
  }

  /** The `E_IDENTITY` error when no key can be offered, else undefined. */
  #nothingToOffer(candidates: readonly Candidate[]): IppTunnelError | undefined {
    const hop = this.#hop
    const keys = candidates.filter((c) => c.kind === 'key')
    if (keys.length > 0 && keys.length === candidates.length && keys.every((c) => isPublicKey(c.data))) {
      return new IppTunnelError(
        'E_IDENTITY',
        `No way to authenticate to ${hopLabel(hop)}: ${keys.map((c) => publicKeyAdvice(c.path)).join('; ')}`,
      )
    }
    if (candidates.length === 0) {
      const files = hop.identityFiles.length > 0 ? hop.identityFiles.join(', ') : 'none configured'
      return new IppTunnelError(
        'E_IDENTITY',
        `No way to authenticate to ${hopLabel(hop)}: no ssh-agent (SSH_AUTH_SOCK) and no identity file found (looked for ${files}); pass --identity PATH`,
      )
    }
    return undefined
  }

  #attempt(
    candidates: readonly Candidate[],
    methods: readonly Method[],
    nothing: IppTunnelError | undefined,
    certs: HopCertificates,
  ): AuthAttempt {
    const hop = this.#hop
    const where = hopLabel(hop)
    const provider = this.#options.prompt
    const tried: string[] = []
    const locked: string[] = []
    const wrong: string[] = []
    const unusable: string[] = []
    let index = 0
    let prompting = false
    let prompted = false
    const tries = { 'keyboard-interactive': 0, password: 0 }
    /** The last request nobody answered: the attempt stopped there. */
    let unanswered: PromptRequest | undefined
    /** The last request answered (the server then refused, or asked again). */
    let answered: PromptRequest | undefined
    let refusals = 0
    const partial: string[] = []
    let serverMethods: readonly string[] | null = null
    // the plain key after its certificate, as ssh(1) offers them
    const queued: AnyAuthMethod[] = []

    const open = async (c: Extract<Candidate, { kind: 'key' }>): Promise<ParsedKey | undefined> => {
      const cached = this.#opened.get(c.path)
      if (cached !== undefined) return cached
      const plain = firstKey(ssh2().utils.parseKey(c.data))
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
      const key = firstKey(ssh2().utils.parseKey(c.data, passphrase))
      if (key instanceof Error) {
        wrong.push(c.path)
        return undefined
      }
      this.#opened.set(c.path, key)
      return key
    }

    const ask = async (request: PromptRequest): Promise<readonly string[] | undefined> => {
      prompted = true
      prompting = true
      try {
        const answers = await provider?.(request)
        if (answers === undefined) return undefined
        return request.prompts.map((_p, i) => answers[i] ?? '')
      } catch {
        return undefined
      } finally {
        prompting = false
      }
    }

    const request = (
      method: PromptRequest['method'],
      name: string,
      instructions: string,
      prompts: PromptRequest['prompts'],
    ): PromptRequest => ({
      destination: this.#options.destination ?? where,
      host: where,
      method,
      name,
      instructions,
      prompts,
    })

    const nextKey = async (): Promise<AnyAuthMethod | false> => {
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
      }
    }

    // ssh2 accepts `false` for "no more methods"; its typings do not say so
    const stop = (next: (m: AnyAuthMethod) => void): void => next(false as unknown as AnyAuthMethod)

    const nextMethod = async (
      allowed: (m: Method) => boolean,
      next: (m: AnyAuthMethod) => void,
    ): Promise<AnyAuthMethod | false | 'stopped'> => {
      for (const method of methods) {
        if (!allowed(method)) continue
        if (method === 'publickey') {
          const key = await nextKey()
          if (key !== false) return key
          continue
        }
        if (provider === undefined || tries[method] >= MAX_TRIES) continue
        tries[method]++
        if (method === 'password') {
          const asked = request('password', '', '', [
            { prompt: `${hop.username}@${hop.host}'s password: `, echo: false },
          ])
          const answers = await ask(asked)
          if (answers === undefined) {
            unanswered = asked
            stop(next)
            return 'stopped'
          }
          answered = asked
          return { type: 'password', username: hop.username, password: answers[0] ?? '' }
        }
        return {
          type: 'keyboard-interactive',
          username: hop.username,
          prompt: (name, instructions, _lang, prompts, finish) => {
            const asked = request(
              'keyboard-interactive',
              name,
              instructions,
              prompts.map((p) => ({ prompt: p.prompt, echo: p.echo === true })),
            )
            this.#options.verbose?.(`${where}: keyboard-interactive asks ${quotePrompts(asked)}`)
            void ask(asked).then((answers) => {
              if (answers === undefined) {
                unanswered = asked
                stop(next)
                return
              }
              answered = asked
              finish([...answers])
            })
          },
        }
      }
      return false
    }

    let lastMethod: string | undefined
    let askedNone = false
    const authHandler: AuthHandlerMiddleware = (left, partialSuccess, next) => {
      // ssh2 passes null (not in its typings) before the server has said which methods it takes
      const methodsLeft = left as readonly string[] | null
      const say = this.#options.verbose
      // --verbose (and doctor) asks with "none" first, as ssh(1) always does, so the server lists its methods
      // even when the first key would do; one round trip, and OpenSSH does not count it against MaxAuthTries
      if (say !== undefined && methodsLeft === null && !askedNone) {
        askedNone = true
        lastMethod = 'none'
        next({ type: 'none', username: hop.username })
        return
      }
      if (say !== undefined && methodsLeft !== null) {
        const judged =
          lastMethod === undefined || lastMethod === 'none'
            ? ''
            : `${lastMethod} ${partialSuccess ? 'accepted, more wanted' : 'refused'}; `
        say(`${where}: ${judged}the server accepts ${methodsLeft.join(', ') || 'nothing more'}`)
      }
      if (methodsLeft !== null) {
        if (partialSuccess && lastMethod !== undefined) partial.push(lastMethod)
        else if (lastMethod !== undefined && INTERACTIVE.has(lastMethod) && answered !== undefined) refusals++
        serverMethods = methodsLeft
      }
      const allowed = (m: Method): boolean => methodsLeft === null || methodsLeft.includes(m)
      void nextMethod(allowed, next).then((method) => {
        if (method === 'stopped') return
        lastMethod = method === false ? undefined : method.type === 'agent' ? 'publickey' : method.type
        if (say !== undefined) {
          const what =
            method === false
              ? 'nothing left to try'
              : method.type === 'agent'
                ? `trying publickey: ssh-agent ${tried.at(-1) ?? ''}`
                : method.type === 'publickey'
                  ? `trying publickey: ${tried.at(-1) ?? ''}`
                  : `trying ${method.type}`
          say(`${where}: ${what}`)
        }
        next(method as AnyAuthMethod)
      })
    }

    return {
      authHandler,
      get prompting() {
        return prompting
      },
      get prompted() {
        return prompted
      },
      failure: () => {
        const accepted =
          partial.length > 0 ? `; it accepted ${[...new Set(partial)].join(', ')} but wants more` : ''
        if (unanswered !== undefined) {
          const asks = unanswered.method === 'password' ? 'a password' : quotePrompts(unanswered)
          const named = unanswered.name !== '' ? ` (${unanswered.name})` : ''
          return new IppTunnelError(
            'E_AUTH_PROMPT',
            `${where} asks ${asks}${named} by ${unanswered.method}${accepted}, and nothing here can answer: run ipp-tunnel in a terminal, or, where the service (ipp-tunnel watch) holds the link, answer with: ${loginCommand(where)}`,
          )
        }
        if (answered !== undefined && (refusals > 0 || lastMethod === answered.method)) {
          const asks =
            answered.method === 'password' ? 'the password' : `the answers to ${quotePrompts(answered)}`
          return new IppTunnelError(
            'E_AUTH',
            `${where} refused ${asks} (${answered.method})${accepted}; check what you typed (a one-time code is good once, within its time window)`,
          )
        }
        const offers =
          serverMethods !== null && serverMethods.length > 0
            ? ` (the server offers: ${serverMethods.join(', ')})`
            : ''
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
        if (certs.invalid.length > 0 && partial.length === 0) {
          return new IppTunnelError(
            'E_CERT_EXPIRED',
            `${where} refused authentication; ${describeInvalid(certs.invalid)}: get a new certificate (e.g. run your site's sshproxy/step/vault login again)`,
          )
        }
        if (nothing !== undefined && partial.length === 0) {
          return new IppTunnelError('E_IDENTITY', `${nothing.message}${offers}`)
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
          `${where} refused authentication; tried ${offered}${skipped}${accepted}${offers}. Check the user name and that the key is in the server's authorized_keys`,
        )
      },
    }
  }
}
