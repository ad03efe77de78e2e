/**
 * Message types of the Jupyter messaging protocol (5.3) and of IPython Parallel, modelled the way
 * JupyterLab's `services/src/kernel/messages.ts` does: a generic header and message, a literal `msg_type`,
 * one content interface per message and type guards. Types only — nothing here does I/O.
 */

/** The protocol version our headers carry: jupyter_client 7.4 sends `"5.3"`. */
export const PROTOCOL_VERSION = '5.3'

/** The `msg_type`s ipp-tunnel sends or reads. Other types still parse; they are just not named here. */
export type MessageType =
  | 'execute_request'
  | 'execute_reply'
  | 'kernel_info_request'
  | 'kernel_info_reply'
  | 'connection_request'
  | 'connection_reply'
  | 'queue_request'
  | 'queue_reply'
  | 'stream'
  | 'status'
  | 'execute_result'
  | 'error'
  | 'apply_request'
  | 'apply_reply'

/**
 * A message header as jupyter_client writes it.
 *
 * @example
 * const h: Header<'status'> = { msg_id: 'a_1', msg_type: 'status', username: 'me', session: 'a',
 *   date: new Date().toISOString(), version: '5.3' }
 */
export interface Header<T extends string = string> {
  /** Unique id of this message. */
  msg_id: string
  /** What the message is; decides the shape of `content`. */
  msg_type: T
  username: string
  /** Id of the sending session. */
  session: string
  /** ISO 8601 time with a timezone, e.g. `2024-05-01T12:00:00.123Z`. */
  date: string
  /** Protocol version, e.g. `"5.3"`. */
  version: string
}

/** A JSON object: what metadata and most contents are. */
export type JsonObject = Record<string, unknown>

/** The parent header of a message that answers nothing: `{}`. */
export type EmptyHeader = Record<string, never>

/**
 * A message in its nested form, content typed by `C`. `identities` are the ZeroMQ routing frames before
 * `<IDS|MSG>` (empty on DEALER/SUB sockets); `buffers` the unsigned frames after the content.
 *
 * @example
 * function show(m: Message): string { return `${m.header.msg_type} from ${m.header.session}` }
 */
export interface Message<C = unknown, T extends string = string> {
  header: Header<T>
  parent_header: Header | EmptyHeader
  metadata: JsonObject
  content: C
  buffers: Buffer[]
  identities: Buffer[]
}

/** `ok` / `error` / `aborted`: the status of every reply. */
export type ReplyStatus = 'ok' | 'error' | 'aborted'

/** What an `error` message carries, and what a failed reply adds to its status. */
export interface ErrorContent {
  ename: string
  evalue: string
  traceback: string[]
}

export interface ExecuteRequestContent {
  code: string
  silent: boolean
  store_history: boolean
  user_expressions: JsonObject
  allow_stdin: boolean
  stop_on_error: boolean
}

export type ExecuteReplyContent =
  | { status: 'ok'; execution_count: number | null; user_expressions?: JsonObject; payload?: JsonObject[] }
  | ({ status: 'error'; execution_count: number | null } & ErrorContent)
  | { status: 'aborted'; execution_count?: number | null }

export type KernelInfoRequestContent = EmptyHeader

export interface KernelInfoReplyContent {
  status: ReplyStatus
  protocol_version: string
  implementation: string
  implementation_version: string
  language_info: { name: string; version: string; mimetype?: string; file_extension?: string } & JsonObject
  banner: string
  help_links?: { text: string; url: string }[]
}

/** IPython Parallel: a client asks the hub which engines exist. */
export type ConnectionRequestContent = EmptyHeader

/** IPython Parallel: engine id (as a string) → engine uuid. */
export interface ConnectionReplyContent {
  status: ReplyStatus
  engines: Record<string, string>
}

/** IPython Parallel: queue status of some engines (`targets: null` = all). */
export interface QueueRequestContent {
  targets: number[] | null
  verbose: boolean
}

/** Per-engine queue counts (or id lists when `verbose`). */
export interface EngineQueue {
  queue: number | string[]
  completed: number | string[]
  tasks: number | string[]
}

/** IPython Parallel: one entry per engine id, plus `status` and `unassigned`. */
export interface QueueReplyContent {
  status: ReplyStatus
  unassigned: number | string[]
  [engineId: string]: EngineQueue | ReplyStatus | number | string[]
}

export interface StreamContent {
  name: 'stdout' | 'stderr'
  text: string
}

export interface StatusContent {
  execution_state: 'busy' | 'idle' | 'starting' | 'restarting' | 'dead' | 'autorestarting'
}

export interface ExecuteResultContent {
  execution_count: number
  data: JsonObject
  metadata: JsonObject
}

/** IPython Parallel: the function and arguments travel pickled in `buffers`; content is empty. */
export type ApplyRequestContent = EmptyHeader

export type ApplyReplyContent = { status: 'ok' | 'aborted' } | ({ status: 'error' } & ErrorContent)

/** Content type of each named `msg_type`. */
export interface ContentOf {
  execute_request: ExecuteRequestContent
  execute_reply: ExecuteReplyContent
  kernel_info_request: KernelInfoRequestContent
  kernel_info_reply: KernelInfoReplyContent
  connection_request: ConnectionRequestContent
  connection_reply: ConnectionReplyContent
  queue_request: QueueRequestContent
  queue_reply: QueueReplyContent
  stream: StreamContent
  status: StatusContent
  execute_result: ExecuteResultContent
  error: ErrorContent
  apply_request: ApplyRequestContent
  apply_reply: ApplyReplyContent
}

/**
 * The message of one named type, e.g. `TypedMessage<'execute_reply'>`.
 *
 * @example
 * function count(m: TypedMessage<'execute_reply'>): number | null | undefined { return m.content.execution_count }
 */
export type TypedMessage<T extends MessageType> = Message<ContentOf[T], T>

export type ExecuteRequest = TypedMessage<'execute_request'>
export type ExecuteReply = TypedMessage<'execute_reply'>
export type KernelInfoRequest = TypedMessage<'kernel_info_request'>
export type KernelInfoReply = TypedMessage<'kernel_info_reply'>
export type ConnectionRequest = TypedMessage<'connection_request'>
export type ConnectionReply = TypedMessage<'connection_reply'>
export type QueueRequest = TypedMessage<'queue_request'>
export type QueueReply = TypedMessage<'queue_reply'>
export type StreamMessage = TypedMessage<'stream'>
export type StatusMessage = TypedMessage<'status'>
export type ExecuteResultMessage = TypedMessage<'execute_result'>
export type ErrorMessage = TypedMessage<'error'>
export type ApplyRequest = TypedMessage<'apply_request'>
export type ApplyReply = TypedMessage<'apply_reply'>

/**
 * True when `msg` has the given `msg_type`; narrows its content. Like JupyterLab's guards it trusts the
 * sender for the content's shape (the message was signed by a holder of the key).
 *
 * @example
 * if (isMessageType(m, 'stream')) process.stdout.write(m.content.text)
 */
export function isMessageType<T extends MessageType>(msg: Message, msgType: T): msg is TypedMessage<T> {
  return msg.header.msg_type === msgType
}

/** @example if (isExecuteRequest(m)) console.log(m.content.code) */
export const isExecuteRequest = (m: Message): m is ExecuteRequest => isMessageType(m, 'execute_request')
/** @example if (isExecuteReply(m) && m.content.status === 'error') console.log(m.content.ename) */
export const isExecuteReply = (m: Message): m is ExecuteReply => isMessageType(m, 'execute_reply')
/** @example if (isKernelInfoRequest(m)) reply() */
export const isKernelInfoRequest = (m: Message): m is KernelInfoRequest =>
  isMessageType(m, 'kernel_info_request')
/** @example if (isKernelInfoReply(m)) console.log(m.content.protocol_version) */
export const isKernelInfoReply = (m: Message): m is KernelInfoReply => isMessageType(m, 'kernel_info_reply')
/** @example if (isConnectionRequest(m)) reply() */
export const isConnectionRequest = (m: Message): m is ConnectionRequest =>
  isMessageType(m, 'connection_request')
/** @example if (isConnectionReply(m)) console.log(Object.keys(m.content.engines)) */
export const isConnectionReply = (m: Message): m is ConnectionReply => isMessageType(m, 'connection_reply')
/** @example if (isQueueRequest(m)) console.log(m.content.targets) */
export const isQueueRequest = (m: Message): m is QueueRequest => isMessageType(m, 'queue_request')
/** @example if (isQueueReply(m)) console.log(m.content.unassigned) */
export const isQueueReply = (m: Message): m is QueueReply => isMessageType(m, 'queue_reply')
/** @example if (isStream(m)) console.log(m.content.name, m.content.text) */
export const isStream = (m: Message): m is StreamMessage => isMessageType(m, 'stream')
/** @example if (isStatus(m)) console.log(m.content.execution_state) */
export const isStatus = (m: Message): m is StatusMessage => isMessageType(m, 'status')
/** @example if (isExecuteResult(m)) console.log(m.content.data['text/plain']) */
export const isExecuteResult = (m: Message): m is ExecuteResultMessage => isMessageType(m, 'execute_result')
/** @example if (isError(m)) console.log(m.content.ename) */
export const isError = (m: Message): m is ErrorMessage => isMessageType(m, 'error')
/** @example if (isApplyRequest(m)) console.log(m.buffers.length) */
export const isApplyRequest = (m: Message): m is ApplyRequest => isMessageType(m, 'apply_request')
/** @example if (isApplyReply(m)) console.log(m.content.status) */
export const isApplyReply = (m: Message): m is ApplyReply => isMessageType(m, 'apply_reply')
