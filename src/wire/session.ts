/**
 * The signed multipart wire format of jupyter_client's `Session`, byte-compatible with it:
 *
 *     [identities…, "<IDS|MSG>", hex HMAC, header, parent_header, metadata, content, buffers…]
 *
 * The HMAC covers header, parent_header, metadata and content in that order, as received; buffers are not
 * signed. Pure: no sockets, no files, no clock beyond `Date` for header dates.
 */
import {
  createHmac,
  createSecretKey,
  getHashes,
  randomBytes,
  timingSafeEqual,
  type KeyObject,
} from 'node:crypto'
import { userInfo } from 'node:os'

import { IppTunnelError, type ErrorCode } from '../errors/index.js'
import {
  PROTOCOL_VERSION,
  type ContentOf,
  type EmptyHeader,
  type Header,
  type JsonObject,
  type Message,
  type MessageType,
} from './messages.js'

/** The frame that separates ZeroMQ routing identities from the message: `<IDS|MSG>`. */
export const DELIMITER: Buffer = Buffer.from('<IDS|MSG>', 'ascii')

/** How many signatures a session remembers to refuse replays; jupyter_client's default. */
export const DEFAULT_DIGEST_HISTORY_SIZE = 2 ** 16

/**
 * An HMAC signing key. Branded so it cannot be passed where a session id goes (both are often uuid-like).
 *
 * @example const key: HmacKey = hmacKey(info.key)
 */
export type HmacKey = Buffer & { readonly __brand: 'HmacKey' }

/**
 * The id of a session, sent in every header. Branded apart from {@link HmacKey}.
 *
 * @example const id: SessionId = new Session({ key: '' }).session
 */
export type SessionId = string & { readonly __brand: 'SessionId' }

/**
 * An HMAC key from a connection file's `key` (a string, UTF-8 encoded as jupyter_client does) or raw bytes.
 *
 * @example const key = hmacKey('a0436f6c-1916-498b-8eb9-e81ab9368e84')
 */
export function hmacKey(key: Buffer | string): HmacKey {
  // Buffer.alloc, not the shared pool Buffer.from uses, so the key can be zeroed without touching other data.
  const copy = Buffer.alloc(typeof key === 'string' ? Buffer.byteLength(key, 'utf8') : key.length)
  if (typeof key === 'string') copy.write(key, 'utf8')
  else key.copy(copy)
  return copy as HmacKey
}

/** The error codes a {@link Session} refuses a message with. */
export type RefusalCode = Extract<
  ErrorCode,
  'E_SIGNATURE_MISSING' | 'E_SIGNATURE_MISMATCH' | 'E_SIGNATURE_REPLAY' | 'E_MESSAGE_FORMAT'
>

/** Options of {@link Session}. */
export interface SessionOptions {
  /** The connection file's `key`; empty means messages are neither signed nor checked. */
  key: Buffer | string
  /** `hmac-<digest>`, default `hmac-sha256`. Python names (`hmac-sha3_256`, `hmac-blake2b`) are accepted too. */
  signatureScheme?: string | undefined
  /** Sent in headers; default: the OS user name, else `username` as jupyter_client does. */
  username?: string | undefined
  /** Session id sent in headers; default: a fresh jupyter_client-style id. */
  session?: string | undefined
  /** Signatures remembered for the replay check; default 2^16; 0 remembers none. */
  digestHistorySize?: number | undefined
}

/** Options of {@link Session.msg}. */
export interface MsgOptions {
  /** The message this one answers: its header becomes `parent_header`. */
  parent?: Message | Header | undefined
  metadata?: JsonObject | undefined
  /** Unsigned binary frames after the content. */
  buffers?: Buffer[] | undefined
  /** ZeroMQ routing frames (to reply through a ROUTER). */
  identities?: Buffer[] | undefined
}

/** Counters of a {@link Session}, e.g. for a status display. */
export interface SessionStats {
  /** Messages serialized. */
  serialized: number
  /** Messages deserialized (and, with a key, verified). */
  deserialized: number
  /** Messages refused, by reason. */
  refused: Record<RefusalCode, number>
}

/** Content type for a `msg_type`: the named ones are typed, any other is a JSON object. */
export type ContentFor<T extends string> = T extends MessageType ? ContentOf[T] : JsonObject

const NO_SIGNATURE = Buffer.alloc(0)
const EMPTY_OBJECT = Buffer.from('{}', 'ascii')
const MIN_PARTS = 5 // signature, header, parent_header, metadata, content

// Python's hashlib names, so a connection file written for jupyter_client works unchanged.
const PYTHON_DIGESTS: Readonly<Record<string, string>> = {
  sha3_224: 'sha3-224',
  sha3_256: 'sha3-256',
  sha3_384: 'sha3-384',
  sha3_512: 'sha3-512',
  blake2b: 'blake2b512',
  blake2s: 'blake2s256',
}

let nodeHashes: ReadonlySet<string> | undefined

/**
 * The Node digest name of a `hmac-<digest>` signature scheme.
 *
 * @throws IppTunnelError `E_SIGNATURE_SCHEME` when it is not `hmac-` plus a digest Node's crypto can HMAC.
 * @example digestOf('hmac-sha256') // 'sha256'
 */
export function digestOf(signatureScheme: string): string {
  const unsupported = (why: string): IppTunnelError =>
    new IppTunnelError(
      'E_SIGNATURE_SCHEME',
      `signature_scheme ${JSON.stringify(signatureScheme)} ${why}; use hmac-<digest>, e.g. hmac-sha256`,
    )
  if (!signatureScheme.startsWith('hmac-')) throw unsupported('does not start with "hmac-"')
  const name = signatureScheme.slice('hmac-'.length)
  const digest = PYTHON_DIGESTS[name] ?? name
  nodeHashes ??= new Set(getHashes())
  if (!nodeHashes.has(digest)) throw unsupported(`names a digest Node's crypto does not have`)
  try {
    createHmac(digest, 'probe').update('probe').digest() // XOFs like shake128 are listed but cannot HMAC
  } catch (err) {
    throw new IppTunnelError(
      'E_SIGNATURE_SCHEME',
      `signature_scheme ${JSON.stringify(signatureScheme)} names a digest that cannot be used for HMAC; use e.g. hmac-sha256`,
      { cause: err },
    )
  }
  return digest
}

/** A fresh id in jupyter_client's `new_id()` form: 16 random bytes as `8hex-24hex`. */
export function newId(): string {
  const hex = randomBytes(16).toString('hex')
  return `${hex.slice(0, 8)}-${hex.slice(8)}`
}

function defaultUsername(): string {
  try {
    return userInfo().username || 'username'
  } catch {
    return 'username'
  }
}

let lastMs = Number.NaN
let lastIso = ''

/** Now as ISO 8601 UTC (`2024-05-01T12:00:00.123Z`), formatted once per millisecond. */
function isoNow(): string {
  const ms = Date.now()
  if (ms !== lastMs) {
    lastMs = ms
    lastIso = new Date(ms).toISOString()
  }
  return lastIso
}

function pack(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), 'utf8')
}

function packObject(value: object): Buffer {
  for (const _ in value) return pack(value)
  return EMPTY_OBJECT // parent_header and metadata are usually {}
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/**
 * Signs, serializes, verifies and deserializes messages like jupyter_client's `Session`.
 *
 * @example
 * const session = new Session({ key: info.key, signatureScheme: info.signature_scheme })
 * const request = session.msg('kernel_info_request', {})
 * await shell.send(session.serialize(request))
 * const [frames] = await shell.receive()
 * const reply = session.deserialize(frames) // throws IppTunnelError E_SIGNATURE_* / E_MESSAGE_FORMAT
 * if (isKernelInfoReply(reply)) console.log(reply.content.protocol_version)
 */
export class Session {
  /** Session id sent in every header. */
  readonly session: SessionId
  readonly username: string
  readonly signatureScheme: string
  /** False when the key is empty: nothing is signed and nothing is checked. */
  readonly signing: boolean
  readonly digestHistorySize: number

  readonly #key: KeyObject | undefined
  readonly #digest: string
  readonly #idPrefix: string
  #count = 0
  readonly #history = new Set<string>()
  readonly #stats: SessionStats = {
    serialized: 0,
    deserialized: 0,
    refused: { E_SIGNATURE_MISSING: 0, E_SIGNATURE_MISMATCH: 0, E_SIGNATURE_REPLAY: 0, E_MESSAGE_FORMAT: 0 },
  }

  /** @throws IppTunnelError `E_SIGNATURE_SCHEME` for a scheme Node cannot HMAC with. */
  constructor(options: SessionOptions) {
    this.signatureScheme = options.signatureScheme ?? 'hmac-sha256'
    this.#digest = digestOf(this.signatureScheme)
    const key = hmacKey(options.key)
    this.signing = key.length > 0
    this.#key = this.signing ? createSecretKey(key) : undefined
    key.fill(0)
    this.username = options.username ?? defaultUsername()
    this.session = (options.session ?? newId()) as SessionId
    // jupyter_client uses `{session}_{pid}_{n}`; a random tag stands in for the pid.
    this.#idPrefix = `${this.session}_${randomBytes(4).toString('hex')}_`
    const size = options.digestHistorySize ?? DEFAULT_DIGEST_HISTORY_SIZE
    if (!Number.isInteger(size) || size < 0) {
      throw new RangeError(`digestHistorySize must be a non-negative integer, got ${size}`)
    }
    this.digestHistorySize = size
  }

  /** Counters since this session was made (a copy). */
  get stats(): SessionStats {
    return { ...this.#stats, refused: { ...this.#stats.refused } }
  }

  /** How many signatures the replay history holds now. */
  get historyLength(): number {
    return this.#history.size
  }

  /**
   * A new header for `msgType`.
   *
   * @example session.header('status').msg_id
   */
  header<T extends string>(msgType: T): Header<T> {
    return {
      msg_id: this.#idPrefix + String(this.#count++),
      msg_type: msgType,
      username: this.username,
      session: this.session,
      date: isoNow(),
      version: PROTOCOL_VERSION,
    }
  }

  /**
   * A new message in nested form, ready for {@link Session.serialize}.
   *
   * @example
   * const reply = session.msg('stream', { name: 'stdout', text: 'hi\n' }, { parent: request })
   */
  msg<T extends string>(
    msgType: T,
    content: ContentFor<T>,
    options: MsgOptions = {},
  ): Message<ContentFor<T>, T> {
    const { parent } = options
    let parentHeader: Header | EmptyHeader = {}
    if (parent !== undefined) parentHeader = { ...('header' in parent ? parent.header : parent) }
    return {
      header: this.header(msgType),
      parent_header: parentHeader,
      metadata: { ...options.metadata },
      content,
      buffers: options.buffers ?? [],
      identities: options.identities ?? [],
    }
  }

  /**
   * The hex HMAC of `parts` (header, parent_header, metadata, content as sent), as ASCII bytes;
   * empty when the key is empty.
   *
   * @example const signature = session.sign([header, parent, metadata, content])
   */
  sign(parts: readonly Uint8Array[]): Buffer {
    if (this.#key === undefined) return NO_SIGNATURE
    const hmac = createHmac(this.#digest, this.#key)
    for (const part of parts) hmac.update(part)
    return Buffer.from(hmac.digest('hex'), 'latin1')
  }

  /**
   * The frames of `msg`, ready for a ZeroMQ socket. `identities` defaults to `msg.identities`.
   *
   * @example await router.send(session.serialize(reply, request.identities))
   */
  serialize(msg: Message, identities: readonly Buffer[] = msg.identities): Buffer[] {
    const header = pack(msg.header)
    const parent = packObject(msg.parent_header)
    const metadata = packObject(msg.metadata)
    const content = pack(msg.content)
    let signature = NO_SIGNATURE
    if (this.#key !== undefined) {
      const hmac = createHmac(this.#digest, this.#key)
      hmac.update(header).update(parent).update(metadata).update(content)
      signature = Buffer.from(hmac.digest('hex'), 'latin1')
    }
    const frames: Buffer[] = []
    for (const identity of identities) frames.push(identity)
    frames.push(DELIMITER, signature, header, parent, metadata, content)
    for (const buffer of msg.buffers) frames.push(buffer)
    this.#stats.serialized++
    return frames
  }

  /**
   * The message in `frames` (as received from a ZeroMQ socket), after checking its signature on the bytes
   * as received. Remembers the signature to refuse a replay. Buffers and identities are the received frames,
   * not copies.
   *
   * @throws IppTunnelError `E_MESSAGE_FORMAT`, `E_SIGNATURE_MISSING`, `E_SIGNATURE_REPLAY` or `E_SIGNATURE_MISMATCH`.
   * @example
   * for await (const frames of socket) handle(session.deserialize(frames))
   */
  deserialize(frames: readonly Buffer[]): Message {
    const at = frames.findIndex((frame) => DELIMITER.equals(frame))
    if (at < 0) {
      throw this.#refuse(
        'E_MESSAGE_FORMAT',
        'message has no "<IDS|MSG>" delimiter frame; the peer does not speak the Jupyter wire protocol',
      )
    }
    const [signature, header, parent, metadata, content] = frames.slice(at + 1, at + 1 + MIN_PARTS)
    if (
      signature === undefined ||
      header === undefined ||
      parent === undefined ||
      metadata === undefined ||
      content === undefined
    ) {
      throw this.#refuse(
        'E_MESSAGE_FORMAT',
        `message has ${frames.length - at - 1} frames after "<IDS|MSG>", needs at least ${MIN_PARTS} (signature, header, parent_header, metadata, content)`,
      )
    }

    if (this.#key !== undefined) {
      if (signature.length === 0) {
        throw this.#refuse(
          'E_SIGNATURE_MISSING',
          'message is unsigned but this session has a key; the sender has no key or another connection file',
        )
      }
      const expected = createHmac(this.#digest, this.#key)
        .update(header)
        .update(parent)
        .update(metadata)
        .update(content)
        .digest('hex')
      if (
        expected.length !== signature.length ||
        !timingSafeEqual(Buffer.from(expected, 'latin1'), signature)
      ) {
        throw this.#refuse(
          'E_SIGNATURE_MISMATCH',
          `message signature does not match (${this.signatureScheme}): the sender uses another key or scheme, or the message was altered`,
        )
      }
      // checked after the HMAC so the history holds only verified signatures, keyed by the hex string we have
      if (this.#history.has(expected)) {
        throw this.#refuse(
          'E_SIGNATURE_REPLAY',
          'message signature was seen before: a replayed or duplicated message',
        )
      }
      this.#remember(expected)
    }

    const h = this.#parse(header, 'header')
    if (typeof h.msg_id !== 'string' || typeof h.msg_type !== 'string') {
      throw this.#refuse('E_MESSAGE_FORMAT', 'message header lacks a string msg_id or msg_type')
    }
    const message: Message = {
      header: h as unknown as Header,
      parent_header: this.#parse(parent, 'parent_header') as Header | EmptyHeader,
      metadata: this.#parse(metadata, 'metadata'),
      content: this.#parse(content, 'content'),
      buffers: frames.slice(at + 1 + MIN_PARTS),
      identities: frames.slice(0, at),
    }
    this.#stats.deserialized++
    return message
  }

  #parse(frame: Buffer, part: string): JsonObject {
    if (frame.length === 2 && frame[0] === 0x7b && frame[1] === 0x7d) return {} // '{}': parent and metadata, often
    let value: unknown
    try {
      value = JSON.parse(frame.toString('utf8'))
    } catch (err) {
      throw this.#refuse('E_MESSAGE_FORMAT', `message ${part} is not valid JSON`, err)
    }
    if (!isObject(value)) throw this.#refuse('E_MESSAGE_FORMAT', `message ${part} is not a JSON object`)
    return value
  }

  #refuse(code: RefusalCode, message: string, cause?: unknown): IppTunnelError {
    this.#stats.refused[code]++
    return new IppTunnelError(code, message, cause === undefined ? undefined : { cause })
  }

  // Like jupyter_client: when the history outgrows its size, cull a tenth of it (or down to size). We drop
  // the oldest tenth where jupyter_client drops a random one; a Set iterates in insertion order.
  #remember(signature: string): void {
    if (this.digestHistorySize === 0) return
    this.#history.add(signature)
    const current = this.#history.size
    if (current <= this.digestHistorySize) return
    const cull = Math.max(Math.floor(current / 10), current - this.digestHistorySize)
    if (cull >= current) {
      this.#history.clear()
      return
    }
    let left = cull
    for (const old of this.#history) {
      if (left-- === 0) break
      this.#history.delete(old)
    }
  }
}
