/**
 * Engines across nodes: time from launch until the controller has registered 4 engines on 2 nodes × 2 slots.
 *
 * The nodes are network namespaces with an sshd and a host name of their own, which OpenMPI's mpiexec reaches
 * over ssh (test/support's node cluster, as test/engines/nodes.test.ts uses it); the controller is in a third
 * namespace, on its loopback, reachable only through its own sshd. Three launches, alternated in each round:
 *
 * - ipp-tunnel: `ipp-tunnel engines ENGINE_FILE -n 4 --mpi --host A:2,B:2` — one node tunnel per node (one ssh
 *   connection each) started by one mpiexec, then one mpiexec of `ipengine --mpi` on the nodes' loopback files;
 *   plus the launcher's own connection, through which it asks the hub about registration.
 * - anchor: the same `mpiexec --host A:2,B:2 -n 4` of `ipengine --mpi --sshkey=KEY` on the controller's engine
 *   file: each rank opens pyzmq's OpenSSH tunnels (`ssh -f -L … sleep 60` per channel) through the system `ssh`,
 *   with bench/engines.ts's wrapper (known_hosts, no SIGHUP) first on the ranks' PATH (`-x PATH`).
 * - the limit: the same mpiexec of `ipengine --mpi` with no tunnel at all, on the engine file of a second
 *   controller in the controller's namespace that listens on the namespace's address, routed from the nodes.
 *
 * "Registered" is counted on the controller's side (its "Engine Connected" log lines), with a 500 ms heartbeat
 * period as in bench/engines.ts. The ssh connections each launch makes are counted in the controller's sshd log
 * (its `Connection from` lines), by peer. After each launch every process it left in the namespaces (pyzmq's
 * detached `ssh -f` on the nodes, the `sleep 60` they run on the controller's side) is killed, and the
 * controller's sshd holds no connection before the next launch. Every sshd here gives its sessions a throw-away
 * HOME, so that logins (mpiexec's orted, pyzmq's tunnels) do not run root's shell start-up files: on the
 * development machine those run `pyenv init`, whose rehash takes a machine-wide lock (seconds per login, and a
 * session killed mid-rehash leaves the lock behind: every later login then waits 60 s).
 *
 * Run alone: `node dist/bench/run.js nodes`.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { createInterface } from 'node:readline'
import { promisify } from 'node:util'

import { engineArgvs, hostArgs, mpiEnvironment } from '../src/engines/index.js'
import { CLI } from '../test/support/cli.js'
import { sshPeers, startNodeCluster, type Netns, type NodeCluster } from '../test/support/index.js'
import { startController, type Controller } from '../test/support/ipp.js'
import { median, type BenchRow } from './common.js'
import { sshWrapper, stopGroup } from './engines.js'

const run = promisify(execFile)

const ROUNDS = 3
const ENGINES = 4
const TIMEOUT_MS = 120_000
const HEART = '--HeartMonitor.period=500'
/** Ours must be at least as fast: the anchor pays a handshake per channel and engine, we pay one per node. */
const TARGET_RATIO = 1

type Variant = 'ours' | 'anchor' | 'limit'

interface Launch {
  /** Launch → all engines registered; `undefined` when they were not in {@link TIMEOUT_MS}. */
  readonly ms: number | undefined
  /** Connections the controller's sshd accepted during the launch, by where they came from. */
  readonly ssh: Record<string, number>
  readonly output: string
  /** When the launcher printed each `--json` event (the last of a kind), in ms since launch: ours only. */
  readonly phases: Record<string, number>
  /** Processes left in the namespaces after the launch was stopped, which had to be killed. */
  readonly killed: number
}

const engineConnected = (ctl: Controller) => ctl.log().match(/engine::Engine Connected: \d+/g)?.length ?? 0

/** Peer address of every `Connection from ADDR port N` line sshd logged (LogLevel VERBOSE). */
const connectionsIn = (log: string) =>
  [...log.matchAll(/Connection from (\S+) port \d+/g)].map((m) => m[1] ?? '')

async function netnsPids(ns: Netns): Promise<number[]> {
  const { stdout } = await run('ip', ['netns', 'pids', ns.name])
  return stdout.split(/\s+/).filter(Boolean).map(Number)
}

function kill(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal)
  } catch {
    // gone
  }
}

/** Time since `started` until `ctl` has counted `target` engines, or `undefined` after {@link TIMEOUT_MS}. */
async function registered(ctl: Controller, target: number, started: number): Promise<number | undefined> {
  while (engineConnected(ctl) < target) {
    if (performance.now() - started > TIMEOUT_MS) return undefined
    await sleep(10)
  }
  return performance.now() - started
}

interface Bench {
  readonly cluster: NodeCluster
  /** The second controller, listening on the controller namespace's address: for the launch with no tunnel. */
  readonly direct: Controller
  /** What runs in each namespace between launches: the nodes' sshds, the controllers and their sshd. */
  readonly baseline: ReadonlyMap<Netns, ReadonlySet<number>>
  /** The ssh wrapper's directory, first on the anchor's PATH. */
  readonly pathDir: string
  readonly hosts: string
}

/**
 * Ends what a launch left in the namespaces (e.g. pyzmq's `ssh -f` on the nodes and the `sleep 60` they run on
 * the controller's side): waits up to `graceMs` for it to exit by itself, then SIGTERM, then SIGKILL. Returns
 * how many processes had to be killed. Then waits for the controller's sshd to hold no connection.
 */
async function cleanNamespaces(bench: Bench, graceMs: number): Promise<number> {
  const leftovers = async () => {
    const pids: number[] = []
    for (const [ns, keep] of bench.baseline) pids.push(...(await netnsPids(ns)).filter((p) => !keep.has(p)))
    return pids
  }
  const deadline = performance.now() + graceMs
  let left = await leftovers()
  while (left.length > 0 && performance.now() < deadline) {
    await sleep(100)
    left = await leftovers()
  }
  const killed = left.length
  for (const pid of left) kill(pid, 'SIGTERM')
  for (let i = 0; i < 20 && (await leftovers()).length > 0; i++) await sleep(100)
  for (const pid of await leftovers()) kill(pid, 'SIGKILL')
  const { remote } = bench.cluster
  for (let i = 0; i < 100 && (await sshPeers(remote.ns, remote.sshd)).length > 0; i++) await sleep(100)
  return killed
}

/** Starts one launch, waits for registration on `ctl`, stops it and cleans the nodes. */
async function measure(
  bench: Bench,
  ctl: Controller,
  start: () => ChildProcess,
  stop: (child: ChildProcess) => Promise<void>,
  graceMs: number,
): Promise<Launch> {
  const { remote } = bench.cluster
  const logBefore = remote.sshd.log().length
  const target = engineConnected(ctl) + ENGINES
  const started = performance.now()
  const child = start()
  const tails = { stdout: '', stderr: '' }
  for (const stream of ['stdout', 'stderr'] as const) {
    child[stream]?.on('data', (d: Buffer) => (tails[stream] = (tails[stream] + d.toString()).slice(-3000)))
  }
  const phases: Record<string, number> = {}
  if (child.stdout !== null) {
    createInterface({ input: child.stdout, crlfDelay: Infinity }).on('line', (line) => {
      const event = /^\{"event":"([\w-]+)"/.exec(line)?.[1]
      if (event !== undefined) phases[event] = performance.now() - started
    })
  }
  let ms: number | undefined
  try {
    ms = await registered(ctl, target, started)
  } finally {
    await stop(child)
  }
  const killed = await cleanNamespaces(bench, graceMs)
  const names = new Map<string, string>([[remote.ns.hostAddr, 'launcher host']])
  for (const node of bench.cluster.nodes) names.set(node.sshd.host, node.name)
  const ssh: Record<string, number> = {}
  for (const peer of connectionsIn(remote.sshd.log().slice(logBefore))) {
    const name = names.get(peer) ?? peer
    ssh[name] = (ssh[name] ?? 0) + 1
  }
  return { ms, ssh, output: `${tails.stdout}\n${tails.stderr}`, phases, killed }
}

/** The CLI as the node test runs it; stopped with SIGTERM, as a user would, and left to clean up by itself. */
function ours(bench: Bench) {
  const { remote, env } = bench.cluster
  const start = () =>
    spawn(
      process.execPath,
      [
        CLI,
        'engines',
        remote.ctl.engineFile,
        '-n',
        String(ENGINES),
        '--mpi',
        '--host',
        bench.hosts,
        '--json',
        '--identity',
        remote.sshd.clientKey,
        '--known-hosts',
        remote.sshd.knownHostsFile,
        '--ssh-config',
        '/dev/null',
      ],
      { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true },
    )
  const stop = async (child: ChildProcess) => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()))
    child.kill('SIGTERM')
    const timer = setTimeout(() => {
      if (child.pid !== undefined) kill(-child.pid, 'SIGKILL')
    }, 20_000)
    await gone
    clearTimeout(timer)
  }
  // ours removes its node tunnels and engines itself: give it time before anything is killed
  return measure(bench, remote.ctl, start, stop, 10_000)
}

/** One `mpiexec --host … -n 4 ipengine --mpi` on `ctl`'s engine file; `path` goes first on PATH. */
function mpiLaunch(bench: Bench, ctl: Controller, engineArgs: string[], mpiArgs: string[], path?: string) {
  const [argv] = engineArgvs({
    file: ctl.engineFile,
    n: ENGINES,
    mpi: true,
    mpiArgs: [...hostArgs({ kind: 'host', value: bench.hosts }), ...mpiArgs],
    extraArgs: engineArgs,
  })
  const [program, ...args] = argv ?? []
  const base: NodeJS.ProcessEnv = { ...process.env, ...bench.cluster.env, PYTHONUNBUFFERED: '1' }
  if (path !== undefined) base.PATH = `${path}:${process.env.PATH ?? ''}`
  const start = () =>
    spawn(program ?? 'mpiexec', args, {
      env: mpiEnvironment(base, process.getuid?.() === 0),
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    })
  // pyzmq's `ssh -f` tunnels outlive their engines (`sleep 60`): kill them soon
  return measure(bench, ctl, start, stopGroup, 2000)
}

function anchor(bench: Bench) {
  const { remote } = bench.cluster
  return mpiLaunch(bench, remote.ctl, [`--sshkey=${remote.sshd.clientKey}`], ['-x', 'PATH'], bench.pathDir)
}

function limit(bench: Bench) {
  return mpiLaunch(bench, bench.direct, [], [])
}

const describePhases = (phases: Record<string, number>) =>
  [
    ['ready', 'launcher tunnel ready'],
    ['node-ready', 'node tunnels ready'],
    ['engine-started', "engines' mpiexec started"],
  ]
    .map(([event = '', what = '']) => `${what} ${phases[event]?.toFixed(0) ?? '—'} ms`)
    .join(', ')

const total = (ssh: Record<string, number>) => Object.values(ssh).reduce((a, b) => a + b, 0)
const describe = (ssh: Record<string, number>) =>
  Object.entries(ssh)
    .map(([peer, n]) => `${peer} ${String(n)}`)
    .join(', ') || 'none'

export async function benchNodes(): Promise<BenchRow[]> {
  // sessions skip root's shell start-up files (see above)
  const home = await mkdtemp(join(tmpdir(), 'ippt-bench-nodes-home-'))
  const owned: { cluster?: NodeCluster; direct?: Controller; pathDir?: string } = {}
  try {
    const cluster = (owned.cluster = await startNodeCluster([HEART], { sshdConfig: `SetEnv HOME=${home}` }))
    const { remote, nodes } = cluster
    // listening on the namespace's address, which the nodes' routes reach
    const direct = (owned.direct = await startController({
      netns: remote.ns,
      ip: remote.ns.nsAddr,
      extraArgs: [HEART],
    }))
    const pathDir = (owned.pathDir = await sshWrapper({
      identity: remote.sshd.clientKey,
      knownHosts: remote.sshd.knownHostsFile,
    }))
    const baseline = new Map<Netns, ReadonlySet<number>>()
    for (const ns of [remote.ns, ...nodes.map((n) => n.ns)]) baseline.set(ns, new Set(await netnsPids(ns)))
    const bench: Bench = {
      cluster,
      direct,
      baseline,
      pathDir,
      hosts: nodes.map((n) => `${n.name}:2`).join(','),
    }
    const runners: Record<Variant, (b: Bench) => Promise<Launch>> = {
      ours,
      anchor,
      limit,
    }
    const order: Variant[] = ['anchor', 'ours', 'limit']
    const ms: Record<Variant, number[]> = { ours: [], anchor: [], limit: [] }
    const ssh: Record<Variant, number[]> = { ours: [], anchor: [], limit: [] }
    const perPeer: Partial<Record<Variant, Record<string, number>>> = {}
    let anchorFailed = false
    for (let round = 0; round < ROUNDS; round++) {
      // each round starts with another launch, so that none always runs first
      const rotated = [...order.slice(round % 3), ...order.slice(0, round % 3)]
      for (const variant of rotated) {
        const got = await runners[variant](bench)
        console.error(
          `  nodes round ${String(round + 1)} ${variant}: ${got.ms === undefined ? 'not registered' : `${got.ms.toFixed(0)} ms`}; ` +
            `ssh connections to the controller: ${describe(got.ssh)}` +
            (variant === 'ours' ? `; ${describePhases(got.phases)}` : '') +
            (got.killed > 0 ? `; ${String(got.killed)} processes left, killed` : ''),
        )
        if (got.ms === undefined) {
          if (variant === 'anchor') {
            anchorFailed = true
            continue
          }
          throw new Error(
            `${variant}: not all ${String(ENGINES)} engines registered in ${String(TIMEOUT_MS)} ms:\n${got.output}`,
          )
        }
        ms[variant].push(got.ms)
        ssh[variant].push(total(got.ssh))
        perPeer[variant] = got.ssh
      }
    }
    const range = (values: number[]) => {
      const lo = Math.min(...values)
      const hi = Math.max(...values)
      return lo === hi ? String(lo) : `${String(lo)}–${String(hi)}`
    }
    const fromNodes = (variant: Variant) => {
      const counts = nodes.map((n) => perPeer[variant]?.[n.name] ?? 0)
      return counts.every((c) => c === counts[0])
        ? `${String(counts[0])} per node`
        : `${counts.join(' + ')} from the nodes`
    }
    const launcher = perPeer.ours?.['launcher host'] ?? 0
    const limitMs = median(ms.limit)
    return [
      {
        name: `nodes: launch → 2 nodes × 2 engines registered (mpiexec --host)`,
        ours: median(ms.ours),
        anchor: anchorFailed || ms.anchor.length === 0 ? undefined : median(ms.anchor),
        anchorName: 'ipengine --ssh under the same mpiexec',
        unit: 'ms',
        better: 'lower',
        targetRatio: TARGET_RATIO,
        note:
          `median of ${String(ROUNDS)} alternating rounds; ssh connections to the controller's sshd: ours ` +
          `${range(ssh.ours)} (${fromNodes('ours')} + ${String(launcher)} for the launcher's hub query), anchor ` +
          `${ms.anchor.length === 0 ? '—' : `${range(ssh.anchor)} (${fromNodes('anchor')})`}; ` +
          `no tunnel (the limit): ${limitMs.toFixed(0)} ms` +
          (anchorFailed ? `; anchor timed out after ${String(TIMEOUT_MS)} ms` : ''),
      },
    ]
  } finally {
    await owned.direct?.close()
    await owned.cluster?.close()
    if (owned.pathDir !== undefined) await rm(owned.pathDir, { recursive: true, force: true })
    await rm(home, { recursive: true, force: true })
  }
}
