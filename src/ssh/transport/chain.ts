import { connect as connectTcp, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'

import { IppTunnelError, isIppTunnelError } from '../../errors/index.js'
import { enableCertificates, type AuthAttempt, type HopAuth } from '../login/index.js'
import { describe, forwardError, label, openChannel, type Client, type Ssh2Error } from './channels.js'
import { connectFailureReason } from './connect-error.js'
import { checkHostKey, fingerprintSha256, hostKeyAsker, type HostKeyNote } from '../host-keys/index.js'
import type { LinkOptions } from './options.js'
import { ProxyCommand } from './proxy-command.js'
import { ssh2 } from '../ssh2-lib.js'
import {
  ASKED_SILENCE_MS,
  holdToCount,
  KEEPALIVE_COUNT_MAX,
  localAddressOf,
  remoteAddressOf,
} from './ssh2-socket.js'
import type { ResolvedHop, ResolvedTarget } from '../types.js'

/** The ssh2 clients of one connection, one per hop (the last is the destination). */
export interface Chain {
  readonly clients: Client[]
  /** ProxyCommand processes the chain runs over; closed (killed, reaped) with it. */
  readonly proxies: ProxyCommand[]
  dead: boolean
  /**
   * The address the destination's TCP connection reached, when this process connected to it itself (no
   * ProxyCommand, no jump host): what a pinned link reconnects to.
   */
  address?: string
  /** This side's address of the first hop's TCP connection, when it is one of ours: gone from the machine = dead. */
  localAddress?: string
  /** This side's port of that connection. */
  localPort?: number
  /** The server's address of that connection. */
  remoteAddress?: string
  /** A login of the chain asked a person (a one-time code): a new connection would ask again. */
  asked: boolean
}

/** What opening a chain needs of its {@link Link}. */
export interface ChainContext {
  readonly target: ResolvedTarget
  /** The link's destination, as the host-key question names it. */
  readonly destination: string
  readonly options: LinkOptions
  /**
   * Where to connect the destination instead of resolving its name again (LinkOptions.pinAddress); used only when
   * this process connects to the destination itself. The host key is still checked against the name.
   */
  pinnedAddress?: string
  /**
   * How long the first hop's TCP connect may take before the attempt is given up, while the link retries after a
   * network failure: a SYN sent into a network that was down is retransmitted only seconds later (1, 3, 7, 15 s),
   * so a fresh attempt a second after the network came back is sooner than the old one's next retransmission.
   */
  tcpConnectWithinMs?: number
  /** One per hop, kept across attempts (which methods worked, what was asked). */
  readonly auth: readonly HopAuth[]
  noteHostKey(note: HostKeyNote): void
  proxyStderr(hop: string, text: string): void
}

/** Connects every hop in turn, each through a channel of the one before. */
export async function openChain(ctx: ChainContext, signal: AbortSignal): Promise<Chain> {
  const chain: Chain = { clients: [], proxies: [], dead: false, asked: false }
  try {
    let previous: { client: Client; hop: ResolvedHop } | undefined
    let asked = false
    for (const [i, hop] of ctx.target.hops.entries()) {
      signal.throwIfAborted()
      let sock: Duplex | undefined
      const auth = ctx.auth[i]
      if (auth === undefined) throw new Error('unreachable: no auth for hop')
      const direct = previous === undefined && hop.proxyCommand === undefined
      // the destination itself over a TCP connection of ours: the only case where we know (and can pin) its address
      const pinnable = direct && ctx.target.hops.length === 1
      const pinned = pinnable ? ctx.pinnedAddress : undefined
      const address = pinned ?? hop.host
      // a first hop without a ProxyCommand: its TCP connect and the server's banner overlap loading the keys and ssh2
      const early = direct ? connectEarly(address, hop.port, ctx.tcpConnectWithinMs) : undefined
      let attempt: AuthAttempt
      try {
        attempt = await auth.begin()
      } catch (err) {
        early?.drop()
        throw err
      }
      // stopped while the login got ready (a key read, a credential command): the early connection goes with it
      if (signal.aborted) early?.drop()
      signal.throwIfAborted()
      sock = early?.take()
      if (previous === undefined && hop.proxyCommand !== undefined) {
        // started only now, right before ssh2 takes its stream: no await between, so no exit goes unseen
        const where = label(hop)
        const proxy = new ProxyCommand(hop.proxyCommand, {
          onStderr: (text) => {
            ctx.options.onProxyStderr?.(text)
            ctx.proxyStderr(where, text)
          },
          ...(ctx.options.env !== undefined ? { env: ctx.options.env } : {}),
          detached: ctx.options.ownProcessGroup === true,
        })
        chain.proxies.push(proxy)
        sock = proxy.stream
      } else if (previous !== undefined) {
        try {
          sock = await openChannel(previous.client, { kind: 'tcp', host: hop.host, port: hop.port }, signal)
        } catch (err) {
          if (signal.aborted) throw err
          const e = forwardError(err, previous.hop, { kind: 'tcp', host: hop.host, port: hop.port }, false)
          if (e.code === 'E_FORWARD_DENIED') throw e
          throw new IppTunnelError(
            'E_CONNECT',
            `Cannot reach ${label(hop)} through jump host ${label(previous.hop)}: ${e.message}`,
            { cause: err },
          )
        }
      }
      const proxy = previous === undefined ? chain.proxies[0] : undefined
      const client = await connectHop(ctx, hop, {
        attempt,
        sock,
        jumped: previous !== undefined,
        address,
        pinned,
        signal,
        proxy,
      })
      chain.clients.push(client)
      if (pinnable) {
        const reached = remoteAddressOf(client)
        if (reached !== undefined) chain.address = reached
      }
      if (direct) {
        const local = localAddressOf(client)
        const remote = remoteAddressOf(client)
        if (local !== undefined && remote !== undefined) {
          chain.localAddress = local.address
          chain.localPort = local.port
          chain.remoteAddress = remote
        }
      }
      asked ||= attempt.prompted
      previous = { client, hop }
    }
    // a login that asked a person makes the whole chain precious: a jump host dropped after 15 s would take it along
    chain.asked = asked
    if (asked) for (const client of chain.clients) liftKeepalive.get(client)?.()
    return chain
  } catch (err) {
    chain.dead = true
    await endChain(chain)
    throw err
  }
}

/**
 * Starts the TCP connection to `host:port` now, for ssh2 to take later. A connection that failed (or that the server
 * closed) before it was taken is dropped and ssh2 connects by itself, so that a refused or unreachable server is
 * reported exactly as before.
 */
function connectEarly(
  host: string,
  port: number,
  withinMs: number | undefined,
): { take(): Socket | undefined; drop(): void } {
  const socket = connectTcp({ host, port })
  if (withinMs !== undefined) {
    const timer = setTimeout(() => {
      socket.destroy(
        Object.assign(new Error(`connect ETIMEDOUT ${host}:${String(port)}`), { code: 'ETIMEDOUT' }),
      )
    }, withinMs)
    socket.once('connect', () => clearTimeout(timer))
    socket.once('close', () => clearTimeout(timer))
  }
  let failed = false
  const onError = (): void => {
    failed = true
  }
  socket.on('error', onError)
  const drop = (): void => {
    socket.off('error', onError)
    socket.on('error', () => undefined)
    socket.destroy()
  }
  return {
    take: () => {
      // still connecting or open both ways: a server that already hung up gets a fresh connection from ssh2
      const usable = socket.readyState === 'opening' || socket.readyState === 'open'
      if (failed || socket.destroyed || !usable) {
        drop()
        return undefined
      }
      socket.off('error', onError)
      return socket
    },
    drop,
  }
}

/** How {@link connectHop} reaches its hop. */
interface HopConnect {
  readonly attempt: AuthAttempt
  /** The stream to run SSH over: an early TCP socket, a ProxyCommand's stdio, a jump host's channel. */
  readonly sock: Duplex | undefined
  /** Reached through a channel of the jump host before it. */
  readonly jumped: boolean
  /** Where ssh2 connects when it opens the TCP connection itself: the hop's host name, or the pinned address. */
  readonly address: string
  /** The pinned address, when the link reconnects to one (said in messages). */
  readonly pinned: string | undefined
  readonly signal: AbortSignal
  readonly proxy: ProxyCommand | undefined
}

function connectHop(ctx: ChainContext, hop: ResolvedHop, how: HopConnect): Promise<Client> {
  const { attempt: auth, sock, signal, proxy, pinned } = how
  const jumped = how.jumped
  const client = new (ssh2().Client)()
  client.once('close', () => closedClients.add(client))
  const where = pinned === undefined ? label(hop) : `${label(hop)} (pinned to ${pinned})`
  return new Promise<Client>((resolve, reject) => {
    let fatal: IppTunnelError | undefined
    let lastError: Ssh2Error | undefined
    let socketError: Ssh2Error | undefined
    let settled = false
    const connectMs = hop.connectTimeoutMs
    const readyMs = ctx.options.readyTimeoutMs ?? Math.max(20_000, connectMs ?? 0)
    let timer = setTimeout(onTimeout, readyMs)
    const connectTimer =
      connectMs === undefined
        ? undefined
        : setTimeout(() => {
            fatal = new IppTunnelError(
              'E_CONNECT',
              `Cannot connect to ${where}: timed out after ${connectMs / 1000} s (ConnectTimeout)`,
            )
            client.destroy()
          }, connectMs)
    client.once('handshake', () => clearTimeout(connectTimer))
    const keepaliveMs = ctx.options.keepaliveIntervalMs ?? hop.keepaliveIntervalMs ?? 5000
    const explicitMax = ctx.options.keepaliveCountMax ?? hop.keepaliveCountMax
    // ssh2 fixes the count at connect, before anyone knows whether the login will ask a person: it gets the
    // allowance of such a login, and a login that asked no one is held to the default below (holdToCount)
    const keepaliveMax =
      explicitMax ??
      (keepaliveMs > 0
        ? Math.max(KEEPALIVE_COUNT_MAX, Math.ceil(ASKED_SILENCE_MS / keepaliveMs))
        : KEEPALIVE_COUNT_MAX)
    let countMax = explicitMax ?? KEEPALIVE_COUNT_MAX
    function onTimeout(): void {
      if (auth.prompting) {
        timer = setTimeout(onTimeout, readyMs)
        return
      }
      fatal = new IppTunnelError(
        'E_CONNECT',
        `Cannot connect to ${where}: no SSH handshake within ${readyMs} ms`,
      )
      client.destroy()
    }
    const onAbort = (): void => {
      client.destroy()
    }
    const finish = (): void => {
      settled = true
      clearTimeout(timer)
      clearTimeout(connectTimer)
      signal.removeEventListener('abort', onAbort)
    }
    signal.addEventListener('abort', onAbort, { once: true })
    // an abort that came before the listener fires no event
    if (signal.aborted) queueMicrotask(onAbort)

    client.on('error', (err: Ssh2Error) => {
      if (err.level === 'client-timeout' && err.message === 'Keepalive timeout') {
        err.message = `no answer to ${countMax} keepalives sent ${keepaliveMs / 1000} s apart (ServerAliveInterval ${keepaliveMs / 1000}, ServerAliveCountMax ${countMax}${explicitMax === undefined ? ', the default' : ''})`
      }
      lastError = err
      // the socket's own error (ECONNREFUSED, …) says more than ssh2's "Connection lost" that may follow it
      if (err.code !== undefined) socketError ??= err
    })
    client.once('ready', () => {
      if (settled) return
      finish()
      if (explicitMax === undefined && keepaliveMs > 0) {
        const stop = holdToCount(client, keepaliveMs, countMax)
        liftKeepalive.set(client, () => {
          stop()
          countMax = keepaliveMax
        })
      }
      resolve(client)
    })
    client.once('close', () => {
      if (settled) return
      finish()
      if (signal.aborted) {
        reject(signal.reason as Error)
        return
      }
      if (fatal !== undefined) {
        reject(fatal)
        return
      }
      if (lastError?.level === 'client-authentication') {
        const failure = auth.failure()
        if (auth.prompted) promptedFailures.add(failure)
        reject(failure)
        return
      }
      const cause = socketError ?? lastError
      const connectError = (): IppTunnelError => {
        const reason = proxy?.exitReason ?? connectFailureReason(cause)
        return new IppTunnelError('E_CONNECT', `Cannot connect to ${where}: ${reason}`, { cause })
      }
      if (proxy === undefined) {
        reject(connectError())
        return
      }
      // the ProxyCommand's exit status and last words say more than "connection lost"; they come a moment later
      const late = setTimeout(() => reject(connectError()), 500)
      void proxy.exited.then(() => {
        clearTimeout(late)
        reject(connectError())
      })
    })

    const files = hop.knownHostsFiles
    const policy = ctx.options.hostKeyCheck ?? hop.hostKeyPolicy ?? 'ask'
    // Only a process with someone at its terminal asks about a host key; the service (a login gate) never does.
    const ask =
      ctx.options.prompt !== undefined && ctx.options.login === undefined
        ? hostKeyAsker(ctx.options.prompt, ctx.destination, where)
        : undefined
    const policyFrom = ctx.options.hostKeyCheck === undefined ? hop.hostKeyPolicyFrom : undefined
    const say = ctx.options.verbose
    say?.(
      `${where}: connecting${jumped ? ' through the jump host before it' : ''}; identity files ${hop.identityFiles.join(', ') || 'none'}${hop.identitiesOnly ? ' (only these)' : ''}; known_hosts ${files.join(', ') || 'none'}, policy ${policy}; certificates ${hop.certificateFiles?.join(', ') ?? "KEY-cert.pub beside each identity file, and the agent's"}; proxy ${hop.proxyCommand !== undefined ? `ProxyCommand ${hop.proxyCommand}` : jumped ? 'the jump host before it' : 'none'}; methods ${(hop.preferredAuthentications ?? ['default']).join(',')}; keepalive ${keepaliveMs / 1000} s x ${countMax}${explicitMax === undefined ? ` (x ${keepaliveMax} after a login that asks a person)` : ''}`,
    )
    if (say !== undefined) client.once('ready', () => say(`${where}: authenticated`))
    client.connect({
      host: how.address,
      port: hop.port,
      username: hop.username,
      ...(sock !== undefined ? { sock } : {}),
      readyTimeout: 0,
      keepaliveInterval: keepaliveMs,
      keepaliveCountMax: keepaliveMax,
      authHandler: auth.authHandler,
      hostVerifier: (key: Buffer, verify: (valid: boolean) => void) => {
        const note = (n: HostKeyNote): void => ctx.noteHostKey(n)
        const from = policyFrom === undefined ? {} : { policyFrom }
        checkHostKey({ files, host: hop.host, port: hop.port, key, policy, note, ask, ...from }).then(
          () => {
            say?.(`${where}: host key ${fingerprintSha256(key)} accepted (policy ${policy})`)
            verify(true)
          },
          (err: unknown) => {
            fatal = isIppTunnelError(err)
              ? err
              : new IppTunnelError(
                  'E_HOSTKEY_UNKNOWN',
                  `Cannot check the host key of ${where}: ${describe(err)}`,
                  {
                    cause: err,
                  },
                )
            verify(false)
          },
        )
      },
    })
    enableCertificates(client, (err) => {
      lastError = err
      client.destroy()
    })
    // Forwards carry small request/reply messages: Nagle's algorithm would hold them back waiting for ACKs.
    client.setNoDelay(true)
  })
}

/** Per connected client held to the default count: lets ssh2's larger count apply once a login asked someone. */
const liftKeepalive = new WeakMap<Client, () => void>()

/** Authentication failures of attempts that asked someone: with a login gate, the link asks again. */
const promptedFailures = new WeakSet<IppTunnelError>()

/** Whether `err` is an authentication failure of an attempt that asked someone (answers refused, a stale code). */
export function askedSomeone(err: IppTunnelError): boolean {
  return promptedFailures.has(err)
}

/** Clients whose connection has closed (ssh2 emits `close` once; `endChain` must not wait for it again). */
const closedClients = new WeakSet<Client>()

/** Ends every client of a chain, innermost first, and waits until all are closed; then its ProxyCommands. */
export async function endChain(chain: Chain): Promise<void> {
  await endClients(chain)
  await Promise.all(chain.proxies.map((p) => p.close()))
}

async function endClients(chain: Chain): Promise<void> {
  await Promise.all(
    [...chain.clients].reverse().map(
      (client) =>
        new Promise<void>((resolve) => {
          if (closedClients.has(client)) {
            resolve()
            return
          }
          const timer = setTimeout(() => client.destroy(), 1000)
          client.once('close', () => {
            clearTimeout(timer)
            resolve()
          })
          client.end()
        }),
    ),
  )
}
