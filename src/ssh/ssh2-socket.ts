import type { Duplex } from 'node:stream'

import type ssh2 from 'ssh2'
import type { ClientChannel } from 'ssh2'

/**
 * What the link does to ssh2's own socket, which ssh2 does not offer through its interface: keepalive accounting
 * after the fact, and backpressure towards channel writers. Both read ssh2's private `_sock`; the link's tests
 * against a real sshd catch an ssh2 that changes it.
 */

type Client = InstanceType<typeof ssh2.Client>

/** Unanswered keepalives before a link counts as dead, as ssh(1)'s ServerAliveCountMax default. */
export const KEEPALIVE_COUNT_MAX = 3
/**
 * Silence a link whose login asked a person (a one-time code) outlives when the config sets no ServerAliveCountMax:
 * a network blip shorter than this does not cost a new code, and noticing a truly dead link later costs little,
 * since coming back asks for a code anyway.
 */
export const ASKED_SILENCE_MS = 300_000

/**
 * Holds a connection to `countMax` unanswered keepalives when ssh2 was given a larger count (which it reads once, at
 * connect): ssh2 still sends one every `intervalMs`, and a tick that heard nothing from the server since the last
 * one counts as missed; past `countMax` the client fails as ssh2's own keepalive timeout does. Returns `stop`.
 */
export function holdToCount(client: Client, intervalMs: number, countMax: number): () => void {
  const sock = (client as unknown as { _sock?: Duplex })._sock
  if (sock === undefined) return () => undefined
  let heard = false
  let missed = 0
  const onData = (): void => {
    heard = true
  }
  sock.on('data', onData)
  const timer = setInterval(() => {
    if (heard) {
      heard = false
      missed = 0
      return
    }
    if (++missed <= countMax) return
    clearInterval(timer)
    const err = Object.assign(new Error('Keepalive timeout'), { level: 'client-timeout' })
    client.emit('error', err)
    client.destroy()
  }, intervalMs)
  const stop = (): void => {
    clearInterval(timer)
    sock.off('data', onData)
  }
  client.once('close', stop)
  return stop
}

/** Bytes queued on the ssh connection's socket above which channel writes wait for it to drain. */
const TRANSPORT_QUEUE_LIMIT = 1024 * 1024

/**
 * ssh2 writes every packet to its socket without heeding the socket's backpressure: a channel's write completes as
 * soon as the server's window (2 MiB) allows, so many fast writers queue window after window of ciphertext in
 * this process. Here a channel's write completes only once the ssh socket's queue is below
 * {@link TRANSPORT_QUEUE_LIMIT}, so writers that wait for their writes (pipe, the forward's pump) are held back
 * until the kernel takes the data.
 */
export function gateOnTransport(client: Client, channel: ClientChannel): void {
  const sock = (client as unknown as { _sock?: Duplex })._sock
  const writer = channel as unknown as {
    _write(chunk: Buffer, encoding: BufferEncoding, cb: (err?: Error | null) => void): void
  }
  if (sock === undefined || typeof writer._write !== 'function') return
  const write = writer._write.bind(channel)
  writer._write = (chunk, encoding, cb) => {
    write(chunk, encoding, (err) => {
      if (err || sock.writableLength <= TRANSPORT_QUEUE_LIMIT || sock.destroyed) cb(err)
      else waitDrain(sock, () => cb())
    })
  }
}

const drainWaiters = new WeakMap<Duplex, (() => void)[]>()

/** One 'drain' listener per socket, however many channels wait on it. */
function waitDrain(sock: Duplex, resume: () => void): void {
  let waiters = drainWaiters.get(sock)
  if (waiters === undefined) {
    const list: (() => void)[] = []
    waiters = list
    drainWaiters.set(sock, list)
    const release = (): void => {
      drainWaiters.delete(sock)
      sock.off('drain', release)
      sock.off('close', release)
      for (const waiter of list) waiter()
    }
    sock.on('drain', release)
    sock.on('close', release)
  }
  waiters.push(resume)
}
