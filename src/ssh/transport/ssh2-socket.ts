import { randomFillSync } from 'node:crypto'
import type { Duplex } from 'node:stream'

import type ssh2 from 'ssh2'
import type { ClientChannel } from 'ssh2'

import { quickAck } from '../../native/index.js'

/**
 * What the link does to ssh2's own socket, which ssh2 does not offer through its interface: keepalive accounting
 * after the fact, backpressure towards channel writers, and prompt ACKs while channels open. All read ssh2's
 * private `_sock`; the link's tests against a real sshd catch an ssh2 that changes it.
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

/** The address ssh2's TCP socket is connected to; undefined over a stream that is not a TCP socket. */
export function remoteAddressOf(client: Client): string | undefined {
  const sock = (client as unknown as { _sock?: Duplex & { remoteAddress?: string } })._sock
  return typeof sock?.remoteAddress === 'string' ? sock.remoteAddress : undefined
}

/** This side's address and port of ssh2's TCP socket; undefined over a stream that is not a TCP socket. */
export function localAddressOf(client: Client): { address: string; port: number } | undefined {
  const sock = (client as unknown as { _sock?: Duplex & { localAddress?: string; localPort?: number } })._sock
  return typeof sock?.localAddress === 'string' && typeof sock.localPort === 'number'
    ? { address: sock.localAddress, port: sock.localPort }
    : undefined
}

/**
 * Asks the server for an answer (a keepalive request, as ssh2's own) and resolves whether anything at all came
 * from it within `withinMs`: a connection that answers is alive, whatever the answer.
 */
export function answers(client: Client, withinMs: number): Promise<boolean> {
  const sock = (client as unknown as { _sock?: Duplex })._sock
  const protocol = (client as unknown as { _protocol?: { ping(): void } })._protocol
  if (sock === undefined || protocol === undefined || sock.destroyed) return Promise.resolve(false)
  return new Promise((resolve) => {
    const done = (alive: boolean): void => {
      clearTimeout(timer)
      sock.off('data', onData)
      sock.off('close', onClose)
      resolve(alive)
    }
    const onData = (): void => done(true)
    const onClose = (): void => done(false)
    const timer = setTimeout(() => done(false), withinMs)
    sock.on('data', onData)
    sock.once('close', onClose)
    protocol.ping()
  })
}

type TcpSocket = Duplex & { _handle?: { fd?: unknown } | null }

/** Per ssh socket: channel opens not yet answered, and the listener that acknowledges promptly meanwhile. */
const openings = new WeakMap<Duplex, { pending: number; onData: () => void }>()
/** Sockets where TCP_QUICKACK cannot be set (no binding, not Linux, not TCP): not tried again. */
const noQuickAck = new WeakSet<Duplex>()
let quickAcksSet = 0

function setQuickAck(sock: TcpSocket): boolean {
  const fd = sock._handle?.fd
  // read anew each time: a closed socket's descriptor number may already belong to another file
  if (sock.destroyed || typeof fd !== 'number' || fd < 0 || !quickAck(fd)) return false
  quickAcksSet++
  return true
}

/**
 * Acknowledges every segment from the server at once while a channel open is unanswered; returns `done`, to call
 * when the open is answered either way (safe twice).
 *
 * sshd leaves Nagle's algorithm on for a connection that opens no session, so a small packet (a channel
 * confirmation) waits while the one before it is unacknowledged; when that previous one asked nothing of us (the
 * answer to ssh2's host-key proof, sent as the first channels open), Linux delays our ACK by 40 ms, and the
 * confirmation with it. TCP_QUICKACK, set before each read is handled, sends that ACK at once; the kernel clears
 * it again by itself, hence per read. Without the native binding, or over a stream that is not a TCP socket
 * (a jump host's channel, a ProxyCommand), nothing changes.
 */
export function ackPromptlyWhileOpening(client: Client): () => void {
  const sock = (client as unknown as { _sock?: TcpSocket })._sock
  if (sock === undefined || noQuickAck.has(sock)) return () => undefined
  // also now: an ACK already being delayed goes out before the open
  if (!setQuickAck(sock)) {
    if (!sock.destroyed) noQuickAck.add(sock)
    return () => undefined
  }
  let opening = openings.get(sock)
  if (opening === undefined) {
    const onData = (): void => void setQuickAck(sock)
    opening = { pending: 0, onData }
    openings.set(sock, opening)
    // before ssh2's own listener: the ACK leaves before the packet is decrypted and handled
    sock.prependListener('data', onData)
  }
  const state = opening
  state.pending++
  let finished = false
  return () => {
    if (finished) return
    finished = true
    if (--state.pending > 0) return
    sock.off('data', state.onData)
    openings.delete(sock)
  }
}

/** How many times TCP_QUICKACK was set on an ssh socket: a test's proof that channel opens arm it. */
export function quickAcksSetCount(): number {
  return quickAcksSet
}

const turnWaiters = new WeakMap<Duplex, (() => void)[]>()

/** Bytes queued on the ssh connection's socket above which channel writes wait for it to drain. */
export const TRANSPORT_QUEUE_LIMIT = 256 * 1024

/**
 * ssh2 writes every packet to its socket without heeding the socket's backpressure: a channel's write completes as
 * soon as the server's window (2 MiB) allows, so many fast writers queue window after window of ciphertext in
 * this process. Here a channel's write is handed to ssh2 only while the ssh socket's queue is within
 * {@link TRANSPORT_QUEUE_LIMIT}; past it, writes wait in turn (first come, first served) and are let go on
 * 'drain' only as far as the queue stays within the limit. So the ciphertext waiting in this process stays
 * near the limit however many channels write, and writers that wait for their writes (pipe, the forward's pump)
 * are held back until the kernel takes the data.
 */
export function gateOnTransport(client: Client, channel: ClientChannel): void {
  const sock = (client as unknown as { _sock?: Duplex })._sock
  const writer = channel as unknown as {
    _write(chunk: Buffer, encoding: BufferEncoding, cb: (err?: Error | null) => void): void
  }
  if (sock === undefined || typeof writer._write !== 'function') return
  const write = writer._write.bind(channel)
  writer._write = (chunk, encoding, cb) => {
    const free = sock.writableLength <= TRANSPORT_QUEUE_LIMIT && !turnWaiters.has(sock)
    if (free || sock.destroyed) write(chunk, encoding, cb)
    else waitTurn(sock, () => write(chunk, encoding, cb))
  }
}

/**
 * Queues `go` until the socket's queue is within {@link TRANSPORT_QUEUE_LIMIT}; one 'drain' listener per socket,
 * however many channels wait on it. On 'drain' the waiters go in order while the queue stays within the limit
 * (each one's write grows it); the rest wait for the next 'drain', which those writes make sure comes. A closed
 * socket lets every waiter go (ssh2 drops their writes).
 */
function waitTurn(sock: Duplex, go: () => void): void {
  let waiters = turnWaiters.get(sock)
  if (waiters === undefined) {
    const list: (() => void)[] = []
    waiters = list
    turnWaiters.set(sock, list)
    const release = (): void => {
      while (list.length > 0 && (sock.writableLength <= TRANSPORT_QUEUE_LIMIT || sock.destroyed)) {
        list.shift()?.()
      }
      if (list.length > 0 && !sock.destroyed) return
      turnWaiters.delete(sock)
      sock.off('drain', release)
      sock.off('close', release)
    }
    sock.on('drain', release)
    sock.on('close', release)
  }
  waiters.push(go)
}

/**
 * Random bytes for packet padding, drawn from a CSPRNG a block at a time. ssh2 calls `crypto.randomFillSync` for
 * the 4–19 bytes of padding of every packet; each such call costs about 15 times the AES-GCM encryption of a
 * small packet (4.7 µs against 0.3 µs here), which made it the largest single cost of a small forwarded message.
 * Every byte still comes from the CSPRNG and is used once, as OpenSSH's arc4random hands out its keystream.
 */
const PADDING_POOL_BYTES = 4096
const paddingPool = Buffer.allocUnsafe(PADDING_POOL_BYTES)
let paddingUsed = PADDING_POOL_BYTES
let paddingRefills = 0

function fillPadding(packet: Buffer, offset: number, length: number): void {
  if (paddingUsed + length > PADDING_POOL_BYTES) {
    randomFillSync(paddingPool)
    paddingUsed = 0
    paddingRefills++
  }
  paddingPool.copy(packet, offset, paddingUsed, paddingUsed + length)
  paddingUsed += length
}

/** How many times the padding pool has been refilled: a test's proof that ssh2's packets draw from it. */
export function paddingPoolRefills(): number {
  return paddingRefills
}

interface OutboundCipher {
  allocPacket: (this: OutboundCipher, payloadLength: number) => Buffer
}

/** Per cipher instance: padding length and trailing bytes (MAC or tag) for each payload length modulo 16. */
const packetShapes = new WeakMap<OutboundCipher, ({ pad: number; tail: number } | undefined)[]>()
const pooledCiphers = new WeakSet<object>()

/**
 * Makes ssh2's outbound packets take their padding from {@link fillPadding}. ssh2's `allocPacket` (one per cipher
 * class, on the prototype of `client._protocol._cipher`) lays out `uint32 length, byte padLength, payload,
 * padding[, MAC]` and fills the padding with `randomFillSync`. Every supported cipher has a block of 8 or 16 bytes,
 * so the padding and the trailing bytes depend only on the payload length modulo 16 (and the instance's MAC):
 * the first packet of each such length is ssh2's own, and its shape is what later packets copy, with pooled
 * padding. A cipher whose packet is not shaped so (an ssh2 that changed) is left alone.
 */
export function poolPadding(client: Client): boolean {
  const cipher = (client as unknown as { _protocol?: { _cipher?: OutboundCipher } })._protocol?._cipher
  const proto = cipher === undefined ? undefined : (Object.getPrototypeOf(cipher) as OutboundCipher | null)
  if (proto === undefined || proto === null || typeof proto.allocPacket !== 'function') return false
  if (pooledCiphers.has(proto)) return true
  const original = proto.allocPacket
  proto.allocPacket = function (this: OutboundCipher, payloadLength: number): Buffer {
    let shapes = packetShapes.get(this)
    if (shapes === undefined) {
      shapes = []
      packetShapes.set(this, shapes)
    }
    const shape = shapes[payloadLength & 15]
    if (shape === undefined) {
      const packet = original.call(this, payloadLength)
      const pad = packet[4] ?? 0
      const tail = packet.length - 5 - payloadLength - pad
      if (packet.readUInt32BE(0) === 1 + payloadLength + pad && pad >= 4 && tail >= 0) {
        shapes[payloadLength & 15] = { pad, tail }
      }
      return packet
    }
    const length = 5 + payloadLength + shape.pad
    const packet = Buffer.allocUnsafe(length + shape.tail)
    packet.writeUInt32BE(length - 4, 0)
    packet[4] = shape.pad
    fillPadding(packet, 5 + payloadLength, shape.pad)
    return packet
  }
  pooledCiphers.add(proto)
  return true
}
