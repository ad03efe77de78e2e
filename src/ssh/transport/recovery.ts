import type { Client } from 'ssh2'
import { IppTunnelError, isIppTunnelError } from '../../errors/index.js'
import type { ResolvedHop } from '../types.js'
import { askedSomeone, endChain, openChain, type Chain, type ChainContext } from './chain.js'
import { describe, label } from './channels.js'
import { isNetworkFailure, leftNothing } from './connect-error.js'
import { plainAddress, sourceFor, watchNetwork, type NetworkEvent } from './network-watch.js'
import { OpenSshMaster } from './openssh-master.js'
import type { LinkEvents, LinkOptions, LinkState } from './options.js'
import { answers } from './ssh2-socket.js'
import { endStaleSession, type StalePeer } from './stale-session.js'

/*
 * How a {@link Link} gets a connection and gets one back: every attempt, the first included, goes through
 * {@link Recovery.open}, so that attempts are spaced and counted in one place; after a drop
 * {@link Recovery.reconnect} retries with backoff until it works or fails for good, and ends the server's side of
 * the connection given up; {@link watchAfterChanges} tells, after a resume or a network change, whether a live
 * connection is dead. The Link owns its Recovery and keeps its state, its events and what rides the connection.
 */

/** How long a connection may stay silent after a resume or a network change before it counts as dead. */
const PROBE_MS = 1500
/** Connection attempts of one link start at least this far apart (sites limit how often one connects). */
const MIN_ATTEMPT_SPACING_MS = 1000
/** The TCP connect of a retry after a network failure (see ChainContext.tcpConnectWithinMs). */
const RETRY_TCP_CONNECT_MS = 3000
/** Retries after a failure of the network, unless a network change or a resume comes first. */
const RETRY_NETWORK_MS = 1000
/** How long a reconnect waits for the server to end the connection it replaces. */
const STALE_SESSION_MS = 3000

/** Host-key, authentication and identity failures stop a link; everything else is retried. */
const fatalCodes: ReadonlySet<string> = new Set([
  'E_HOSTKEY_UNKNOWN',
  'E_HOSTKEY_CA',
  'E_HOSTKEY_MISMATCH',
  'E_HOSTKEY_REVOKED',
  'E_AUTH',
  'E_AUTH_PROMPT',
  'E_PASSPHRASE',
  'E_IDENTITY',
  'E_CERT_EXPIRED',
  'E_CREDENTIAL_COMMAND',
  'E_FORWARD_DENIED',
])

/** What a {@link Recovery} needs of the {@link Link} that owns it. */
export interface RecoveryHost {
  /** `user@host:port` of the server that forwards. */
  readonly destination: string
  readonly lastHop: ResolvedHop
  readonly options: LinkOptions
  readonly chainContext: ChainContext
  /** Aborted when the link closes. */
  readonly closing: AbortSignal
  state(): LinkState
  setState(state: LinkState): void
  /** Makes a new connection (or master) the live one. */
  adopt(chain: Chain | OpenSshMaster): void
  fail(error: IppTunnelError): void
  asError(err: unknown): IppTunnelError
  /** Emits the link's `reconnecting` event. */
  reconnecting(info: LinkEvents['reconnecting'][0]): void
  /** Emits the link's `reconnected` event. */
  reconnected(info: LinkEvents['reconnected'][0]): void
}

/** The connecting side of one {@link Link}: see the top of this file. */
export class Recovery {
  readonly #link: RecoveryHost
  /** Successful reconnects since `connect()`. */
  reconnects = 0
  /** When the last connection attempt started (epoch ms): the next one starts a second later at the soonest. */
  lastAttemptAt = 0
  /** The connection this side gave up for silence, whose sshd the next connection ends. */
  stalePeer: StalePeer | undefined

  constructor(link: RecoveryHost) {
    this.#link = link
  }

  /**
   * Opens the transport: the user's OpenSSH master when `transport` allows and one is alive (or, for `openssh`,
   * once started), else our own chain of ssh2 connections.
   */
  async open(signal: AbortSignal): Promise<Chain | OpenSshMaster> {
    this.lastAttemptAt = Date.now()
    const transport = this.#link.options.transport ?? 'auto'
    const say = this.#link.options.verbose
    if (transport !== 'ssh2') {
      const hop = this.#link.lastHop
      const env = this.#link.options.env
      const master = await OpenSshMaster.find(hop, env, this.#link.options.ownProcessGroup === true)
      signal.throwIfAborted()
      if (master !== undefined) {
        say?.(`${label(hop)}: transport openssh: your live master at ${master.path}, no new login`)
        return master
      }
      say?.(
        `${label(hop)}: transport ${transport}: no live OpenSSH master${hop.controlPath !== undefined ? ` at ${hop.controlPath}` : ' (no ControlPath)'}${transport === 'openssh' ? '; starting one' : '; our own connection'}`,
      )
      if (transport === 'openssh') return OpenSshMaster.start(hop, env)
    }
    return this.#openWithLogin(signal)
  }

  /**
   * Connects anew until it works or fails for good. A failure of the network (no route, no answer, a connection
   * that died) is retried every second, the server's word (refused, reset) with capped exponential backoff; a
   * resume or a network change cuts a wait short. Attempts start at least {@link MIN_ATTEMPT_SPACING_MS} apart (or `backoff.maxMs`, when smaller),
   * however they end: a site that limits how often one connects sees at most one a second.
   */
  async reconnect(error: IppTunnelError): Promise<void> {
    const downAt = Date.now()
    this.#link.setState('reconnecting')
    const backoff = this.#link.options.backoff ?? {}
    const initial = backoff.initialMs ?? 250
    const max = backoff.maxMs ?? 15_000
    const jitter = Math.min(Math.max(backoff.jitter ?? 0.2, 0), 1)
    // a backoff capped below a second (tests, a local server) was asked for explicitly
    const minSpacing = Math.min(MIN_ATTEMPT_SPACING_MS, max)
    let lastError = error
    let serverFailures = 0
    let wake: (() => void) | undefined
    const stopWatching = watchNetwork(() => wake?.())
    try {
      for (let attempt = 1; ; attempt++) {
        const network = isNetworkFailure(lastError)
        if (!network) serverFailures++
        const backedOff = Math.round(
          Math.min(max, initial * 2 ** Math.max(serverFailures - 1, 0)) *
            (1 + jitter * (2 * Math.random() - 1)),
        )
        const base = attempt === 1 ? initial : network ? RETRY_NETWORK_MS : backedOff
        const delayMs = Math.max(this.lastAttemptAt + minSpacing - Date.now(), Math.min(max, base))
        this.#link.reconnecting({ attempt, delayMs, error: lastError })
        const woken = await sleep(delayMs, this.#link.closing, (w) => (wake = w))
        if (woken === 'aborted') return
        if (woken === 'woken') {
          const rest = this.lastAttemptAt + minSpacing - Date.now()
          if (rest > 0 && (await sleep(rest, this.#link.closing)) === 'aborted') return
        }
        if (network) this.#link.chainContext.tcpConnectWithinMs = RETRY_TCP_CONNECT_MS
        else delete this.#link.chainContext.tcpConnectWithinMs
        try {
          const chain = await this.open(this.#link.closing)
          if (this.#link.state() !== 'reconnecting') {
            void (chain instanceof OpenSshMaster ? chain.close() : endChain(chain))
            return
          }
          // before anything rides the new connection: a peer coming back must find the old one gone
          if (!(chain instanceof OpenSshMaster)) await this.#endStaleSession(chain)
          if (this.#link.state() !== 'reconnecting') {
            void (chain instanceof OpenSshMaster ? chain.close() : endChain(chain))
            return
          }
          this.reconnects++
          this.#link.adopt(chain)
          this.#link.reconnected({ attempt, downMs: Date.now() - downAt })
          return
        } catch (err) {
          if (this.#link.state() !== 'reconnecting') return
          lastError = this.#link.asError(err)
          // an attempt that never left this machine (no route, no address) is nothing a site counts
          if (leftNothing(lastError)) this.lastAttemptAt = 0
          if (fatalCodes.has(lastError.code)) {
            this.#link.fail(lastError)
            return
          }
        }
      }
    } finally {
      stopWatching()
      delete this.#link.chainContext.tcpConnectWithinMs
    }
  }

  /**
   * Ends the server's side of the connection given up before `chain` (see {@link endStaleSession}); never fails,
   * waits at most {@link STALE_SESSION_MS}.
   */
  async #endStaleSession(chain: Chain): Promise<void> {
    const peer = this.stalePeer
    const client = chain.clients[0]
    this.stalePeer = undefined
    if (peer === undefined || client === undefined) return
    const say = this.#link.options.verbose
    const from = `${peer.address}:${String(peer.port)}`
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<'late'>(
      (resolve) => (timer = setTimeout(() => resolve('late'), STALE_SESSION_MS)),
    )
    try {
      const ended = await Promise.race([endStaleSession(client, this.#link.destination, peer), late])
      say?.(
        ended === 'late'
          ? `${this.#link.destination}: the server did not say within ${STALE_SESSION_MS / 1000} s whether it ended the old connection from ${from}`
          : `${this.#link.destination}: the server's side of the old connection from ${from} ${ended > 0 ? 'ended' : 'was gone already'}`,
      )
    } catch (err) {
      say?.(
        `${this.#link.destination}: could not end the server's side of the old connection from ${from}: ${describe(err)}`,
      )
    } finally {
      clearTimeout(timer)
    }
  }

  /**
   * {@link openChain}, and with a `login` gate: when the login needs an answer nobody gave (or answers were
   * refused), waits for someone to log in and tries again, telling the gate how each such try ended.
   */
  async #openWithLogin(signal: AbortSignal): Promise<Chain> {
    const gate = this.#link.options.login
    for (;;) {
      try {
        this.lastAttemptAt = Date.now()
        const chain = await openChain(this.#link.chainContext, signal)
        gate?.settled(this.#link.destination, undefined)
        return chain
      } catch (err) {
        const needsLogin = isIppTunnelError(err) && (err.code === 'E_AUTH_PROMPT' || askedSomeone(err))
        if (isIppTunnelError(err) && !signal.aborted) gate?.settled(this.#link.destination, err)
        if (gate === undefined || !needsLogin || signal.aborted) throw err
        await gate.wait(this.#link.destination, signal)
      }
    }
  }
}

/**
 * Watches `chain`, until its first client closes, for a resume or a network change; when {@link checkAfter} then
 * finds it dead, tells `giveUp` why and destroys that client, so that the link connects anew.
 */
export function watchAfterChanges(chain: Chain, giveUp: (reason: string) => void): void {
  let probing = false
  const stopWatching = watchNetwork((event) => {
    if (chain.dead || probing) return
    const first = chain.clients[0]
    if (first === undefined) return
    probing = true
    checkAfter(event, chain, first).then(
      (reason) => {
        probing = false
        if (reason === undefined || chain.dead) return
        giveUp(reason)
        first.destroy()
      },
      // a check that could not be made leaves the connection to its keepalives
      () => (probing = false),
    )
  })
  chain.clients[0]?.once('close', stopWatching)
}

/**
 * After a resume or a network change: why `chain` is dead, or undefined while it may live. A connection whose
 * address this machine no longer routes from (another network) is dead for certain; with no route at all (the
 * network down) it waits, for its TCP connection may resume when the same network comes back; with the same
 * address it is kept after a change and asked for an answer after a resume. A login that asked a person is never given up here: its silence allowance decides.
 */
async function checkAfter(event: NetworkEvent, chain: Chain, first: Client): Promise<string | undefined> {
  if (chain.asked) return undefined
  const why =
    event.kind === 'resume'
      ? `this process ran again after ${Math.round(event.stoppedMs / 1000)} s stopped (a suspend)`
      : 'the network changed'
  if (chain.localAddress !== undefined && chain.remoteAddress !== undefined) {
    const source = await sourceFor(chain.remoteAddress)
    if (source === undefined) return undefined
    const local = plainAddress(chain.localAddress)
    if (source !== local) {
      return `${why}: this machine now reaches ${chain.remoteAddress} from ${source}, not from ${local}, the connection's address`
    }
  }
  // a change that left the route as it was: the connection may resume, keepalives decide (a Wi-Fi blip costs
  // nothing); after a resume anything may have happened meanwhile (a NAT forgot the mapping): ask
  if (event.kind !== 'resume') return undefined
  return (await answers(first, PROBE_MS))
    ? undefined
    : `${why}: no answer from the server within ${PROBE_MS / 1000} s`
}

/**
 * Waits `ms`; resolves `slept`, `aborted` (the signal), or `woken` when the function handed to `onWake` is called
 * first.
 */
function sleep(
  ms: number,
  signal: AbortSignal,
  onWake?: (wake: () => void) => void,
): Promise<'slept' | 'aborted' | 'woken'> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve('aborted')
      return
    }
    const end = (how: 'slept' | 'aborted' | 'woken'): void => {
      clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
      onWake?.(() => undefined)
      resolve(how)
    }
    const onAbort = (): void => end('aborted')
    const timer = setTimeout(() => end('slept'), ms)
    signal.addEventListener('abort', onAbort, { once: true })
    onWake?.(() => end('woken'))
  })
}
