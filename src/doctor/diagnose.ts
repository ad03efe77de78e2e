import { readFile, stat } from 'node:fs/promises'
import os from 'node:os'

import { openClient } from '../client/index.js'
import {
  destinationOf,
  endpoints,
  readConnectionFile,
  type ConnectionInfo,
  type Endpoint,
} from '../connection-file/index.js'
import { isIppTunnelError } from '../errors/index.js'
import { isSocket } from '../safe-fs/index.js'
import {
  expandTilde,
  findCertificates,
  formatValidity,
  hostFieldMatches,
  hopLabel,
  knownHostsName,
  lookupHost,
  parseDestination,
  parseKnownHosts,
  readSshConfig,
  resolveTarget,
  fingerprintSha256,
  type Link,
  type LinkOptions,
  type ResolvedHop,
  type SshOptions,
} from '../ssh/index.js'
import { LinkPool } from '../tunnel/index.js'
import { remoteProcessesStep } from './remote-processes.js'
import type { DoctorStep } from './step.js'
import {
  agentKeys,
  firstBytes,
  identityFingerprint,
  isZmtpSignature,
  UNIX_LISTENER_COMMAND,
} from './probes.js'

/** What {@link diagnose} looks at: an ssh destination, or a connection file (its server and its ports). */
export type DoctorTarget = { readonly destination: string } | { readonly file: string }

/** Options of {@link diagnose}: the ssh options of any command, plus what tests inject. */
export interface DiagnoseOptions
  extends
    SshOptions,
    Pick<LinkOptions, 'transport' | 'prompt' | 'env' | 'onProxyStderr' | 'onHostKey' | 'verbose'> {
  /** How long each step may wait for an answer (a greeting, a heartbeat, the engines); default 10000 ms. */
  readonly timeoutMs?: number
  /** Home directory for `~` in the ssh config; default `os.homedir()`. */
  readonly home?: string
  /** Where our remote processes are kept there (as the commands that started them were told); default theirs. */
  readonly remoteDir?: string
  /** The remote python that lists them (after `setup`); default `python3`. */
  readonly python?: string
  readonly setup?: string
  readonly signal?: AbortSignal
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

function codeOf(err: unknown): string | undefined {
  return isIppTunnelError(err) ? err.code : undefined
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path)
    return true
  } catch {
    return false
  }
}

/** A certificate that ends sooner than this is a warning. */
const SOON_MS = 3_600_000

const HOSTKEY_CODES = new Set([
  'E_HOSTKEY_UNKNOWN',
  'E_HOSTKEY_CA',
  'E_HOSTKEY_MISMATCH',
  'E_HOSTKEY_REVOKED',
])
const LOGIN_CODES = new Set(['E_AUTH', 'E_AUTH_PROMPT', 'E_PASSPHRASE', 'E_IDENTITY', 'E_CERT_EXPIRED'])

const LOGIN_FIX: Readonly<Record<string, string>> = {
  E_CERT_EXPIRED:
    "get a new certificate (run your site's sshproxy/step/vault login again), then run doctor again",
  E_PASSPHRASE: 'pass --passphrase-file PATH, run on a terminal, or load the key into ssh-agent (ssh-add)',
  E_IDENTITY:
    'pass --identity PATH, set IdentityFile in ~/.ssh/config, or load a key into ssh-agent (ssh-add)',
  E_AUTH_PROMPT: 'run doctor on a terminal, where the prompts can be answered',
  E_AUTH: "check the user name, and that the key offered is in the server's ~/.ssh/authorized_keys",
}

/**
 * Checks, step by step, everything ipp-tunnel needs to reach `target`: the ssh config that applies, the keys and
 * certificates it would offer, the server's host key and the known_hosts line that vouches for it, the login, SFTP,
 * unix-socket forwarding, the round trip through the link, and for a connection file each endpoint's channel (a
 * ZMTP greeting) and the controller's engines or the kernel's heartbeat. Yields each step as it is decided; a
 * failed step that later ones need ends the run with those skipped. Prints nothing; never yields key material,
 * passphrases, answers or HMAC keys (fingerprints and paths only).
 *
 * @example
 * for await (const step of diagnose({ destination: 'me@cluster' }, {})) console.log(step.verdict, step.name, step.detail)
 */
export async function* diagnose(
  target: DoctorTarget,
  options: DiagnoseOptions = {},
): AsyncGenerator<DoctorStep, void, undefined> {
  const timeoutMs = options.timeoutMs ?? 10_000
  const home = options.home ?? os.homedir()
  const env = options.env ?? process.env

  // the connection file, when one was given
  let info: ConnectionInfo | undefined
  let file: string | undefined
  let destination: string | undefined
  if ('file' in target) {
    file = target.file
    try {
      const read = await readConnectionFile(file)
      info = read.info
      destination = options.ssh ?? destinationOf(info)
      const count = endpoints(info).length
      if (destination === undefined) {
        yield {
          name: 'connection file',
          verdict: 'fail',
          detail: `${file}: ${info.kind}, ${count} endpoints, but its field "ssh" is empty`,
          fix: 'pass --ssh user@host to say which server to forward through',
        }
        return
      }
      const warning = read.warnings[0]
      yield {
        name: 'connection file',
        verdict: warning === undefined ? 'pass' : 'warn',
        detail: `${file}: ${info.kind}, ${count} endpoints, through ${destination}${warning === undefined ? '' : `; ${warning}`}`,
        ...(warning === undefined ? {} : { fix: `chmod 600 ${file}` }),
      }
    } catch (err) {
      yield {
        name: 'connection file',
        verdict: 'fail',
        detail: message(err),
        fix: 'check the path and the file',
      }
      return
    }
  } else {
    destination = options.ssh ?? target.destination
  }

  // ssh config: which blocks applied, and the settings used
  let hop: ResolvedHop
  let hops: readonly ResolvedHop[]
  try {
    const route = await resolveTarget(destination, { ...options, home, env })
    hops = route.hops
    const last = route.hops.at(-1)
    if (last === undefined) throw new Error('no hops')
    hop = last
    let blocks = 'no config file read'
    if (options.configFile !== false) {
      const config = await readSshConfig(expandTilde(options.configFile ?? '~/.ssh/config', home), {
        home,
        missingOk: options.configFile === undefined,
      })
      const d = parseDestination(destination)
      const settings = lookupHost(config, d.host, {
        ...(d.user === undefined ? {} : { user: d.user }),
        ...(d.port === undefined ? {} : { port: d.port }),
        home,
        env,
      })
      const applied = settings.appliedBlocks ?? []
      blocks =
        config.path === undefined
          ? 'no ssh config file'
          : applied.length === 0
            ? `no Host/Match block of ${config.path} applies`
            : `blocks ${applied.join('; ')}`
    }
    const jumps = hops.slice(0, -1).map(hopLabel)
    yield {
      name: 'ssh config',
      verdict: 'pass',
      detail:
        `${hopLabel(hop)}; ${blocks}; identity files ${hop.identityFiles.join(', ') || 'none'}` +
        `${hop.identitiesOnly ? ' (only these)' : ''}; known_hosts ${hop.knownHostsFiles.join(', ') || 'none'}; ` +
        `host-key policy ${options.hostKeyCheck ?? hop.hostKeyPolicy ?? 'ask'}` +
        (jumps.length > 0 ? `; jump hosts ${jumps.join(' -> ')}` : '') +
        (hop.proxyCommand === undefined ? '' : `; ProxyCommand ${hop.proxyCommand}`) +
        (hop.preferredAuthentications === undefined
          ? ''
          : `; methods ${hop.preferredAuthentications.join(',')}`),
    }
  } catch (err) {
    yield {
      name: 'ssh config',
      verdict: 'fail',
      detail: message(err),
      fix: 'fix the destination or the ssh config line named',
    }
    return
  }

  // agent and keys: paths and fingerprints only
  const agentSocket = options.agent === false ? undefined : (options.agent ?? env['SSH_AUTH_SOCK'])
  const agentUp = agentSocket !== undefined && agentSocket !== '' && (await isSocket(agentSocket))
  const offered: string[] = []
  if (agentUp) {
    try {
      const keys = await agentKeys(agentSocket)
      offered.push(`ssh-agent ${agentSocket}: ${keys.length === 0 ? 'no keys' : keys.join(', ')}`)
    } catch (err) {
      offered.push(`ssh-agent ${agentSocket}: does not answer (${message(err)})`)
    }
  }
  let keyFiles = 0
  for (const path of hop.identityFiles) {
    if (!(await exists(path))) continue
    keyFiles++
    try {
      offered.push(`${path}: ${await identityFingerprint(path)}`)
    } catch (err) {
      offered.push(`${path}: unreadable (${codeOf(err) ?? message(err)})`)
    }
  }
  yield keyFiles === 0 && !agentUp
    ? {
        name: 'agent and keys',
        verdict: 'warn',
        detail: `no ssh-agent and no identity file (looked for ${hop.identityFiles.join(', ') || 'none'}); only keyboard-interactive or a password can log in`,
        fix: 'pass --identity PATH, set IdentityFile in ~/.ssh/config, or load a key into ssh-agent (ssh-add)',
      }
    : { name: 'agent and keys', verdict: 'pass', detail: offered.join('; ') }

  // certificates and their validity windows
  const certs = await findCertificates(
    hop.identityFiles,
    hop.certificateFiles ?? [],
    agentUp ? agentSocket : undefined,
  )
  const valid = [...certs.files, ...certs.agent]
  const now = Date.now()
  // a certificate that ends within the hour still logs in now, but not at the next reconnect
  const soon = valid.filter((c) => Number(c.validBefore) * 1000 - now < SOON_MS)
  const describeCert = (c: (typeof valid)[number], problem?: string): string =>
    `${c.source} (key id ${JSON.stringify(c.keyId)}, principals ${c.principals.join(',') || 'any'})` +
    `${problem === undefined ? '' : ` is ${problem}:`} valid ${formatValidity(c)}` +
    (problem === undefined && soon.includes(c)
      ? ` (expires in ${Math.max(0, Math.round((Number(c.validBefore) * 1000 - now) / 60_000))} min)`
      : '')
  const certLines = [
    ...valid.map((c) => describeCert(c)),
    ...certs.invalid.map(({ cert, problem }) => describeCert(cert, problem)),
  ]
  if (certLines.length === 0) {
    yield {
      name: 'certificates',
      verdict: 'skip',
      detail: 'none (no KEY-cert.pub beside an identity file, no CertificateFile, none in the agent)',
    }
  } else {
    const bad = certs.invalid.length > 0 || soon.length > 0
    yield {
      name: 'certificates',
      verdict: !bad ? 'pass' : valid.length === 0 ? 'fail' : 'warn',
      detail: certLines.join('; '),
      ...(bad ? { fix: "get a new certificate (run your site's sshproxy/step/vault login again)" } : {}),
    }
  }

  // connect, host key, login: one Link, whose --verbose lines say what happened
  const said: string[] = []
  const where = hopLabel(hop)
  const pool = new LinkPool({
    ...options,
    transport: options.transport ?? 'ssh2',
    verbose: (line) => {
      options.verbose?.(line)
      if (line.startsWith(`${where}: `)) said.push(line.slice(where.length + 2))
    },
    backoff: { initialMs: 250, maxMs: 1000 },
  })
  const rest = (after: string, names: readonly string[]): DoctorStep[] =>
    names.map((name) => ({ name, verdict: 'skip', detail: `not tried: ${after}` }))
  const laterSteps = [
    'sftp',
    'streamlocal',
    'round trip',
    ...(info === undefined ? ['remote processes'] : endpoints(info).map((e) => `channel ${e.channel}`)),
    ...(info === undefined
      ? []
      : [info.kind === 'kernel' ? 'heartbeat' : info.kind === 'ipp-client' ? 'engines' : []].flat()),
  ]
  try {
    let link: Link
    const started = performance.now()
    try {
      link = await pool.acquire({ hops }, options.signal)
    } catch (err) {
      options.signal?.throwIfAborted()
      const code = codeOf(err) ?? ''
      const hostKeySeen = said.find((s) => s.startsWith('host key '))
      const reached = hostKeySeen !== undefined || HOSTKEY_CODES.has(code) || LOGIN_CODES.has(code)
      yield reached
        ? { name: 'connect', verdict: 'pass', detail: `reached ${where}` }
        : {
            name: 'connect',
            verdict: 'fail',
            detail: message(err),
            fix: `check that ${hop.host} port ${hop.port} is right and sshd runs there (a firewall, a VPN, or Port/HostName in ~/.ssh/config)`,
          }
      if (!reached) {
        yield* rest('connect failed', ['host key', 'login', ...laterSteps])
        return
      }
      if (HOSTKEY_CODES.has(code)) {
        yield {
          name: 'host key',
          verdict: 'fail',
          detail: message(err),
          fix:
            code === 'E_HOSTKEY_MISMATCH'
              ? "verify the new key with the server's administrator, then remove the old line with the ssh-keygen -R the message names"
              : code === 'E_HOSTKEY_UNKNOWN'
                ? 'check the fingerprint out of band, then run once with --host-key-check accept-new'
                : code === 'E_HOSTKEY_REVOKED'
                  ? "ask the server's administrator for its current host key"
                  : 'log in once with ssh and let ipp-tunnel reuse that connection (--transport auto), or check the fingerprint out of band and run once with --host-key-check accept-new',
        }
        yield* rest('host key refused', ['login', ...laterSteps])
        return
      }
      yield await hostKeyStep(hop, hostKeySeen)
      yield {
        name: 'login',
        verdict: 'fail',
        detail: `${loginSummary(said)}; ${message(err)}`,
        fix: LOGIN_FIX[code] ?? 'see the message',
      }
      yield* rest('login failed', laterSteps)
      return
    }
    yield {
      name: 'connect',
      verdict: 'pass',
      detail: `reached ${where} and logged in within ${Math.round(performance.now() - started)} ms over ${link.transport}`,
    }
    yield await hostKeyStep(
      hop,
      said.find((s) => s.startsWith('host key ')),
      link.transport === 'openssh',
    )
    yield {
      name: 'login',
      verdict: 'pass',
      detail:
        link.transport === 'openssh' ? 'through your OpenSSH master (no login of ours)' : loginSummary(said),
    }
    try {
      yield* linkSteps(link, info, file, options, pool, timeoutMs)
    } finally {
      await pool.release(link)
    }
  } finally {
    await pool.close()
  }
}

/** The host-key step from the Link's `host key SHA256:… accepted (policy P)` line: which known_hosts line matched. */
async function hostKeyStep(hop: ResolvedHop, seen: string | undefined, master = false): Promise<DoctorStep> {
  if (master) return { name: 'host key', verdict: 'pass', detail: 'checked by your OpenSSH master' }
  const m = /^host key (SHA256:\S+) accepted \(policy (\S+)\)/u.exec(seen ?? '')
  if (m === null) return { name: 'host key', verdict: 'skip', detail: 'not reached' }
  const [, fingerprint = '', policy = ''] = m
  const name = knownHostsName(hop.host, hop.port)
  for (const f of hop.knownHostsFiles) {
    let text: string
    try {
      text = await readFile(f, 'utf8')
    } catch {
      continue
    }
    const entry = parseKnownHosts(text, f).find(
      (e) =>
        e.marker === undefined && hostFieldMatches(e.hosts, name) && fingerprintSha256(e.key) === fingerprint,
    )
    if (entry !== undefined) {
      return {
        name: 'host key',
        verdict: 'pass',
        detail: `${name} ${entry.keyType} ${fingerprint} matches ${entry.file}:${entry.line}`,
      }
    }
  }
  return {
    name: 'host key',
    verdict: 'warn',
    detail: `${name} ${fingerprint} accepted by policy ${policy} without a known_hosts line`,
    fix: 'check the fingerprint out of band and keep host-key checking strict',
  }
}

/** What the Link's verbose lines say of the login: what the server offers, what was tried, what worked. */
function loginSummary(said: readonly string[]): string {
  const offers = said
    .map((s) => /the server accepts (.*)$/u.exec(s)?.[1])
    .find((s): s is string => s !== undefined)
  const tried = said.flatMap((s) => {
    const m = /^trying (.*)$/u.exec(s)
    return m?.[1] === undefined ? [] : [m[1]]
  })
  const ok = said.includes('authenticated')
  return (
    `server offers ${offers ?? '(not listed)'}; ` +
    `tried ${tried.join(', ') || 'nothing'}` +
    (ok ? `; accepted ${tried.at(-1) ?? '?'}` : '')
  )
}

/**
 * The steps that need the link up: SFTP, unix-socket forwarding, round trip, then for a destination our processes
 * there, for a file its endpoints and the engines or heartbeat.
 */
async function* linkSteps(
  link: Link,
  info: ConnectionInfo | undefined,
  file: string | undefined,
  options: DiagnoseOptions,
  pool: LinkPool,
  timeoutMs: number,
): AsyncGenerator<DoctorStep, void, undefined> {
  const signal = options.signal
  const sftpStep = async (): Promise<DoctorStep> => {
    if (link.transport === 'openssh') {
      return {
        name: 'sftp',
        verdict: 'skip',
        detail: 'not tried through your OpenSSH master (pass --transport ssh2)',
      }
    }
    try {
      const sftp = await link.sftp(signal === undefined ? {} : { signal })
      await new Promise<void>((resolve, reject) => {
        sftp.realpath('.', (err) => (err ? reject(err) : resolve()))
      })
      return { name: 'sftp', verdict: 'pass', detail: 'the server runs an SFTP subsystem' }
    } catch (err) {
      signal?.throwIfAborted()
      return {
        name: 'sftp',
        verdict: 'fail',
        detail: message(err),
        fix: 'the server has no SFTP: add "Subsystem sftp internal-sftp" to its sshd_config (needed for host:PATH sources, remote kernels and clusters)',
      }
    }
  }
  yield await sftpStep()
  yield link.transport === 'openssh'
    ? {
        name: 'streamlocal',
        verdict: 'skip',
        detail: 'not tried through your OpenSSH master (ssh -W takes host:port only; pass --transport ssh2)',
      }
    : await streamlocalStep(link, timeoutMs, signal)
  // a channel open to a port where nothing listens is one round trip: the server answers "connect failed"
  const t0 = performance.now()
  try {
    const probe = await link.forwardOut('127.0.0.1', 1, signal === undefined ? {} : { signal })
    probe.destroy()
  } catch (err) {
    signal?.throwIfAborted()
    if (codeOf(err) === 'E_LINK_DOWN' || codeOf(err) === 'E_CLOSED') {
      yield {
        name: 'round trip',
        verdict: 'fail',
        detail: message(err),
        fix: 'run doctor again: the link went down',
      }
      return
    }
  }
  yield {
    name: 'round trip',
    verdict: 'pass',
    detail: `${Math.round((performance.now() - t0) * 10) / 10} ms for a channel open and the server's answer`,
  }
  if (info === undefined || file === undefined) {
    yield await remoteProcessesStep(link, options)
    return
  }
  let channelsOk = true
  for (const e of endpoints(info)) {
    const step = await channelStep(link, e, timeoutMs, signal)
    if (step.verdict === 'fail') channelsOk = false
    yield step
  }
  if (info.kind === 'ipp-engine') return
  const name = info.kind === 'kernel' ? 'heartbeat' : 'engines'
  if (!channelsOk) {
    yield { name, verdict: 'skip', detail: 'not tried: a channel failed' }
    return
  }
  yield await peerStep(name, file, options, pool, timeoutMs)
}

/** A controller's engine ids or a kernel's heartbeat, asked through the same link (the pool holds it). */
async function peerStep(
  name: string,
  file: string,
  options: DiagnoseOptions,
  pool: LinkPool,
  timeoutMs: number,
): Promise<DoctorStep> {
  try {
    await using client = await openClient(file, {
      ...options,
      pool,
      handshakeTimeoutMs: timeoutMs,
      requestTimeoutMs: timeoutMs,
    })
    if (client.kind === 'kernel') {
      const ms = await client.heartbeat(timeoutMs)
      return {
        name,
        verdict: 'pass',
        detail: `the kernel echoed a heartbeat in ${Math.round(ms * 10) / 10} ms`,
      }
    }
    const { ids } = await client.engines()
    return ids.length === 0
      ? {
          name,
          verdict: 'warn',
          detail: 'the controller answers, with no engine registered',
          fix: 'start engines (ipp-tunnel engines, or ipcluster engines on the server)',
        }
      : { name, verdict: 'pass', detail: `the controller answers: engines [${ids.join(', ')}]` }
  } catch (err) {
    options.signal?.throwIfAborted()
    return {
      name,
      verdict: 'fail',
      detail: message(err),
      fix:
        codeOf(err)?.startsWith('E_SIGNATURE') === true
          ? 'the key in the file is not the one the peer signs with: take a fresh copy of the file'
          : 'check that the controller or kernel still runs and that this file is its current one',
    }
  }
}

async function channelStep(
  link: Link,
  e: Endpoint,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<DoctorStep> {
  const opts = signal === undefined ? {} : { signal }
  const name = `channel ${e.channel}`
  const at = e.kind === 'unix' ? e.path : `${e.host}:${e.port}`
  try {
    const stream =
      e.kind === 'unix'
        ? await link.forwardOutUnix(e.path, opts)
        : await link.forwardOut(e.host, e.port, opts)
    const bytes = await firstBytes(stream, timeoutMs)
    return isZmtpSignature(bytes)
      ? { name, verdict: 'pass', detail: `${at}: opened, ZMTP greeting read` }
      : {
          name,
          verdict: 'fail',
          detail: `${at}: opened, but ${bytes.length === 0 ? 'nothing came' : `${bytes.length} bytes that are no ZMTP greeting came`} within ${timeoutMs} ms`,
          fix: 'something other than the controller or kernel listens there: the file is stale',
        }
  } catch (err) {
    signal?.throwIfAborted()
    return {
      name,
      verdict: 'fail',
      detail: `${at}: ${message(err)}`,
      fix:
        codeOf(err) === 'E_FORWARD_DENIED'
          ? 'the server forbids this forwarding: ask for AllowTcpForwarding / AllowStreamLocalForwarding yes in its sshd_config'
          : 'nothing listens there: start the controller or kernel, or take the file it wrote last',
    }
  }
}

/**
 * Unix-socket forwarding: OpenSSH answers "connect failed" both to a forbidden one and to a path with no socket, so
 * a socket is made on the server (python3 in a private temp dir) and a channel opened to it.
 */
async function streamlocalStep(
  link: Link,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<DoctorStep> {
  const name = 'streamlocal'
  const opts = signal === undefined ? {} : { signal }
  let command
  try {
    command = await link.exec(UNIX_LISTENER_COMMAND, opts)
  } catch (err) {
    return { name, verdict: 'warn', detail: `cannot tell: ${message(err)}` }
  }
  try {
    const path = await new Promise<string | undefined>((resolve) => {
      let text = ''
      const timer = setTimeout(() => resolve(undefined), timeoutMs)
      command.stdout.on('data', (chunk: Buffer) => {
        text += chunk.toString('utf8')
        const nl = text.indexOf('\n')
        if (nl >= 0) {
          clearTimeout(timer)
          resolve(text.slice(0, nl))
        }
      })
      void command.exited.then(() => {
        clearTimeout(timer)
        resolve(undefined)
      })
    })
    if (path === undefined) {
      return {
        name,
        verdict: 'warn',
        detail: 'cannot tell: no unix socket could be made on the server to try (python3 missing?)',
      }
    }
    try {
      const stream = await link.forwardOutUnix(path, opts)
      stream.destroy()
      return { name, verdict: 'pass', detail: 'the server forwards to unix sockets (direct-streamlocal)' }
    } catch (err) {
      // the socket is there (made just now): a refused channel to it is the server's policy
      const refused = codeOf(err) === 'E_FORWARD_DENIED' || codeOf(err) === 'E_FORWARD'
      return {
        name,
        verdict: refused ? 'fail' : 'warn',
        detail: refused
          ? `the server refused a channel to a unix socket made on it just now (${path}): it does not forward to unix sockets`
          : message(err),
        fix: 'needed for ipc:// connection files and --listen unix clusters: AllowStreamLocalForwarding yes (or local) in its sshd_config',
      }
    }
  } finally {
    command.stdin.end()
    command.close()
  }
}
