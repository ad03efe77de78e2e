import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import {
  createNetns,
  portPrinted,
  processesWith,
  startSshd,
  type Netns,
  type Sshd,
} from '../test/support/index.js'

/** What every benchmark reports: one row per figure, ours beside the anchor measured in the same run. */
export interface BenchRow {
  readonly name: string
  readonly ours: number
  /** The anchor's figure; `undefined` when the anchor could not do it at all (e.g. timed out). */
  readonly anchor: number | undefined
  /** Who the anchor is, e.g. `jupyter_client`, `ssh -L`. */
  readonly anchorName: string
  readonly unit: string
  /** Whether a bigger figure is better (throughput) or a smaller one (latency, time). */
  readonly better: 'higher' | 'lower'
  /**
   * How many times better than the anchor ours must be, e.g. 10 means ≥ 10x; 0.8 means ≥ 0.8x.
   * 0 with `anchor: undefined` marks a figure with no anchor and no target (shown with dashes); 0 with an anchor, a
   * figure shown beside its anchor with no target of its own.
   */
  readonly targetRatio: number
  /** Extra words for the table, e.g. what was measured and how often. */
  readonly note?: string
}

/** ours/anchor when higher is better, anchor/ours when lower is better: always "times better than". */
export function ratioOf(row: BenchRow): number | undefined {
  if (row.anchor === undefined || row.anchor === 0 || row.ours === 0 || Number.isNaN(row.ours))
    return undefined
  return row.better === 'higher' ? row.ours / row.anchor : row.anchor / row.ours
}

function round(value: number): string {
  if (value >= 100) return String(Math.round(value))
  if (value >= 10) return value.toFixed(1)
  return value.toFixed(2)
}

/** A Markdown table of the rows, the form docs/benchmarks.md carries. */
export function markdownTable(rows: readonly BenchRow[]): string {
  const lines = [
    '| benchmark | ipp-tunnel | anchor | unit | better by | target | met |',
    '|---|---:|---:|---|---:|---|---|',
  ]
  for (const row of rows) {
    if (row.anchor === undefined && row.targetRatio === 0) {
      // a figure reported for its own sake (e.g. memory): no anchor, no target
      const note = row.note === undefined ? '' : ` — ${row.note}`
      lines.push(`| ${row.name}${note} | ${round(row.ours)} | — | ${row.unit} | — | — | — |`)
      continue
    }
    const ratio = ratioOf(row)
    const anchor = row.anchor === undefined ? 'failed' : `${round(row.anchor)} (${row.anchorName})`
    const noTarget = row.targetRatio === 0
    const met = noTarget
      ? '—'
      : ratio === undefined
        ? row.anchor === undefined
          ? 'yes (the anchor failed)'
          : 'n/a'
        : ratio >= row.targetRatio
          ? 'yes'
          : 'no'
    const note = row.note === undefined ? '' : ` — ${row.note}`
    lines.push(
      `| ${row.name}${note} | ${round(row.ours)} | ${anchor} | ${row.unit} | ${ratio === undefined ? '—' : `${round(ratio)}x`} | ${noTarget ? '—' : `≥ ${String(Number(row.targetRatio.toFixed(2)))}x`} | ${met} |`,
    )
  }
  return lines.join('\n')
}

/** Median of a non-empty list. */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  const value = sorted.length % 2 === 1 ? sorted[mid] : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2
  if (value === undefined) throw new Error('median of nothing')
  return value
}

/** A TCP server on 127.0.0.1 (a port the kernel picks) that reads and drops whatever it is sent. */
export async function listenSink(): Promise<Server> {
  const server = createServer((socket) => socket.on('error', () => undefined).resume())
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return server
}

/** The port a listening TCP server is bound to. */
export function listeningPort(server: Server): number {
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return address.port
}

/** A TCP relay in a process of its own that delays every chunk by `oneWayMs` in each direction. */
export interface DelayRelay {
  readonly host: '127.0.0.1'
  readonly port: number
  /** The relay's pid: `kill -USR2 PID` resets every connection through it, as when this side's address changes. */
  readonly pid: number
  close(): Promise<void>
}

// Timers of one duration fire in the order they were set, so each direction keeps its byte order; a FIN or a
// reset is delayed like the data before it.
const RELAY = String.raw`
const net = require('node:net')
const [host, port, delay] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])]
const later = (f) => setTimeout(f, delay)
const open = new Set()
const server = net.createServer((client) => {
  const upstream = net.connect(port, host)
  for (const [from, to] of [[client, upstream], [upstream, client]]) {
    open.add(from)
    from.on('close', () => open.delete(from))
    from.setNoDelay(true)
    from.on('data', (chunk) => later(() => to.destroyed || to.write(chunk)))
    from.on('end', () => later(() => to.destroyed || to.end()))
    from.on('error', () => later(() => to.destroy()))
  }
})
server.listen(0, '127.0.0.1', () => process.stdout.write(server.address().port + '\n'))
process.stdin.on('end', () => process.exit(0)).resume()
process.on('SIGUSR2', () => { for (const s of open) s.resetAndDestroy() })
`

/**
 * Starts a delaying relay on 127.0.0.1 (a port the kernel picks) to `host:port`: `oneWayMs` each way, i.e. a round
 * trip of twice that on every connection through it. This kernel has no `sch_netem`, so this stands in for
 * `tc qdisc … netem delay`; the relay runs in a node process of its own, away from the bench's event loop.
 */
export async function startDelayRelay(host: string, port: number, oneWayMs: number): Promise<DelayRelay> {
  const child = spawn(process.execPath, ['-e', RELAY, host, String(port), String(oneWayMs)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  const relayPort = await portPrinted(child, 'delay relay')
  return {
    host: '127.0.0.1',
    port: relayPort,
    pid: child.pid ?? 0,
    close: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = once(child, 'exit')
      child.kill('SIGKILL')
      await exited
    },
  }
}

/**
 * SIGKILLs every process whose command line holds `text` (what a path left: remote processes, detached `ssh -f`);
 * one that is gone already is skipped.
 *
 * @example
 * await killAll(join(root, 'remote'))
 */
export async function killAll(text: string): Promise<void> {
  for (const pid of await processesWith(text))
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // gone
    }
}

/**
 * An OpenSSH sshd in a network namespace of its own, reached through a {@link DelayRelay}, and what an anchor's
 * plain `ssh`/`scp` need to reach it by an alias, as a user's ~/.ssh/config gives them.
 */
export interface RelayedSshd {
  readonly ns: Netns
  readonly sshd: Sshd
  readonly relay: DelayRelay
  /** A temp dir of the bench's own, removed on close. */
  readonly root: string
  /** The `Host` the ssh config names the server by; it stands in the command lines of the anchors' ssh processes. */
  readonly alias: string
  /** A known_hosts file with the server's host key at the relay's address and port. */
  readonly knownHosts: string
  /** `PATH` with `ssh` and `scp` first that read the alias's config (`-F`) and reach the server through the relay. */
  readonly path: string
  /**
   * Kills what was left with `root` or `alias` in its command line, stops the relay, sshd and the namespace, and
   * removes `root`.
   */
  close(): Promise<void>
}

/**
 * Starts an sshd in a namespace (`extraConfig` added to its sshd_config) behind a relay that delays each chunk by
 * `oneWayMs` each way, a temp dir named from `prefix`, and in it a known_hosts, an ssh config for an alias (the
 * sshd's key, known_hosts, the relay, `BatchMode`) and `ssh`/`scp` wrappers that read it.
 *
 * @example
 * const peer = await startRelayedSshd('ippt-bench-kernels-', 15)
 * try {
 *   await runPython(code, { args: [peer.alias], env: { PATH: peer.path } })
 * } finally {
 *   await peer.close()
 * }
 */
export async function startRelayedSshd(
  prefix: string,
  oneWayMs: number,
  options: { readonly extraConfig?: string } = {},
): Promise<RelayedSshd> {
  const ns = await createNetns()
  const sshd = await startSshd({
    netns: ns,
    ...(options.extraConfig !== undefined && { extraConfig: options.extraConfig }),
  })
  const relay = await startDelayRelay(sshd.host, sshd.port, oneWayMs)
  const root = await mkdtemp(join(tmpdir(), prefix))
  const alias = `ippt-bench-${root.slice(-6).toLowerCase()}`
  const close = async (): Promise<void> => {
    await killAll(root)
    await killAll(alias)
    await relay.close()
    await sshd.close()
    await ns.close()
    await rm(root, { recursive: true, force: true })
  }
  try {
    const knownHosts = join(root, 'known_hosts')
    await writeFile(knownHosts, `[${relay.host}]:${relay.port} ${sshd.hostKeyPub}\n`, { mode: 0o600 })
    // pyzmq's tunnels and ipcluster's launchers run plain `ssh` and `scp`, with no way to pass options but -i and -p
    const sshConfig = join(root, 'ssh_config')
    await writeFile(
      sshConfig,
      [
        `Host ${alias}`,
        `  HostName ${relay.host}`,
        `  Port ${relay.port}`,
        `  User ${sshd.user}`,
        `  IdentityFile ${sshd.clientKey}`,
        '  IdentitiesOnly yes',
        `  UserKnownHostsFile ${knownHosts}`,
        '  StrictHostKeyChecking yes',
        '  BatchMode yes',
        '',
      ].join('\n'),
      { mode: 0o600 },
    )
    const bin = join(root, 'bin')
    await mkdir(bin)
    // SIGHUP ignored: pexpect runs each `ssh -f` as the leader of a new session on a pty, and daemon() in `-f`
    // forks and exits the leader before the child calls setsid(), so the kernel hangs up the child whenever the
    // parent wins that race (most tunnels on this 2-core machine: the kernel_info reply never came). ssh keeps an
    // ignored SIGHUP ignored; from a login shell, where ssh does not lead the session, the race cannot happen.
    await writeFile(join(bin, 'ssh'), `#!/bin/sh\ntrap '' HUP\nexec /usr/bin/ssh -F ${sshConfig} "$@"\n`)
    await writeFile(join(bin, 'scp'), `#!/bin/sh\nexec /usr/bin/scp -F ${sshConfig} "$@"\n`)
    await chmod(join(bin, 'ssh'), 0o755)
    await chmod(join(bin, 'scp'), 0o755)
    const path = `${bin}:${process.env.PATH ?? ''}`
    return { ns, sshd, relay, root, alias, knownHosts, path, close }
  } catch (err) {
    await close()
    throw err
  }
}
