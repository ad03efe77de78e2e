import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises'

import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { sshdConfig } from '../../src/demo/index.js'
import type { ResolvedHop, SshOptions } from '../../src/ssh/index.js'
import { freePort } from './net.js'
import type { Netns } from './netns.js'

const run = promisify(execFile)

/** Options for {@link startSshd}. */
export interface SshdOptions {
  /** Run sshd inside this namespace, listening on `netns.nsAddr`; default: this host, `127.0.0.1`. */
  readonly netns?: Netns
  /** `AllowTcpForwarding`; default true. */
  readonly allowTcpForwarding?: boolean
  /** Lines appended to sshd_config. */
  readonly extraConfig?: string
  /**
   * Log in through PAM with this service (`/etc/pam.d/<service>`, which the caller writes): sshd takes its PAM
   * service name from its program name, so it runs as a link of that name. Enables keyboard-interactive.
   */
  readonly pamService?: string
  /** Listen on this port (in a namespace, where no other test's port can collide); default a free one. */
  readonly port?: number
  /**
   * Use the host key and client keys of this sshd (copied): a second node of one login alias, which users reach
   * with the same key and whose host key the same known_hosts line accepts.
   */
  readonly keysOf?: Sshd
  /** Run sshd in a UTS namespace of its own with this host name: another node, as remote processes see it. */
  readonly hostname?: string
}

/** A running OpenSSH sshd with throw-away keys. */
export interface Sshd {
  readonly host: string
  readonly port: number
  /** The host key as an OpenSSH public key line: `ssh-ed25519 AAAA…`. */
  readonly hostKeyPub: string
  /** A known_hosts file holding `[host]:port ssh-ed25519 AAAA…` for this server. */
  readonly knownHostsFile: string
  /** Path of an unencrypted ed25519 private key the server accepts for root. */
  readonly clientKey: string
  /** Path of a passphrase-protected ed25519 private key the server accepts for root. */
  readonly encryptedClientKey: string
  /** The passphrase of {@link Sshd.encryptedClientKey}. */
  readonly passphrase: string
  readonly user: 'root'
  /** The temp dir holding config, keys and known_hosts; removed on close. */
  readonly dir: string
  /** What sshd logged (`-e`, LogLevel VERBOSE) so far, e.g. its `Accepted publickey` lines. */
  log(): string
  /** Number of per-connection sshd processes (children of the listener). */
  sessionCount(): Promise<number>
  /** Kills every per-connection sshd process, leaving the listener up: simulates a dropped link. */
  killConnections(): Promise<void>
  close(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

async function keygen(path: string, passphrase: string): Promise<void> {
  // -a 2: few KDF rounds keep the encrypted key fast to open in tests
  await run('ssh-keygen', [
    '-q',
    '-t',
    'ed25519',
    '-a',
    '2',
    '-N',
    passphrase,
    '-C',
    'ipp-tunnel-test',
    '-f',
    path,
  ])
}

/** Parent pid of every process, read from /proc. */
async function processTree(): Promise<Map<number, number[]>> {
  const children = new Map<number, number[]>()
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    let stat: string
    try {
      stat = await readFile(`/proc/${entry}/stat`, 'utf8')
    } catch {
      continue
    }
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
    const list = children.get(ppid) ?? []
    list.push(Number(entry))
    children.set(ppid, list)
  }
  return children
}

async function descendants(pid: number): Promise<number[]> {
  const tree = await processTree()
  const out: number[] = []
  const walk = (p: number): void => {
    for (const c of tree.get(p) ?? []) {
      out.push(c)
      walk(c)
    }
  }
  walk(pid)
  return out
}

function killAll(pids: readonly number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // already gone
    }
  }
}

function waitListening(child: ChildProcess): Promise<{ ok: boolean; stderr: string }> {
  return new Promise((resolve) => {
    let stderr = ''
    const onData = (chunk: string): void => {
      stderr += chunk
      if (/Server listening on /.test(stderr)) {
        child.stderr?.off('data', onData)
        child.off('exit', onExit)
        resolve({ ok: true, stderr })
      }
    }
    const onExit = (): void => {
      resolve({ ok: false, stderr })
    }
    child.stderr?.setEncoding('utf8')
    child.stderr?.on('data', onData)
    child.once('exit', onExit)
  })
}

/**
 * Starts a real OpenSSH `/usr/sbin/sshd -D -e -f <tmp config>` with a throw-away ed25519 host key, root
 * login by key only, on a free port of `127.0.0.1` (or of the namespace address when `netns` is given), and
 * waits until it accepts connections.
 *
 * @example
 * const sshd = await startSshd({ netns })
 * t.after(() => sshd.close())
 * // ssh -i sshd.clientKey -o UserKnownHostsFile=sshd.knownHostsFile -p sshd.port root@sshd.host
 */
export async function startSshd(options: SshdOptions = {}): Promise<Sshd> {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-sshd-'))
  try {
    await mkdir('/run/sshd', { recursive: true, mode: 0o755 })
    const hostKey = join(dir, 'host_ed25519')
    const clientKey = join(dir, 'id_ed25519')
    const encryptedClientKey = join(dir, 'id_ed25519_enc')
    const passphrase = 'correct horse battery staple'
    const other = options.keysOf
    if (other === undefined) {
      await Promise.all([keygen(hostKey, ''), keygen(clientKey, ''), keygen(encryptedClientKey, passphrase)])
    } else {
      const pairs: [string, string][] = [
        [join(other.dir, 'host_ed25519'), hostKey],
        [other.clientKey, clientKey],
        [other.encryptedClientKey, encryptedClientKey],
      ]
      for (const [from, to] of pairs) {
        await copyFile(from, to)
        await copyFile(`${from}.pub`, `${to}.pub`)
      }
    }
    const [hostKeyPub, clientPub, encPub] = await Promise.all(
      [hostKey, clientKey, encryptedClientKey].map(async (k) => (await readFile(`${k}.pub`, 'utf8')).trim()),
    )
    const authorizedKeys = join(dir, 'authorized_keys')
    await writeFile(authorizedKeys, `${clientPub ?? ''}\n${encPub ?? ''}\n`, { mode: 0o600 })
    const host = options.netns?.nsAddr ?? '127.0.0.1'
    const config = join(dir, 'sshd_config')

    for (let attempt = 0; ; attempt++) {
      const port = options.port ?? (await freePort(options.netns === undefined ? host : '127.0.0.1'))
      await writeFile(
        config,
        sshdConfig({
          listen: `${host}:${port}`,
          hostKey,
          authorizedKeys,
          allowTcpForwarding: options.allowTcpForwarding !== false,
          maxStartups: 100,
          logLevel: 'VERBOSE',
          ...(options.extraConfig !== undefined && { extra: options.extraConfig }),
          ...(options.pamService !== undefined && { pam: true }),
        }),
      )
      let program = '/usr/sbin/sshd'
      if (options.pamService !== undefined) {
        program = join(dir, options.pamService)
        await rm(program, { force: true })
        await symlink('/usr/sbin/sshd', program)
      }
      let argv = [program, '-D', '-e', '-f', config]
      if (options.hostname !== undefined) {
        // unshare and sh exec in place: the child's pid is still sshd's
        argv = ['unshare', '--uts', 'sh', '-c', 'hostname "$0" && exec "$@"', options.hostname, ...argv]
      }
      const stdio = ['ignore', 'ignore', 'pipe'] as const
      const child =
        options.netns === undefined
          ? spawn(argv[0] ?? '', argv.slice(1), { stdio: [...stdio] })
          : options.netns.exec(argv, { stdio: [...stdio] })
      const started = await waitListening(child)
      if (started.ok)
        return await makeSshd(child, dir, { host, port, hostKeyPub: hostKeyPub ?? '' }, started.stderr, {
          clientKey,
          encryptedClientKey,
          passphrase,
        })
      if (attempt < 5 && options.port === undefined && /Address already in use/.test(started.stderr)) continue
      throw new Error(`sshd did not start: ${started.stderr.trim()}`)
    }
  } catch (err) {
    await rm(dir, { recursive: true, force: true })
    throw err
  }
}

async function makeSshd(
  child: ChildProcess,
  dir: string,
  server: { host: string; port: number; hostKeyPub: string },
  startLog: string,
  keys: { clientKey: string; encryptedClientKey: string; passphrase: string },
): Promise<Sshd> {
  const pid = child.pid
  if (pid === undefined) throw new Error('sshd has no pid')
  const knownHostsFile = join(dir, 'known_hosts')
  await writeFile(knownHostsFile, `[${server.host}]:${server.port} ${server.hostKeyPub}\n`, { mode: 0o600 })
  const exited = once(child, 'exit')
  let log = startLog
  child.stderr?.on('data', (chunk: string) => (log += chunk))
  let closing: Promise<void> | undefined
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        killAll(await descendants(pid))
        child.kill('SIGKILL')
        await exited
      }
      await rm(dir, { recursive: true, force: true })
    })())
  return {
    ...server,
    ...keys,
    knownHostsFile,
    user: 'root',
    dir,
    log: () => log,
    sessionCount: async () => (await processTree()).get(pid)?.length ?? 0,
    killConnections: async () => {
      killAll(await descendants(pid))
    },
    close,
    [Symbol.asyncDispose]: close,
  }
}

/**
 * The {@link ResolvedHop} for reaching `sshd` as root with its unencrypted client key and its known_hosts file,
 * without reading any ssh config; `overrides` replace fields.
 *
 * @example
 * const link = new Link({ hops: [hopOf(sshd)] }, { agent: false })
 */
export function hopOf(sshd: Sshd, overrides: Partial<ResolvedHop> = {}): ResolvedHop {
  return {
    alias: sshd.host,
    host: sshd.host,
    port: sshd.port,
    username: sshd.user,
    identityFiles: [sshd.clientKey],
    identitiesOnly: true,
    knownHostsFiles: [sshd.knownHostsFile],
    ...overrides,
  }
}

/**
 * The CLI flags that authenticate to this sshd and trust its host key, reading no user ssh config; `identity` and
 * `knownHosts` replace its unencrypted client key and its known_hosts file.
 *
 * @example
 * await runCli(['up', file, '--ssh', `root@${sshd.host}:${sshd.port}`, ...sshArgsOf(sshd)])
 * await runCli(['doctor', dest, ...sshArgsOf(sshd, { identity: sshd.encryptedClientKey })])
 */
export function sshArgsOf(
  sshd: Sshd,
  options: { readonly identity?: string; readonly knownHosts?: string } = {},
): string[] {
  return [
    '--identity',
    options.identity ?? sshd.clientKey,
    '--known-hosts',
    options.knownHosts ?? sshd.knownHostsFile,
    '--ssh-config',
    '/dev/null',
  ]
}

/**
 * The library's {@link SshOptions} that authenticate to this sshd and trust its host key, reading no user ssh
 * config: what {@link sshArgsOf} is for the CLI.
 *
 * @example
 * await using tunnel = await openTunnel(file, { ...sshOptionsOf(sshd), out })
 */
export function sshOptionsOf(sshd: Sshd): SshOptions {
  return { identity: sshd.clientKey, knownHosts: sshd.knownHostsFile, configFile: '/dev/null' }
}
