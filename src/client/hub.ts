/**
 * The controller's hub as an engine file reaches it: ipcontroller binds one query socket for clients and
 * engines alike (the `registration` port of both files), so `connection_request` and
 * `unregistration_request` work through an engine file's tunnel, with no client file.
 */
import * as zmq from 'zeromq'

import { endpoints, type IppClientInfo, type IppEngineInfo } from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'
import { endpointUrl } from '../sockets/index.js'
import { Session, type JsonObject, type Message } from '../wire/index.js'
import type { Engines } from './ipp.js'

interface Pending {
  resolve(reply: Message): void
  reject(err: Error): void
}

const DEFAULT_TIMEOUT_MS = 5000

/**
 * One Dealer on the hub's query socket, signed with the file's key (Curve with a fresh key pair when the
 * controller uses Curve).
 *
 * @example
 * await using hub = HubQuery.open(tunnel.loopback) // the loopback engine file
 * const { ids } = await hub.engines()
 * await hub.unregister(3)
 */
export class HubQuery {
  readonly #socket: zmq.Dealer
  readonly #session: Session
  readonly #where: string
  readonly #pending = new Map<string, Pending>()
  #sending: Promise<void> = Promise.resolve()
  #closed = false

  private constructor(info: IppClientInfo | IppEngineInfo, where: string) {
    this.#where = where
    this.#session = new Session({ key: info.key, signatureScheme: info.signature_scheme })
    const registration = endpoints(info).find((e) => e.channel === 'registration')
    if (registration === undefined) {
      throw new IppTunnelError('E_CONNFILE_FIELD', `${where}: no "registration" port in the connection file`)
    }
    const serverKey = info.curve_serverkey
    const curve =
      serverKey === null || serverKey === ''
        ? {}
        : (() => {
            const { publicKey, secretKey } = zmq.curveKeyPair()
            return { curveServerKey: serverKey, curvePublicKey: publicKey, curveSecretKey: secretKey }
          })()
    this.#socket = new zmq.Dealer({
      linger: 0,
      sendTimeout: DEFAULT_TIMEOUT_MS,
      routingId: this.#session.session,
      ...curve,
    })
    this.#socket.connect(endpointUrl(registration))
    void this.#receive()
  }

  /**
   * Connects to the hub named by a (loopback) engine or client file. Connecting does not wait: the first
   * request does.
   *
   * @example const hub = HubQuery.open(tunnel.loopback as IppEngineInfo, 'ipcontroller-engine.json')
   */
  static open(info: IppClientInfo | IppEngineInfo, where = 'the controller'): HubQuery {
    return new HubQuery(info, where)
  }

  get closed(): boolean {
    return this.#closed
  }

  async #receive(): Promise<void> {
    try {
      for await (const frames of this.#socket) {
        let reply: Message
        try {
          reply = this.#session.deserialize(frames)
        } catch {
          continue // not signed with our key: not the hub's answer
        }
        const parent = (reply.parent_header as { msg_id?: unknown }).msg_id
        if (typeof parent !== 'string') continue
        const pending = this.#pending.get(parent)
        this.#pending.delete(parent)
        pending?.resolve(reply)
      }
    } catch {
      // the socket was closed
    }
  }

  #send(msg: Message): Promise<void> {
    const frames = this.#session.serialize(msg)
    const sent = this.#sending.then(() => this.#socket.send(frames))
    this.#sending = sent.catch(() => undefined)
    return sent
  }

  async #request(msgType: string, content: JsonObject, timeoutMs: number): Promise<Message> {
    if (this.#closed) throw new IppTunnelError('E_CLOSED', `${this.#where}: the hub query was closed`)
    const msg = this.#session.msg(msgType, content)
    const id = msg.header.msg_id
    let timer: NodeJS.Timeout | undefined
    const reply = new Promise<Message>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject })
      timer = setTimeout(() => {
        this.#pending.delete(id)
        reject(
          new IppTunnelError(
            'E_TIMEOUT',
            `${this.#where}: no reply from the controller's hub to ${msgType} within ${String(timeoutMs)} ms: the key or the controller may not match this file`,
          ),
        )
      }, timeoutMs)
    })
    try {
      await this.#send(msg)
      return await reply
    } finally {
      clearTimeout(timer)
    }
  }

  /**
   * The engines the hub has registered now (`connection_request`): an engine is listed once its first
   * heartbeat reached the controller, and unlisted as soon as it unregisters.
   *
   * @throws IppTunnelError `E_TIMEOUT` when the hub does not answer, `E_REMOTE` when it refuses.
   * @example const { ids, identities } = await hub.engines()
   */
  async engines(options: { timeoutMs?: number } = {}): Promise<Engines> {
    const reply = await this.#request('connection_request', {}, options.timeoutMs ?? DEFAULT_TIMEOUT_MS)
    const content = reply.content as Record<string, unknown>
    if (content.status !== 'ok') {
      throw new IppTunnelError('E_REMOTE', `${this.#where}: the controller refused connection_request`)
    }
    const identities: Record<number, string> = {}
    for (const [id, uuid] of Object.entries((content.engines ?? {}) as Record<string, unknown>)) {
      identities[Number(id)] = String(uuid)
    }
    const ids = Object.keys(identities)
      .map(Number)
      .sort((a, b) => a - b)
    return { ids, identities }
  }

  /**
   * Asks the hub to drop engine `id` now, as an engine's nanny does when its engine exits (the hub sends no
   * reply; a later {@link engines} on this socket sees the result, since the hub handles them in order).
   *
   * @example await hub.unregister(0)
   */
  async unregister(id: number): Promise<void> {
    if (this.#closed) throw new IppTunnelError('E_CLOSED', `${this.#where}: the hub query was closed`)
    await this.#send(this.#session.msg('unregistration_request', { id }))
  }

  /** Closes the socket; pending requests fail with `E_CLOSED`. Safe to call twice. */
  close(): Promise<void> {
    if (this.#closed) return Promise.resolve()
    this.#closed = true
    const closed = new IppTunnelError('E_CLOSED', `${this.#where}: the hub query was closed`)
    for (const pending of this.#pending.values()) pending.reject(closed)
    this.#pending.clear()
    this.#socket.close()
    return Promise.resolve()
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}
