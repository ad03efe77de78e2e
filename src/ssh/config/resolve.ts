import os from 'node:os'
import path from 'node:path'

import { IppTunnelError } from '../../errors/index.js'
import { defaultLocalUser, lookupHost } from './lookup.js'
import { emptySshConfig, expandTilde, readSshConfig, type SshConfig } from './parse.js'
import { formatDestination, parseDestination } from './destination.js'
import type { Destination, HostKeyPolicy, ResolvedHop, ResolvedTarget, SshOptions } from '../types.js'

/** A hop as {@link resolveTarget} returns it: a {@link ResolvedHop} plus the host-key policy that applies to it. */
export interface ResolvedSshHop extends ResolvedHop {
  /** `--host-key-check` if given, else the config's `StrictHostKeyChecking` for this host, else `strict`. */
  readonly hostKeyPolicy: HostKeyPolicy
}

/** The route {@link resolveTarget} returns; assignable to {@link ResolvedTarget}. */
export interface ResolvedSshTarget extends ResolvedTarget {
  readonly hops: readonly ResolvedSshHop[]
}

/** {@link SshOptions} plus what tests inject. */
export interface ResolveOptions extends SshOptions {
  /** Home directory; default `os.homedir()`. */
  readonly home?: string
  /** Environment for `${VAR}` in the config; default `process.env`. */
  readonly env?: NodeJS.ProcessEnv
  /** Local user name; default `os.userInfo().username`. */
  readonly localUser?: string
}

/** OpenSSH's default identity files, in the order ssh(1) tries them. */
export const DEFAULT_IDENTITY_FILES = [
  'id_rsa',
  'id_ecdsa',
  'id_ecdsa_sk',
  'id_ed25519',
  'id_ed25519_sk',
  'id_dsa',
]

/** More hops than this is surely a configuration mistake. */
const MAX_HOPS = 16

/**
 * Resolves a destination into the route to it, applying ~/.ssh/config as ssh(1) does: `opts.ssh` (if given) overrides
 * `dest`; a user or port in the destination wins over the config's `User`/`Port`; `HostName`, `IdentityFile`,
 * `IdentitiesOnly`, `UserKnownHostsFile`, `StrictHostKeyChecking` and `ProxyJump` (recursively, each jump host through
 * the config too), `ConnectTimeout`, `ServerAliveInterval` and `ServerAliveCountMax` are applied. Jump hosts come
 * first; `hops.at(-1)` is the destination. Precedence is ssh(1)'s: options > config > built-in defaults.
 *
 * `--identity` applies to the destination only (as `ssh -i … -J …` does); `--known-hosts` and `--host-key-check`
 * apply to every hop.
 *
 * @throws IppTunnelError `E_DESTINATION` for a malformed destination; `E_SSH_CONFIG` for a bad config, a config file
 * named in `configFile` that does not exist, or a ProxyJump loop. A `ProxyCommand` (config or `proxyCommand`) ends the
 * route: its hop is the first, reached over the command's stdio.
 *
 * @example
 * const { hops } = await resolveTarget('alice@cluster', { configFile: false })
 * hops.at(-1) // { alias: 'cluster', host: 'cluster', port: 22, username: 'alice', … }
 */
export async function resolveTarget(dest: string, opts: ResolveOptions = {}): Promise<ResolvedSshTarget> {
  const home = opts.home ?? os.homedir()
  const env = opts.env ?? process.env
  const localUser = opts.localUser ?? defaultLocalUser(env)
  const destination = parseDestination(opts.ssh ?? dest)
  let config: SshConfig = emptySshConfig
  if (opts.configFile !== false) {
    const file = expandTilde(opts.configFile ?? '~/.ssh/config', home)
    config = await readSshConfig(file, { home, missingOk: opts.configFile === undefined })
  }

  const hop = (
    d: Destination,
    isDestination: boolean,
  ): { hop: ResolvedSshHop; jumps: readonly Destination[] } => {
    const s = lookupHost(config, d.host, {
      ...(d.user === undefined ? {} : { user: d.user }),
      ...(d.port === undefined ? {} : { port: d.port }),
      ...(isDestination && opts.proxyCommand !== undefined ? { proxyCommand: opts.proxyCommand } : {}),
      localUser,
      home,
      env,
    })
    const sshDir = path.join(home, '.ssh')
    let identityFiles: readonly string[]
    let identitiesOnly: boolean
    if (isDestination && opts.identity !== undefined) {
      identityFiles = [expandTilde(opts.identity, home, localUser)]
      identitiesOnly = true
    } else {
      identityFiles =
        s.identityFiles.length > 0 ? s.identityFiles : DEFAULT_IDENTITY_FILES.map((f) => path.join(sshDir, f))
      identitiesOnly = s.identitiesOnly ?? false
    }
    const knownHostsFiles =
      opts.knownHosts !== undefined
        ? [expandTilde(opts.knownHosts, home, localUser)]
        : (s.userKnownHostsFiles ?? [path.join(sshDir, 'known_hosts'), path.join(sshDir, 'known_hosts2')])
    return {
      hop: {
        alias: d.host,
        host: s.hostName ?? d.host,
        port: d.port ?? s.port ?? 22,
        username: d.user ?? s.user ?? localUser,
        identityFiles,
        identitiesOnly,
        knownHostsFiles,
        hostKeyPolicy: opts.hostKeyCheck ?? s.strictHostKeyChecking ?? 'ask',
        ...(opts.hostKeyCheck === undefined && s.strictHostKeyCheckingFrom !== undefined
          ? { hostKeyPolicyFrom: s.strictHostKeyCheckingFrom }
          : {}),
        ...(s.connectTimeout === undefined ? {} : { connectTimeoutMs: s.connectTimeout * 1000 }),
        ...(s.serverAliveInterval === undefined ? {} : { keepaliveIntervalMs: s.serverAliveInterval * 1000 }),
        ...(s.serverAliveCountMax === undefined ? {} : { keepaliveCountMax: s.serverAliveCountMax }),
        ...(s.proxyCommand === undefined ? {} : { proxyCommand: s.proxyCommand.command }),
        ...(s.certificateFiles === undefined ? {} : { certificateFiles: s.certificateFiles }),
        ...(s.controlPath === undefined ? {} : { controlPath: s.controlPath }),
        ...(s.preferredAuthentications === undefined
          ? {}
          : { preferredAuthentications: s.preferredAuthentications }),
      },
      jumps: s.proxyJump ?? [],
    }
  }

  // ssh -J j1,…,jn dest runs "ssh -J j1,…,j(n-1) jn -W dest": only j1's own ProxyJump from the config is followed,
  // the later jump hosts are reached through the ones before them.
  const route = (
    d: Destination,
    isDestination: boolean,
    chain: readonly string[],
    aliases: readonly string[],
  ): ResolvedSshHop[] => {
    const name = formatDestination(d)
    if (aliases.includes(d.host.toLowerCase())) {
      throw new IppTunnelError(
        'E_SSH_CONFIG',
        `ProxyJump loop: ${[...chain, name].join(' -> ')}; give the jump host "ProxyJump none" in its own Host block`,
      )
    }
    if (chain.length >= MAX_HOPS) {
      throw new IppTunnelError(
        'E_SSH_CONFIG',
        `ProxyJump chain longer than ${MAX_HOPS}: ${[...chain, name].join(' -> ')}`,
      )
    }
    const { hop: last, jumps } = hop(d, isDestination)
    const [firstJump, ...laterJumps] = jumps
    if (firstJump === undefined) return [last]
    const hops = route(firstJump, false, [...chain, name], [...aliases, d.host.toLowerCase()])
    // a later jump host is reached through the ones before it: its own ProxyCommand does not apply (ssh -J)
    for (const j of laterJumps) {
      const later: { -readonly [K in keyof ResolvedSshHop]: ResolvedSshHop[K] } = { ...hop(j, false).hop }
      delete later.proxyCommand
      hops.push(later)
    }
    hops.push(last)
    if (hops.length > MAX_HOPS) {
      throw new IppTunnelError('E_SSH_CONFIG', `ProxyJump chain to ${name} is longer than ${MAX_HOPS} hops`)
    }
    return hops
  }

  return { hops: route(destination, true, [], []) }
}
