import { createHash } from 'node:crypto'
import { readdir, readFile, realpath, stat } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'

import { IppTunnelError } from '../../errors/index.js'
import { parseDestination } from './destination.js'
import { expandShellTokens, quoteFor } from '../shell.js'
import type { Destination, HostKeyPolicy } from '../types.js'

/** Where a value came from, for messages. */
interface Where {
  readonly file: string
  readonly line: number
}

type Setting =
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

type Criterion =
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

type ConfigNode =
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

/** What ~/.ssh/config says about one host; absent fields were not set by any matching block. */
export interface HostSettings {
  /** `HostName`, with `%h` expanded. */
  readonly hostName?: string
  readonly user?: string
  readonly port?: number
  /** `IdentityFile` entries in order, with `~`, `${VAR}` and `%` tokens expanded. */
  readonly identityFiles: readonly string[]
  readonly identitiesOnly?: boolean
  /** `ProxyJump` hops in order; an empty list when `ProxyJump none` was obtained. */
  readonly proxyJump?: readonly Destination[]
  /** `ProxyCommand` (other than `none`) obtained before any ProxyJump, with its `%` tokens expanded. */
  readonly proxyCommand?: { readonly command: string; readonly file: string; readonly line: number }
  /** `CertificateFile` entries in order, expanded as IdentityFile is. */
  readonly certificateFiles?: readonly string[]
  /** `ControlPath`, expanded; absent when unset or `none`. */
  readonly controlPath?: string
  /** `UserKnownHostsFile` paths, expanded; an empty list for `UserKnownHostsFile none`. */
  readonly userKnownHostsFiles?: readonly string[]
  /** `StrictHostKeyChecking` mapped to a policy: yes → strict, ask, accept-new, no/off → off. */
  readonly strictHostKeyChecking?: HostKeyPolicy
  /** Where `StrictHostKeyChecking` was obtained: `file:line`. */
  readonly strictHostKeyCheckingFrom?: string
  /** `ConnectTimeout` in seconds; absent for `none` and `0` (no bound of its own). */
  readonly connectTimeout?: number
  /** `ServerAliveInterval` in seconds; `0` turns keepalives off, as in ssh(1). */
  readonly serverAliveInterval?: number
  readonly serverAliveCountMax?: number
  /** `PreferredAuthentications`: method names in the order to try them. */
  readonly preferredAuthentications?: readonly string[]
  /** The `Host`/`Match` blocks that applied, in reading order: `file:line Host pattern…` (what `doctor` shows). */
  readonly appliedBlocks?: readonly string[]
}

/** Context for {@link lookupHost}: what the command line said, and the local account. */
export interface LookupContext {
  /** The user given with the destination (`user@host`); it wins over the config's `User`, as in ssh. */
  readonly user?: string
  /** The port given with the destination; it wins over the config's `Port`. */
  readonly port?: number
  /** Local user name (`%u`, `Match localuser`); default `os.userInfo().username`. */
  readonly localUser?: string
  /** Home directory (`~`, `%d`); default `os.homedir()`. */
  readonly home?: string
  /** Environment for `${VAR}` in IdentityFile and UserKnownHostsFile; default `process.env`. */
  readonly env?: NodeJS.ProcessEnv
  /** Local host name (`%l`, `%L`); default `os.hostname()`. */
  readonly localHost?: string
  /** A ProxyCommand from the command line (`--proxy-command`): it wins over the config's ProxyCommand/ProxyJump. */
  readonly proxyCommand?: string
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

function configError(where: Where, message: string): IppTunnelError {
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

const GLOB_MAGIC = /[*?[]/u

/** The files an Include glob names, sorted per directory like glob(3); a pattern that matches nothing gives none. */
async function globFiles(pattern: string): Promise<string[]> {
  const parts = pattern.split('/').filter((p) => p !== '')
  let candidates = ['/']
  for (const part of parts) {
    const next: string[] = []
    if (!GLOB_MAGIC.test(part)) {
      for (const dir of candidates) next.push(path.join(dir, part))
    } else {
      const re = globSegment(part)
      for (const dir of candidates) {
        let names: string[]
        try {
          names = await readdir(dir)
        } catch {
          continue
        }
        names.sort()
        for (const name of names) {
          if (name.startsWith('.') && !part.startsWith('.')) continue
          if (re.test(name)) next.push(path.join(dir, name))
        }
      }
    }
    candidates = next
  }
  const files: string[] = []
  for (const file of candidates) {
    try {
      if ((await stat(file)).isFile()) files.push(file)
    } catch {
      // a name that does not exist matches nothing, as in glob(3)
    }
  }
  return files
}

function globSegment(part: string): RegExp {
  let re = ''
  for (let i = 0; i < part.length; i++) {
    const c = part[i] ?? ''
    if (c === '*') re += '.*'
    else if (c === '?') re += '.'
    else if (c === '[') {
      const close = part.indexOf(']', i + 2)
      if (close < 0) {
        re += '\\['
        continue
      }
      let body = part.slice(i + 1, close)
      const negated = body.startsWith('!') || body.startsWith('^')
      if (negated) body = body.slice(1)
      re += `[${negated ? '^' : ''}${body.replace(/[\\\]^]/gu, '\\$&')}]`
      i = close
    } else re += c.replace(/[.*+?^${}()|[\]\\]/gu, '\\$&')
  }
  return new RegExp(`^${re}$`, 'su')
}

/**
 * Matches `text` against one ssh pattern (`*` any run, `?` one character), case-insensitively.
 *
 * @example
 * matchPattern('node7.lab', '*.lab') // true
 */
export function matchPattern(text: string, pattern: string, caseSensitive = false): boolean {
  const t = caseSensitive ? text : text.toLowerCase()
  const p = caseSensitive ? pattern : pattern.toLowerCase()
  // iterative wildcard match with backtracking on the last '*'
  let ti = 0
  let pi = 0
  let star = -1
  let mark = 0
  while (ti < t.length) {
    if (pi < p.length && (p[pi] === '?' || p[pi] === t[ti])) {
      ti++
      pi++
    } else if (pi < p.length && p[pi] === '*') {
      star = pi++
      mark = ti
    } else if (star >= 0) {
      pi = star + 1
      ti = ++mark
    } else {
      return false
    }
  }
  while (pi < p.length && p[pi] === '*') pi++
  return pi === p.length
}

/**
 * Matches `text` against a comma-separated ssh pattern list: true when some pattern matches and no `!pattern` does.
 *
 * @example
 * matchPatternList('db.lab', '*.lab,!db.lab') // false
 */
export function matchPatternList(text: string, list: string): boolean {
  return matchPatterns(text, list.split(','))
}

function matchPatterns(text: string, patterns: readonly string[], caseSensitive = false): boolean {
  let matched = false
  for (const pattern of patterns) {
    if (pattern.startsWith('!')) {
      if (matchPattern(text, pattern.slice(1), caseSensitive)) return false
    } else if (matchPattern(text, pattern, caseSensitive)) {
      matched = true
    }
  }
  return matched
}

interface Obtained {
  hostName?: string
  user?: string
  port?: number
  identityFiles: { value: string; where: Where }[]
  certificateFiles: { value: string; where: Where }[]
  controlPath?: { value: string; where: Where }
  identitiesOnly?: boolean
  /** `ProxyJump none` was read: later ProxyJump lines are ignored, a later ProxyCommand still applies (ssh(1)). */
  jumpNone?: boolean
  proxy?:
    | { kind: 'jump'; value: readonly Destination[]; text: string }
    | { kind: 'command'; value: string; where: Where }
  knownHosts?: { value: readonly string[]; where: Where }
  strict?: { value: HostKeyPolicy; where: Where }
  connectTimeout?: number
  serverAliveInterval?: number
  serverAliveCountMax?: number
  preferredAuthentications?: readonly string[]
}

/**
 * Looks a host up the way ssh(1) does: blocks are read top to bottom and the first value obtained for a keyword wins
 * (IdentityFile accumulates). `Host` matches the name as written; `Match host` matches the HostName obtained so far.
 *
 * @throws IppTunnelError `E_SSH_CONFIG` naming file and line when a `%` token, `${VAR}` or `~user` cannot be expanded.
 *
 * @example
 * const s = lookupHost(config, 'cluster', { user: 'alice' })
 * s.hostName ?? 'cluster'
 */
export function lookupHost(config: SshConfig, alias: string, context: LookupContext = {}): HostSettings {
  const original = alias.toLowerCase()
  // ssh(1) matches Host lines against the name as typed (case counts) and lowercases it only afterwards
  const typed = alias
  const localUser = context.localUser ?? defaultLocalUser(context.env ?? process.env)
  const home = context.home ?? os.homedir()
  const got: Obtained = { identityFiles: [], certificateFiles: [] }
  if (context.proxyCommand !== undefined) {
    got.proxy =
      context.proxyCommand.toLowerCase() === 'none'
        ? { kind: 'jump', value: [], text: '' }
        : { kind: 'command', value: context.proxyCommand, where: { file: '--proxy-command', line: 0 } }
  }
  const currentHost = (): string =>
    got.hostName === undefined ? original : expandHostName(got.hostName, original).toLowerCase()

  // ssh(1) reads the config a second time when a Match canonical/final line was read: Host lines then match the
  // HostName obtained on the first pass, and the values obtained first still win
  let finalPass = false
  let wantFinal = false as boolean
  let hostSubject = typed
  const matches = (criteria: readonly Criterion[]): boolean => {
    if (criteria.some((c) => c.kind === 'final' && c.requestsPass)) wantFinal = true
    return criteria.every((c) => {
      if (c.kind === 'all') return true
      if (c.kind === 'unsupported') return false
      if (c.kind === 'final') return finalPass !== c.negate
      const subject =
        c.kind === 'host'
          ? currentHost()
          : c.kind === 'originalhost'
            ? original
            : c.kind === 'user'
              ? (context.user ?? got.user ?? localUser)
              : localUser
      return matchPatternList(subject, c.patterns) !== c.negate
    })
  }

  const apply = (s: Setting, where: Where): void => {
    switch (s.key) {
      case 'hostname':
        got.hostName ??= s.value
        break
      case 'user':
        got.user ??= s.value
        break
      case 'port':
        got.port ??= s.value
        break
      // ssh(1) keeps one of each path as written (a repeated line, or the final pass reading it again)
      case 'identityfile':
        if (!got.identityFiles.some((f) => f.value === s.value))
          got.identityFiles.push({ value: s.value, where })
        break
      case 'certificatefile':
        if (!got.certificateFiles.some((f) => f.value === s.value))
          got.certificateFiles.push({ value: s.value, where })
        break
      case 'controlpath':
        got.controlPath ??= { value: s.value, where }
        break
      case 'identitiesonly':
        got.identitiesOnly ??= s.value
        break
      case 'proxyjump':
        if (got.proxy !== undefined || got.jumpNone === true) break
        if (s.value.length === 0) got.jumpNone = true
        else got.proxy = { kind: 'jump', value: s.value, text: s.text }
        break
      case 'proxycommand':
        got.proxy ??=
          s.value.toLowerCase() === 'none'
            ? { kind: 'jump', value: [], text: '' }
            : { kind: 'command', value: s.value, where }
        break
      case 'userknownhostsfile':
        got.knownHosts ??= { value: s.value, where }
        break
      case 'stricthostkeychecking':
        got.strict ??= { value: s.value, where }
        break
      case 'connecttimeout':
        // `none` leaves the option unset, so a later block may still set it (ssh(1) stores it as -1)
        if (s.value !== undefined) got.connectTimeout ??= s.value
        break
      case 'serveraliveinterval':
        got.serverAliveInterval ??= s.value
        break
      case 'serveralivecountmax':
        got.serverAliveCountMax ??= s.value
        break
      case 'preferredauthentications':
        got.preferredAuthentications ??= s.value
        break
    }
  }

  const applied: string[] = []
  const walk = (nodes: readonly ConfigNode[]): void => {
    let active = true
    for (const node of nodes) {
      switch (node.kind) {
        case 'host':
          // ssh(1) compares Host patterns with the name as it is, case included
          active = matchPatterns(hostSubject, node.patterns, true)
          if (active) applied.push(`${node.file}:${node.line} Host ${node.patterns.join(' ')}`)
          break
        case 'match':
          active = matches(node.criteria)
          if (active) applied.push(`${node.file}:${node.line} Match`)
          break
        case 'include':
          if (active) for (const f of node.files) walk(f.nodes)
          break
        case 'setting':
          if (active) apply(node.setting, node)
          break
      }
    }
  }
  walk(config.nodes)
  if (wantFinal) {
    finalPass = true
    hostSubject = currentHost()
    got.hostName ??= hostSubject.replaceAll('%', '%%')
    walk(config.nodes)
  }

  if (got.jumpNone === true) got.proxy ??= { kind: 'jump', value: [], text: '' }
  const hostName =
    got.hostName === undefined ? undefined : expandHostName(got.hostName, original).toLowerCase()
  const host = hostName ?? original
  const user = context.user ?? got.user ?? localUser
  const port = context.port ?? got.port ?? 22
  const jumpText = got.proxy?.kind === 'jump' ? got.proxy.text : ''
  const localHost = context.localHost ?? os.hostname()
  const tokens: Record<string, string> = {
    '%': '%',
    d: home,
    u: localUser,
    h: host,
    n: typed,
    r: user,
    p: String(port),
    // %k is the HostKeyAlias (not supported here) or else the name as given on the command line
    k: typed,
    l: localHost,
    L: localHost.split('.')[0] ?? localHost,
    i: String(process.getuid?.() ?? ''),
    j: jumpText,
    // %C hashes %l%h%p%r as OpenSSH 9.2 (Debian 12) does; later releases add %j
    C: createHash('sha1').update(`${localHost}${host}${port}${user}`).digest('hex'),
  }
  const env = context.env ?? process.env
  const expand = (text: string, keyword: string, where: Where): string =>
    expandTokens(expandTilde(text, home, localUser, where), tokens, env, keyword, where)

  return {
    ...(hostName === undefined ? {} : { hostName }),
    ...(got.user === undefined ? {} : { user: got.user }),
    ...(got.port === undefined ? {} : { port: got.port }),
    identityFiles: got.identityFiles.map((f) => expand(f.value, 'IdentityFile', f.where)),
    ...(got.identitiesOnly === undefined ? {} : { identitiesOnly: got.identitiesOnly }),
    ...(got.proxy?.kind === 'jump' ? { proxyJump: got.proxy.value } : {}),
    ...(got.proxy?.kind === 'command'
      ? {
          proxyCommand: {
            command: expandProxyCommand(got.proxy.value, tokens, got.proxy.where),
            file: got.proxy.where.file,
            line: got.proxy.where.line,
          },
        }
      : {}),
    ...(got.certificateFiles.length === 0
      ? {}
      : { certificateFiles: got.certificateFiles.map((f) => expand(f.value, 'CertificateFile', f.where)) }),
    ...(got.controlPath === undefined || got.controlPath.value.toLowerCase() === 'none'
      ? {}
      : { controlPath: expand(got.controlPath.value, 'ControlPath', got.controlPath.where) }),
    ...(got.knownHosts === undefined
      ? {}
      : {
          userKnownHostsFiles: got.knownHosts.value.map((f) =>
            expand(f, 'UserKnownHostsFile', got.knownHosts?.where ?? { file: '', line: 0 }),
          ),
        }),
    ...(got.strict === undefined
      ? {}
      : {
          strictHostKeyChecking: got.strict.value,
          strictHostKeyCheckingFrom: `${got.strict.where.file}:${got.strict.where.line}`,
        }),
    ...(got.connectTimeout === undefined || got.connectTimeout === 0
      ? {}
      : { connectTimeout: got.connectTimeout }),
    ...(got.serverAliveInterval === undefined ? {} : { serverAliveInterval: got.serverAliveInterval }),
    ...(got.serverAliveCountMax === undefined ? {} : { serverAliveCountMax: got.serverAliveCountMax }),
    ...(got.preferredAuthentications === undefined
      ? {}
      : { preferredAuthentications: got.preferredAuthentications }),
    ...(applied.length === 0 ? {} : { appliedBlocks: [...new Set(applied)] }),
  }
}

/**
 * ProxyCommand takes `%` tokens only (`$VAR` is the shell's business). ssh(1) pastes their values in as they are;
 * here a value that holds anything but letters, digits and `_ . , : @ % + / -` is quoted for its place in the
 * command (outside quotes, in '…' or in "…"), so the shell reads back exactly the value — and refused where the
 * place cannot be told (see {@link expandShellTokens}). Hosts and users from a destination are plain names by then
 * ({@link parseDestination}), so for them the command is the same as ssh(1)'s.
 */
function expandProxyCommand(text: string, tokens: Readonly<Record<string, string>>, where: Where): string {
  return expandShellTokens(text, (t, context) => {
    const value = t === undefined ? undefined : tokens[t]
    if (value === undefined)
      throw configError(where, `ProxyCommand has an unknown token ${JSON.stringify(`%${t ?? ''}`)}`)
    const quoted = quoteFor(value, context)
    if (quoted === undefined) {
      throw configError(
        where,
        `ProxyCommand: %${t ?? ''} is ${JSON.stringify(value)}, which cannot be quoted safely where it stands (after a backslash, or inside $(…), backquotes, \${…}, $'…' or a here-document)`,
      )
    }
    return quoted
  })
}

/** `%h` (the name as written) and `%%` in HostName. */
function expandHostName(text: string, original: string): string {
  return text.replace(/%([%h])/gu, (_m, c: string) => (c === 'h' ? original : '%'))
}

function expandTokens(
  text: string,
  tokens: Readonly<Record<string, string>>,
  env: NodeJS.ProcessEnv,
  keyword: string,
  where: Where,
): string {
  let out = ''
  for (let i = 0; i < text.length; i++) {
    const c = text[i] ?? ''
    if (c === '%') {
      const t = text[i + 1]
      const value = t === undefined ? undefined : tokens[t]
      if (value === undefined) {
        throw configError(where, `${keyword} has an unknown token ${JSON.stringify(`%${t ?? ''}`)}`)
      }
      out += value
      i++
    } else if (c === '$' && text[i + 1] === '{') {
      const close = text.indexOf('}', i + 2)
      if (close < 0) throw configError(where, `${keyword} has an unterminated \${`)
      const name = text.slice(i + 2, close)
      const value = env[name]
      if (value === undefined) throw configError(where, `${keyword} uses \${${name}}, which is not set`)
      out += value
      i = close
    } else {
      out += c
    }
  }
  return out
}

/**
 * The local account name: `os.userInfo().username`, else `$USER`/`$LOGNAME`.
 *
 * @example
 * defaultLocalUser(process.env) // 'alice'
 */
export function defaultLocalUser(env: NodeJS.ProcessEnv): string {
  try {
    return os.userInfo().username
  } catch {
    return env.USER ?? env.LOGNAME ?? 'root'
  }
}
