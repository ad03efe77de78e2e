import { readFile, realpath } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'

import { IppTunnelError } from '../../errors/index.js'
import type { Destination, HostKeyPolicy } from '../types.js'
import { parseDestination } from './destination.js'
import { globFiles } from './patterns.js'

/*
 * Reading an OpenSSH client config (ssh_config(5)): lines into keywords and arguments as OpenSSH splits them,
 * Include (globs, relative paths, nesting) read in, Host and Match lines kept as parsed criteria. What a host
 * obtains from it is lookup.ts's business.
 */

/** Where a value came from, for messages. */
export interface Where {
  readonly file: string
  readonly line: number
}

export type Setting =
  | { readonly key: 'hostname' | 'user' | 'identityfile' | 'certificatefile'; readonly value: string }
  | { readonly key: 'controlpath'; readonly value: string }
  | { readonly key: 'port'; readonly value: number }
  | { readonly key: 'identitiesonly'; readonly value: boolean }
  | { readonly key: 'proxyjump'; readonly value: readonly Destination[]; readonly text: string }
  | { readonly key: 'proxycommand'; readonly value: string }
  | { readonly key: 'userknownhostsfile'; readonly value: readonly string[] }
  | { readonly key: 'stricthostkeychecking'; readonly value: HostKeyPolicy }
  | { readonly key: 'connecttimeout'; readonly value: number | undefined }
  | { readonly key: 'serveraliveinterval' | 'serveralivecountmax'; readonly value: number }
  | { readonly key: 'preferredauthentications'; readonly value: readonly string[] }

export type Criterion =
  | { readonly kind: 'all' }
  // `canonical` and `final`: true only on ssh(1)'s final pass (no canonicalization here); only `final` asks for one
  | { readonly kind: 'final'; readonly negate: boolean; readonly requestsPass: boolean }
  // exec, localnetwork, tagged, …: not evaluated here, so a block with one never applies
  | { readonly kind: 'unsupported' }
  | {
      readonly kind: 'host' | 'originalhost' | 'user' | 'localuser'
      readonly negate: boolean
      readonly patterns: string
    }

export type ConfigNode =
  | ({ readonly kind: 'host'; readonly patterns: readonly string[] } & Where)
  | ({ readonly kind: 'match'; readonly criteria: readonly Criterion[] } & Where)
  | ({ readonly kind: 'include'; readonly files: readonly ConfigFile[] } & Where)
  | ({ readonly kind: 'setting'; readonly setting: Setting } & Where)

interface ConfigFile {
  readonly path: string
  readonly nodes: readonly ConfigNode[]
}

/**
 * A parsed OpenSSH client config with its Includes read in. Opaque: look hosts up with {@link lookupHost}.
 * Only the keywords ipp-tunnel uses are kept; all others are ignored.
 */
export interface SshConfig {
  /** The top-level file, or undefined for an empty config. */
  readonly path: string | undefined
  /** Every file read (the top-level one and all Includes), in reading order. */
  readonly files: readonly string[]
  readonly nodes: readonly ConfigNode[]
}

/** Options for {@link readSshConfig}. */
export interface ReadSshConfigOptions {
  /** Home directory: `~` in Include, and relative Includes are read from `<home>/.ssh`. Default `os.homedir()`. */
  readonly home?: string
  /** Read a missing file as an empty config (right for the default `~/.ssh/config`, not for one named). Default true. */
  readonly missingOk?: boolean
}

/** OpenSSH's limit on Include nesting. */
const MAX_INCLUDE_DEPTH = 16

/** An empty config (what a missing file reads as). */
export const emptySshConfig: SshConfig = { path: undefined, files: [], nodes: [] }

/**
 * Reads an OpenSSH client config file and everything it Includes. A missing file reads as an empty config unless
 * `missingOk` is false.
 *
 * @throws IppTunnelError `E_SSH_CONFIG` naming file and line for an unreadable, missing (`missingOk: false`) or
 * malformed file, or an Include loop.
 *
 * @example
 * const config = await readSshConfig(path.join(os.homedir(), '.ssh', 'config'))
 * lookupHost(config, 'cluster').hostName
 */
export async function readSshConfig(file: string, opts: ReadSshConfigOptions = {}): Promise<SshConfig> {
  const home = opts.home ?? os.homedir()
  const files: string[] = []
  const top = await readConfigFile(path.resolve(file), home, [], files, opts.missingOk ?? true)
  if (top === undefined) return { ...emptySshConfig }
  return { path: top.path, files, nodes: top.nodes }
}

async function readConfigFile(
  file: string,
  home: string,
  stack: readonly string[],
  files: string[],
  missingOk: boolean,
): Promise<ConfigFile | undefined> {
  let text: string
  let real: string
  try {
    text = await readFile(file, 'utf8')
    real = await realpath(file)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (missingOk && (code === 'ENOENT' || code === 'ENOTDIR')) return undefined
    const why = code === 'ENOENT' || code === 'ENOTDIR' ? 'no such file' : (code ?? String(err))
    throw new IppTunnelError('E_SSH_CONFIG', `cannot read ssh config ${file}: ${why}`, { cause: err })
  }
  if (stack.includes(real)) {
    throw new IppTunnelError(
      'E_SSH_CONFIG',
      `ssh config Include loop: ${[...stack, real].join(' includes ')}`,
    )
  }
  files.push(file)
  const nodes: ConfigNode[] = []
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const where: Where = { file, line: i + 1 }
    const node = parseLine(lines[i] ?? '', where)
    if (node === undefined) continue
    if (node.kind === 'include') {
      if (stack.length + 1 >= MAX_INCLUDE_DEPTH) {
        throw configError(where, `Include nested deeper than ${MAX_INCLUDE_DEPTH} files`)
      }
      const included: ConfigFile[] = []
      for (const pattern of node.patterns) {
        for (const match of await globFiles(includePath(pattern, home, where))) {
          const child = await readConfigFile(match, home, [...stack, real], files, false)
          if (child !== undefined) included.push(child)
        }
      }
      nodes.push({ kind: 'include', files: included, ...where })
    } else {
      nodes.push(node)
    }
  }
  return { path: file, nodes }
}

export function configError(where: Where, message: string): IppTunnelError {
  return new IppTunnelError('E_SSH_CONFIG', `${where.file}:${where.line}: ${message}`)
}

type ParsedLine = Exclude<ConfigNode, { kind: 'include' }> | ({ kind: 'include'; patterns: string[] } & Where)

/** Parses one line into a node; undefined for blank lines, comments and keywords ipp-tunnel ignores. */
function parseLine(raw: string, where: Where): ParsedLine | undefined {
  const line = raw.replace(/[\s\f]+$/u, '').replace(/^\s+/u, '')
  if (line === '' || line.startsWith('#')) return undefined
  const m = /^([^\s=]*)\s*(?:=\s*)?(.*)$/su.exec(line)
  const keyword = (m?.[1] ?? '').toLowerCase()
  if (keyword === '') throw configError(where, 'missing keyword')
  // ssh(1) takes the rest of the line as is: the shell, not the config, reads its quotes
  if (keyword === 'proxycommand') {
    const command = m?.[2] ?? ''
    if (command === '') throw configError(where, `${m?.[1] ?? keyword} needs an argument`)
    return { kind: 'setting', setting: { key: 'proxycommand', value: command }, ...where }
  }
  const args = splitArgs(m?.[2] ?? '', where)
  const name = m?.[1] ?? keyword

  const one = (): string => {
    if (args.length !== 1 || args[0] === '') {
      throw configError(where, `${name} takes exactly one argument, got ${args.length}`)
    }
    return args[0] ?? ''
  }
  const some = (): string[] => {
    if (args.length === 0 || args.some((a) => a === '')) throw configError(where, `${name} needs an argument`)
    return args
  }
  const setting = (s: Setting): ParsedLine => ({ kind: 'setting', setting: s, ...where })

  switch (keyword) {
    case 'host':
      return { kind: 'host', patterns: some(), ...where }
    case 'match':
      return { kind: 'match', criteria: parseMatch(some(), where), ...where }
    case 'include':
      return { kind: 'include', patterns: some(), ...where }
    case 'hostname':
      return setting({ key: 'hostname', value: one() })
    case 'user':
      return setting({ key: 'user', value: one() })
    case 'identityfile':
      return setting({ key: 'identityfile', value: one() })
    case 'port': {
      const text = one()
      const port = /^[0-9]{1,5}$/u.test(text) ? Number(text) : NaN
      if (!(port >= 1 && port <= 65535))
        throw configError(where, `Port ${JSON.stringify(text)} is not in 1-65535`)
      return setting({ key: 'port', value: port })
    }
    case 'identitiesonly':
      return setting({ key: 'identitiesonly', value: parseFlag(one(), name, where) })
    case 'proxyjump': {
      const text = one()
      if (text.toLowerCase() === 'none') return setting({ key: 'proxyjump', value: [], text: '' })
      const value = text.split(',').map((part) => {
        try {
          return parseDestination(part)
        } catch (err) {
          throw new IppTunnelError(
            'E_SSH_CONFIG',
            `${where.file}:${where.line}: ProxyJump ${JSON.stringify(part)} is not [user@]host[:port]`,
            { cause: err },
          )
        }
      })
      return setting({ key: 'proxyjump', value, text })
    }
    case 'certificatefile':
      return setting({ key: 'certificatefile', value: one() })
    case 'controlpath':
      return setting({ key: 'controlpath', value: one() })
    case 'userknownhostsfile': {
      const files = some()
      const none = files.length === 1 && files[0]?.toLowerCase() === 'none'
      return setting({ key: 'userknownhostsfile', value: none ? [] : files })
    }
    case 'stricthostkeychecking': {
      const text = one().toLowerCase()
      const policy: HostKeyPolicy | undefined =
        text === 'yes' || text === 'true'
          ? 'strict'
          : text === 'ask'
            ? 'ask'
            : text === 'accept-new'
              ? 'accept-new'
              : text === 'no' || text === 'false' || text === 'off'
                ? 'off'
                : undefined
      if (policy === undefined) {
        throw configError(
          where,
          `StrictHostKeyChecking ${JSON.stringify(text)} is not yes, accept-new, no or ask`,
        )
      }
      return setting({ key: 'stricthostkeychecking', value: policy })
    }
    case 'connecttimeout': {
      const text = one()
      if (text.toLowerCase() === 'none') return setting({ key: 'connecttimeout', value: undefined })
      return setting({ key: 'connecttimeout', value: parseTime(text, name, where) })
    }
    case 'serveraliveinterval':
      return setting({ key: 'serveraliveinterval', value: parseTime(one(), name, where) })
    case 'serveralivecountmax': {
      const text = one()
      if (!/^[0-9]{1,9}$/u.test(text))
        throw configError(where, `${name} ${JSON.stringify(text)} is not a number`)
      return setting({ key: 'serveralivecountmax', value: Number(text) })
    }
    case 'preferredauthentications': {
      const methods = one()
        .split(',')
        .map((m) => m.trim().toLowerCase())
      if (methods.some((m) => m === '')) throw configError(where, `${name} has an empty method name`)
      return setting({ key: 'preferredauthentications', value: methods })
    }
    default:
      return undefined
  }
}

function parseFlag(text: string, name: string, where: Where): boolean {
  const t = text.toLowerCase()
  if (t === 'yes' || t === 'true') return true
  if (t === 'no' || t === 'false') return false
  throw configError(where, `${name} ${JSON.stringify(text)} is not yes or no`)
}

/** A time as ssh_config(5) writes it, in seconds: `90`, `90s`, `1m30s`, `2h`, `1d`, `1w` (OpenSSH's convtime). */
function parseTime(text: string, name: string, where: Where): number {
  const units: Record<string, number> = { '': 1, s: 1, m: 60, h: 3600, d: 86_400, w: 604_800 }
  let total = 0
  const re = /([0-9]+)([smhdw]?)/iuy
  let at = 0
  while (at < text.length) {
    re.lastIndex = at
    const m = re.exec(text)
    if (m === null) break
    total += Number(m[1]) * (units[(m[2] ?? '').toLowerCase()] ?? 1)
    at = re.lastIndex
  }
  if (text === '' || at !== text.length || !Number.isSafeInteger(total) || total > 2_147_483) {
    throw configError(where, `${name} ${JSON.stringify(text)} is not a time (e.g. 30, 30s, 2m)`)
  }
  return total
}

function parseMatch(args: readonly string[], where: Where): readonly Criterion[] {
  const criteria: Criterion[] = []
  for (let i = 0; i < args.length; i++) {
    const word = args[i] ?? ''
    const negate = word.startsWith('!')
    const attr = (negate ? word.slice(1) : word).toLowerCase()
    if (attr === 'all' && !negate) {
      criteria.push({ kind: 'all' })
      continue
    }
    if (attr === 'canonical' || attr === 'final') {
      criteria.push({ kind: 'final', negate, requestsPass: attr === 'final' })
      continue
    }
    if (attr === 'host' || attr === 'originalhost' || attr === 'user' || attr === 'localuser') {
      const patterns = args[i + 1]
      if (patterns === undefined || patterns === '')
        throw configError(where, `Match ${attr} needs an argument`)
      i++
      criteria.push({ kind: attr, negate, patterns })
      continue
    }
    // exec, localnetwork, tagged, …: each takes one argument
    criteria.push({ kind: 'unsupported' })
    i++
  }
  return criteria
}

/**
 * Splits a config line's arguments like OpenSSH: whitespace separates, `"…"` and `'…'` quote,
 * a backslash escapes a quote, a backslash or (outside quotes) a space, and `#` starting a word begins a comment.
 */
function splitArgs(text: string, where: Where): string[] {
  const args: string[] = []
  let i = 0
  while (i < text.length) {
    while (i < text.length && /\s/u.test(text[i] ?? '')) i++
    if (i >= text.length || text[i] === '#') break
    let arg = ''
    let quote: string | undefined
    for (; i < text.length; i++) {
      const c = text[i] ?? ''
      if (quote === undefined && /\s/u.test(c)) break
      if (c === '\\') {
        const next = text[i + 1]
        if (next === '"' || next === "'" || next === '\\' || (quote === undefined && next === ' ')) {
          arg += next
          i++
          continue
        }
        arg += c
      } else if (quote === undefined && (c === '"' || c === "'")) {
        quote = c
      } else if (c === quote) {
        quote = undefined
      } else {
        arg += c
      }
    }
    if (quote !== undefined) throw configError(where, `unterminated ${quote} quote`)
    args.push(arg)
  }
  return args
}

/** `~` and relative Include paths, which OpenSSH reads from ~/.ssh. */
function includePath(pattern: string, home: string, where: Where): string {
  const expanded = expandTilde(pattern, home, undefined, where)
  return path.isAbsolute(expanded) ? expanded : path.join(home, '.ssh', expanded)
}

/**
 * Expands a leading `~` or `~/` to `home`. `~name` is expanded only for the local user `localUser`.
 *
 * @example
 * expandTilde('~/.ssh/id_ed25519', '/home/alice') // '/home/alice/.ssh/id_ed25519'
 */
export function expandTilde(text: string, home: string, localUser?: string, where?: Where): string {
  if (!text.startsWith('~')) return text
  const slash = text.indexOf('/')
  const name = slash < 0 ? text.slice(1) : text.slice(1, slash)
  const rest = slash < 0 ? '' : text.slice(slash)
  if (name !== '' && name !== localUser) {
    const msg = `cannot expand ${JSON.stringify(`~${name}`)}: only ~ (your home) is supported`
    throw where === undefined ? new IppTunnelError('E_SSH_CONFIG', msg) : configError(where, msg)
  }
  return home + rest
}
