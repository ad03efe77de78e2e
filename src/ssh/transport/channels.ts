import { Duplex } from 'node:stream'
import type { ClientChannel, SFTPWrapper } from 'ssh2'
import type ssh2 from 'ssh2'

import { IppTunnelError, isIppTunnelError } from '../../errors/index.js'
import { ackPromptlyWhileOpening } from './ssh2-socket.js'
import { hopLabel } from '../hop-label.js'
import type { ResolvedHop } from '../types.js'

export type Client = InstanceType<typeof ssh2.Client>

/** ssh2 errors carry a `level` (and socket errors a `code`); channel-open failures a numeric `reason`. */
export interface Ssh2Error extends Error {
  level?: string
  code?: string
  reason?: number | string
}

export const openFailure = { prohibited: 1, connectFailed: 2 }

/** What a forwarded channel reaches on the server's side: `direct-tcpip` or `direct-streamlocal@openssh.com`. */
export type ChannelTarget =
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number }
  | { readonly kind: 'unix'; readonly path: string }

export function targetText(target: ChannelTarget): string {
  return target.kind === 'unix' ? `unix socket ${target.path}` : `${target.host}:${target.port}`
}

/** `user@host:port`, with the alias the user wrote when it differs (see {@link hopLabel}). */
export const label = hopLabel

/** An ssh2 error (or anything thrown) in one line, with the socket's code when it has one. */
export function describe(err: unknown): string {
  if (err === undefined) return 'connection closed'
  if (err instanceof Error) {
    const e = err as Ssh2Error
    return e.code !== undefined && !e.message.includes(e.code) ? `${e.code}: ${e.message}` : e.message
  }
  return typeof err === 'string' ? err : JSON.stringify(err)
}

/** Opens a channel; on abort it rejects at once, and a channel that opens after that is closed. */
export function openChannel(
  client: Client,
  target: ChannelTarget,
  signal?: AbortSignal,
): Promise<ClientChannel> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(signal.reason as Error)
      return
    }
    let settled = false
    const onAbort = (): void => {
      settled = true
      reject(signal?.reason as Error)
    }
    signal?.addEventListener('abort', onAbort, { once: true })
    const answered = ackPromptlyWhileOpening(client)
    try {
      const done = (err: Error | undefined, stream: ClientChannel): void => {
        answered()
        signal?.removeEventListener('abort', onAbort)
        if (settled) {
          if (!err) stream.destroy()
          return
        }
        settled = true
        if (err) reject(err)
        else resolve(stream)
      }
      if (target.kind === 'unix') client.openssh_forwardOutStreamLocal(target.path, done)
      else client.forwardOut('127.0.0.1', 0, target.host, target.port, done)
    } catch (err) {
      answered()
      signal?.removeEventListener('abort', onAbort)
      settled = true
      reject(err instanceof Error ? err : new Error(String(err)))
    }
  })
}

/**
 * The error for a channel that did not open: refused by policy (`E_FORWARD_DENIED`), nothing listening
 * (`E_FORWARD`), or the link going down meanwhile (`E_LINK_DOWN`, when `linkUp` is false). For a unix socket,
 * `socketThere` (from {@link remoteSocketExists}) tells a forbidding server from an absent socket.
 */
export function forwardError(
  err: unknown,
  hop: ResolvedHop,
  target: ChannelTarget,
  linkUp: boolean,
  socketThere?: boolean,
): IppTunnelError {
  if (isIppTunnelError(err)) return err
  const where = targetText(target)
  const reason = (err as Ssh2Error).reason
  if (target.kind === 'unix' && reason === openFailure.connectFailed && socketThere !== false) {
    const seen = socketThere === true ? 'a socket is there, but ' : ''
    return new IppTunnelError(
      socketThere === true ? 'E_FORWARD_DENIED' : 'E_FORWARD',
      `${label(hop)} would not connect to ${where}: ${seen}the server does not allow unix-socket forwarding (AllowStreamLocalForwarding / DisableForwarding in its sshd_config)${socketThere === true ? ', or nothing listens on that socket any more' : ', or nothing listens there'}`,
      { cause: err },
    )
  }
  if (reason === openFailure.prohibited) {
    const rule =
      target.kind === 'unix'
        ? 'unix-socket forwarding (AllowStreamLocalForwarding / DisableForwarding in its sshd_config)'
        : 'TCP forwarding (AllowTcpForwarding / PermitOpen in its sshd_config)'
    return new IppTunnelError(
      'E_FORWARD_DENIED',
      `${label(hop)} refused to forward to ${where} (administratively prohibited): the server does not allow ${rule}`,
      { cause: err },
    )
  }
  if (reason === openFailure.connectFailed) {
    return new IppTunnelError(
      'E_FORWARD',
      `Nothing accepts connections at ${where} as seen from ${label(hop)} (connect failed)`,
      { cause: err },
    )
  }
  if (!linkUp) {
    return new IppTunnelError('E_LINK_DOWN', `SSH link to ${label(hop)} went down while opening ${where}`, {
      cause: err,
    })
  }
  return new IppTunnelError('E_FORWARD', `Cannot forward to ${where} via ${label(hop)}: ${describe(err)}`, {
    cause: err,
  })
}

/**
 * Whether a unix socket exists at `path` on the server, asked over SFTP (lstat); undefined when SFTP is not
 * available or does not answer within 5 s.
 */
export function remoteSocketExists(client: Client, path: string): Promise<boolean | undefined> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(undefined), 5000)
    const done = (answer: boolean | undefined): void => {
      clearTimeout(timer)
      resolve(answer)
    }
    try {
      client.sftp((err, sftp) => {
        if (err) {
          done(undefined)
          return
        }
        sftp.lstat(path, (statErr, stats) => {
          sftp.end()
          done(statErr ? false : stats.isSocket())
        })
      })
    } catch {
      done(undefined)
    }
  })
}

/**
 * Counts the channel in `open` until it is closed on both sides. ssh2's `Channel.destroy()` only sends EOF and
 * CHANNEL_CLOSE: the stream itself is never destroyed, and ssh2 emits `close` only after the readable side
 * has emitted `end` — which a channel that was unpiped and paused (its local client went away first) never
 * does. Such channels were kept, with their sockets, until the link dropped. Here `destroy()` also destroys
 * the stream as a Duplex, so ssh2 emits `close` as soon as the server confirms (or at once when it already
 * has); `end()` stays a half-close (EOF) that keeps reading.
 */
export function trackChannel(stream: ClientChannel, open: Set<ClientChannel>): void {
  open.add(stream)
  let closeEmitted = false
  stream.once('close', () => {
    closeEmitted = true
    open.delete(stream)
  })
  const channel = stream as ClientChannel & { incoming: { state: string } }
  stream.destroy = (error?: Error): ClientChannel => {
    if (stream.destroyed) return stream
    channel.close()
    Duplex.prototype.destroy.call(stream, error)
    // the server's CHANNEL_CLOSE came already: ssh2 waits for an `end` that a destroyed stream never emits
    if (channel.incoming.state === 'closed' && !closeEmitted) stream.emit('close')
    return stream
  }
}

/**
 * Opens an SFTP session on `client`, the last hop of `chain`; `gone()` is called when the session closes, or when it
 * could not be opened. Rejects `E_REMOTE` when the server refuses (the channel or the subsystem), `E_LINK_DOWN` when
 * the connection went down under the request.
 */
export function openSftp(
  client: Client,
  chain: { readonly dead: boolean },
  destination: string,
  gone: () => void,
): Promise<SFTPWrapper> {
  return new Promise<SFTPWrapper>((resolve, reject) => {
    try {
      client.sftp((err, sftp) => {
        if (err) reject(err)
        else resolve(sftp)
      })
    } catch (err) {
      reject(err instanceof Error ? err : new Error(String(err)))
    }
  }).then(
    (sftp) => {
      sftp.once('close', gone)
      return sftp
    },
    (err: unknown) => {
      gone()
      if (isIppTunnelError(err)) throw err
      // the server said no (to the channel or the subsystem); anything else is a connection gone under the request
      const refused =
        !chain.dead &&
        ((err as Ssh2Error).reason !== undefined || /^Unable to start subsystem/.test(describe(err)))
      if (!refused) {
        throw new IppTunnelError(
          'E_LINK_DOWN',
          `SSH link to ${destination} went down while an SFTP session was being opened (${describe(err)})`,
          { cause: err },
        )
      }
      throw new IppTunnelError(
        'E_REMOTE',
        `${destination} refused an SFTP session (Subsystem sftp in its sshd_config): ${describe(err)}`,
        { cause: err },
      )
    },
  )
}
