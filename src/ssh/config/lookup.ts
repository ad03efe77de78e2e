import { createHash } from 'node:crypto'
import os from 'node:os'

import { expandShellTokens, quoteFor } from '../shell.js'
import type { Destination, HostKeyPolicy } from '../types.js'
import {
  configError,
  expandTilde,
  type ConfigNode,
  type Criterion,
  type Setting,
  type SshConfig,
  type Where,
} from './parse.js'
import { matchPatternList, matchPatterns } from './patterns.js'

/*
 * Looking a host up in a parsed config as ssh(1) does: blocks in reading order, the first value obtained wins,
 * Match criteria evaluated against what was obtained so far, a final pass when asked for, then `~`, `${VAR}` and
 * `%` tokens expanded.
 */

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
