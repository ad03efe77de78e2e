import { getHashes } from 'node:crypto'
import { isIP } from 'node:net'

import { IppTunnelError } from '../errors/index.js'
import { destinationProblem } from '../ssh/index.js'
import {
  FIELD_ORDER,
  type ConnectionInfo,
  type ConnectionKind,
  type IppClientInfo,
  type IppEngineInfo,
  type KernelInfo,
} from './types.js'

const CLIENT_NAME = /^ipcontroller(?:-.+)?-client\.json$/
const ENGINE_NAME = /^ipcontroller(?:-.+)?-engine\.json$/
const KERNEL_NAME = /^kernel-.+\.json$/

/** The kind a file name announces, or `undefined` when the name says nothing. Directories are ignored. */
export function kindFromFileName(name: string): ConnectionKind | undefined {
  const base = name.slice(name.lastIndexOf('/') + 1)
  if (CLIENT_NAME.test(base)) return 'ipp-client'
  if (ENGINE_NAME.test(base)) return 'ipp-engine'
  if (KERNEL_NAME.test(base)) return 'kernel'
  return undefined
}

type Json = Record<string, unknown>

/** Fields whose values are never echoed in error messages. */
const SECRET_FIELDS: ReadonlySet<string> = new Set([
  'key',
  'curve_secretkey',
  'curve_publickey',
  'curve_serverkey',
])

const Z85_ALPHABET = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#'

/** True when `text` is a Z85-encoded 32-byte Curve key (40 characters, each 5-character group < 2^32). */
export function isZ85Key(text: string): boolean {
  if (text.length !== 40) return false
  for (let group = 0; group < 40; group += 5) {
    let value = 0
    for (let i = group; i < group + 5; i++) {
      const digit = Z85_ALPHABET.indexOf(text.charAt(i))
      if (digit < 0) return false
      value = value * 85 + digit
    }
    if (value > 0xffffffff) return false
  }
  return true
}

function describe(value: unknown): string {
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'a list'
  switch (typeof value) {
    case 'string': {
      const shown = JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value)
      return shown
    }
    case 'number':
    case 'boolean':
      return String(value)
    case 'object':
      return 'an object'
    default:
      return typeof value
  }
}

function describeSecret(value: unknown): string {
  if (typeof value === 'string') return `a string of ${value.length} characters`
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'a list'
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`
}

/**
 * The most ports a list field (`broadcast`) may hold: ipyparallel uses one per scheduler leaf, and every port costs
 * a listener and file descriptors, so a file cannot starve the other tunnels of a process.
 */
export const MAX_LIST_PORTS = 256

/** Reads fields of one object, throwing E_CONNFILE_FIELD errors that name the file and the field. */
class Fields {
  readonly #file: string
  readonly #json: Json

  constructor(file: string, json: Json) {
    this.#file = file
    this.#json = json
  }

  fail(field: string, must: string, value: unknown): never {
    const got = SECRET_FIELDS.has(field) ? describeSecret(value) : describe(value)
    throw new IppTunnelError(
      'E_CONNFILE_FIELD',
      `${this.#file}: field "${field}" must be ${must}, got ${got}`,
    )
  }

  has(field: string): boolean {
    return Object.hasOwn(this.#json, field)
  }

  raw(field: string): unknown {
    if (!this.has(field)) {
      throw new IppTunnelError('E_CONNFILE_FIELD', `${this.#file}: missing field "${field}"`)
    }
    return this.#json[field]
  }

  port(field: string, value: unknown = this.raw(field)): number {
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 65535) {
      this.fail(field, 'a port 1–65535', value)
    }
    return value
  }

  ports(field: string): number[] {
    const value = this.raw(field)
    if (!Array.isArray(value) || value.length === 0) {
      this.fail(field, 'a non-empty list of ports 1–65535 (one per broadcast scheduler)', value)
    }
    if (value.length > MAX_LIST_PORTS) {
      throw new IppTunnelError(
        'E_CONNFILE_FIELD',
        `${this.#file}: field "${field}" lists ${value.length} ports, more than the ${MAX_LIST_PORTS} ipp-tunnel forwards (one per broadcast scheduler); is the file damaged?`,
      )
    }
    return value.map((item: unknown, i) => this.port(`${field}[${i}]`, item))
  }

  string(field: string, options: { nonEmpty?: boolean; fallback?: string } = {}): string {
    if (options.fallback !== undefined && (!this.has(field) || this.#json[field] === null))
      return options.fallback
    const value = this.raw(field)
    if (typeof value !== 'string') this.fail(field, 'a string', value)
    if (options.nonEmpty === true && value === '') this.fail(field, 'a non-empty string', value)
    return value
  }

  /**
   * An ssh destination `[user@]host[:port]` with a plain user and host (see `parseDestination`), or `''`: what a file
   * says here reaches a ProxyCommand's shell and ssh's command line.
   */
  destination(field: string): string {
    const value = this.string(field, { fallback: '' })
    const problem = value === '' ? undefined : destinationProblem(value)
    if (problem !== undefined) {
      throw new IppTunnelError(
        'E_CONNFILE_FIELD',
        `${this.#file}: field "${field}" must be an ssh destination [user@]host[:port], got ${describe(value)}: ${problem}`,
      )
    }
    return value
  }

  scheme(field: string): string {
    const value = this.raw(field)
    const digest = typeof value === 'string' && value.startsWith('hmac-') ? value.slice(5) : undefined
    if (digest === undefined || !getHashes().includes(digest)) {
      this.fail(field, 'hmac-<digest> with a digest this Node.js knows (e.g. hmac-sha256)', value)
    }
    return value as string
  }

  z85(field: string, value: unknown): string {
    if (typeof value !== 'string' || !isZ85Key(value)) {
      this.fail(field, 'a Curve key in Z85 (40 characters)', value)
    }
    return value
  }

  /**
   * `tcp://<host>` where host is `*`, an IPv4 address, a host name or a bracketed IPv6 address; or `ipc://<path>`
   * with an absolute path, the prefix of the controller's unix sockets (`<path>:<port>`).
   */
  interface(field: string): string {
    const value = this.raw(field)
    if (typeof value === 'string' && value.startsWith('ipc://')) {
      const path = value.slice(6)
      if (!isIpcPath(path)) this.fail(field, IPC_PATH_RULE, value)
      return value
    }
    const host = typeof value === 'string' && value.startsWith('tcp://') ? value.slice(6) : undefined
    const ok =
      host !== undefined &&
      host !== '' &&
      !/[\s/]/.test(host) &&
      (!host.includes(':') || /^\[[0-9a-fA-F:.]+\]$/.test(host))
    if (!ok)
      this.fail(field, 'tcp://<address> (e.g. tcp://127.0.0.1 or tcp://*) or ipc://<absolute path>', value)
    return value as string
  }

  extra(kind: ConnectionKind): Record<string, unknown> {
    const known = new Set(FIELD_ORDER[kind])
    return Object.fromEntries(Object.entries(this.#json).filter(([name]) => !known.has(name)))
  }
}

const IPP_MARKERS = [
  'registration',
  'mux',
  'task',
  'task_scheme',
  'notification',
  'hb_ping',
  'hb_pong',
  'interface',
]

function kindFromContent(json: Json): ConnectionKind | undefined {
  if (Object.hasOwn(json, 'shell_port')) return 'kernel'
  if (Object.hasOwn(json, 'hb_ping') || Object.hasOwn(json, 'hb_pong')) return 'ipp-engine'
  if (IPP_MARKERS.some((name) => Object.hasOwn(json, name))) return 'ipp-client'
  return undefined
}

const family = (kind: ConnectionKind): string => (kind === 'kernel' ? 'Jupyter kernel' : 'ipyparallel')

function parseIppCommon(f: Fields) {
  const curve = f.has('curve_serverkey') ? f.raw('curve_serverkey') : null
  return {
    ssh: f.destination('ssh'),
    interface: f.interface('interface'),
    location: f.string('location', { fallback: '' }),
    registration: f.port('registration'),
    control: f.port('control'),
    mux: f.port('mux'),
    task: f.port('task'),
    iopub: f.port('iopub'),
    key: f.string('key'),
    signature_scheme: f.scheme('signature_scheme'),
    pack: f.string('pack', { nonEmpty: true }),
    unpack: f.string('unpack', { nonEmpty: true }),
    curve_serverkey: curve === null ? null : f.z85('curve_serverkey', curve),
  }
}

function parseClient(f: Fields): IppClientInfo {
  const common = parseIppCommon(f)
  return {
    kind: 'ipp-client',
    ...common,
    task_scheme: f.string('task_scheme', { nonEmpty: true }),
    notification: f.port('notification'),
    broadcast: f.port('broadcast'),
    extra: f.extra('ipp-client'),
  }
}

function parseEngine(f: Fields): IppEngineInfo {
  const common = parseIppCommon(f)
  return {
    kind: 'ipp-engine',
    ...common,
    hb_ping: f.port('hb_ping'),
    hb_pong: f.port('hb_pong'),
    broadcast: f.ports('broadcast'),
    extra: f.extra('ipp-engine'),
  }
}

const IPC_PATH_RULE =
  'an absolute unix socket path prefix (a relative one depends on the working directory of the peer)'

/** An ipc path prefix we can forward: absolute, no NUL, no whitespace or control characters. */
function isIpcPath(path: string): boolean {
  for (let i = 0; i < path.length; i++) if (path.charCodeAt(i) < 32) return false
  return path.startsWith('/') && path.length > 1 && !/\s/.test(path)
}

/** A DNS name: dot-separated labels of letters, digits and inner hyphens, 253 characters at most. */
const HOSTNAME =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/

/** The kernel's `ip`: an IPv4/IPv6 address, `*`, or a host name; anything else is refused before it reaches a URL. */
function kernelIp(f: Fields): string {
  const ip = f.string('ip', { nonEmpty: true })
  if (ip === '*' || isIP(ip) !== 0 || HOSTNAME.test(ip)) return ip
  return f.fail('ip', 'an IP address or a host name', ip)
}

function parseKernel(f: Fields): KernelInfo {
  const transport = f.raw('transport')
  if (transport !== 'tcp' && transport !== 'ipc') f.fail('transport', '"tcp" or "ipc"', transport)
  const ip = transport === 'tcp' ? kernelIp(f) : f.string('ip', { nonEmpty: true })
  if (transport === 'ipc' && !isIpcPath(ip)) f.fail('ip', `${IPC_PATH_RULE} with transport "ipc"`, ip)
  const info: KernelInfo = {
    kind: 'kernel',
    shell_port: f.port('shell_port'),
    iopub_port: f.port('iopub_port'),
    stdin_port: f.port('stdin_port'),
    control_port: f.port('control_port'),
    hb_port: f.port('hb_port'),
    ip,
    transport,
    key: f.string('key'),
    signature_scheme: f.scheme('signature_scheme'),
    kernel_name: f.string('kernel_name', { fallback: '' }),
    extra: f.extra('kernel'),
  }
  // an "ssh" a launcher added names the server as in an ipyparallel file (see destinationOf)
  if (typeof info.extra['ssh'] === 'string') f.destination('ssh')
  const pub = f.has('curve_publickey') ? f.raw('curve_publickey') : null
  const sec = f.has('curve_secretkey') ? f.raw('curve_secretkey') : null
  if (pub === null && sec === null) return info
  if (pub === null || sec === null) {
    const missing = pub === null ? 'curve_publickey' : 'curve_secretkey'
    f.fail(missing, 'set together with the other Curve key', null)
  }
  return {
    ...info,
    curve_publickey: f.z85('curve_publickey', pub),
    curve_secretkey: f.z85('curve_secretkey', sec),
  }
}

/**
 * Parses the text of a connection file. Pure: no I/O. The kind comes from the file name when it
 * announces one (`ipcontroller[-id]-client.json`, `ipcontroller[-id]-engine.json`, `kernel-*.json`),
 * else from the content.
 *
 * @throws IppTunnelError `E_CONNFILE_JSON` (not JSON), `E_CONNFILE_KIND` (JSON but not a connection
 *   file), `E_CONNFILE_FIELD` (a field is missing or wrong; the message names file and field).
 */
export function parseConnectionFile(text: string, fileName: string): ConnectionInfo {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    // V8's message quotes the text around the error, which may hold the key: report only where.
    const where = text.trim() === '' ? 'the file is empty' : jsonErrorWhere(text, err)
    throw new IppTunnelError('E_CONNFILE_JSON', `${fileName}: not valid JSON (${where})`)
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    const what = Array.isArray(json) ? 'a JSON list' : `JSON ${json === null ? 'null' : typeof json}`
    throw new IppTunnelError(
      'E_CONNFILE_KIND',
      `${fileName}: not a connection file (${what}, expected an object)`,
    )
  }
  const obj = json as Json
  const deep = tooDeepField(obj)
  if (deep !== undefined) {
    throw new IppTunnelError(
      'E_CONNFILE_FIELD',
      `${fileName}: field "${deep}" nests lists or objects more than ${MAX_DEPTH} deep`,
    )
  }
  const byName = kindFromFileName(fileName)
  const byContent = kindFromContent(obj)
  if (byName === undefined && byContent === undefined) {
    throw new IppTunnelError(
      'E_CONNFILE_KIND',
      `${fileName}: not a connection file (none of the ipyparallel or kernel fields such as "mux" or "shell_port")`,
    )
  }
  if (byName !== undefined && byContent !== undefined && family(byName) !== family(byContent)) {
    throw new IppTunnelError(
      'E_CONNFILE_KIND',
      `${fileName}: the name says ${family(byName)} connection file but the fields are those of a ${family(byContent)} file`,
    )
  }
  const kind = byName ?? byContent
  const fields = new Fields(fileName, obj)
  switch (kind) {
    case 'ipp-client':
      return parseClient(fields)
    case 'ipp-engine':
      return parseEngine(fields)
    default:
      return parseKernel(fields)
  }
}

/**
 * How deep lists and objects may nest in a field. Extra fields are written back into the copy, and JSON.stringify
 * recurses: a value nested 100 000 deep (which JSON.parse takes) would overflow the stack there.
 */
const MAX_DEPTH = 64

/** The first top-level field whose value nests deeper than {@link MAX_DEPTH}; walked without recursion. */
function tooDeepField(obj: Json): string | undefined {
  for (const [name, value] of Object.entries(obj)) {
    const stack: { value: unknown; depth: number }[] = [{ value, depth: 1 }]
    for (let item = stack.pop(); item !== undefined; item = stack.pop()) {
      if (typeof item.value !== 'object' || item.value === null) continue
      if (item.depth > MAX_DEPTH) return name
      for (const inner of Object.values(item.value)) stack.push({ value: inner, depth: item.depth + 1 })
    }
  }
  return undefined
}

function jsonErrorWhere(text: string, err: unknown): string {
  const message = err instanceof Error ? err.message : ''
  const match = /position (\d+)/.exec(message)
  if (match?.[1] === undefined) {
    if (/end of JSON/i.test(message)) return 'it ends too early'
    // One character of the file tells where without revealing anything.
    const token = /^Unexpected token '(.)'/u.exec(message)?.[1]
    return token === undefined ? 'syntax error' : `syntax error: unexpected ${JSON.stringify(token)}`
  }
  const position = Number(match[1])
  const before = text.slice(0, position).split('\n')
  return `syntax error at line ${before.length}, column ${(before.at(-1)?.length ?? 0) + 1}`
}
