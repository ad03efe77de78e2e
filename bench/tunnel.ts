/**
 * Tunnel benchmarks, one run against one OpenSSH sshd in its own network namespace:
 *  (a) start → every forward of an ipcontroller-client.json ready: ipp-tunnel vs pyzmq's
 *      `zmq.ssh.tunnel.tunnel_connection` over OpenSSH (what ipyparallel's Client uses);
 *  (b) round trip of a small ZeroMQ request/reply: through ipp-tunnel, through `ssh -L`, and direct;
 *  (c) throughput of 1 MiB ZeroMQ messages: ipp-tunnel vs `ssh -L`.
 *
 * Run alone: `node dist/bench/run.js tunnel`.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createConnection } from 'node:net'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'

import { Dealer, Request } from 'zeromq'

import { openTunnel } from '../src/tunnel/index.js'
import { CLI, JsonLines, spawnCli } from '../test/support/cli.js'
import {
  createNetns,
  sshArgsOf,
  sshOptionsOf,
  startSshd,
  type Netns,
  type Sshd,
  freePort,
} from '../test/support/index.js'
import { PYTHON, runPython, startController, stopProcess } from '../test/support/ipp.js'
import { median, type BenchRow } from './common.js'

const READY_RUNS = 5
const PINGS = 3000
const ROUNDS = 6
/** Untimed rounds on every path before the timed ones. */
const WARMUP_ROUNDS = 6
/** Untimed round trips at the start of each round (a new connection). */
const UNTIMED_TRIPS = 200
const MIB = 1024 * 1024
const MIB_MESSAGES = 200
const WINDOW = 8

/** A pyzmq REP echo and a ROUTER that acks, bound on every address of the namespace. */
const ECHO_SERVER = String.raw`
import sys, zmq
ctx = zmq.Context()
rep = ctx.socket(zmq.REP); rep_port = rep.bind_to_random_port('tcp://0.0.0.0')
router = ctx.socket(zmq.ROUTER); router_port = router.bind_to_random_port('tcp://0.0.0.0')
print(rep_port, router_port, flush=True)
poller = zmq.Poller(); poller.register(rep, zmq.POLLIN); poller.register(router, zmq.POLLIN)
while True:
    for sock, _ in poller.poll():
        if sock is rep:
            rep.send(rep.recv(copy=False), copy=False)
        else:
            ident, _body = router.recv_multipart(copy=False)
            router.send_multipart([ident, b'k'])
`

/** pyzmq's tunnel_connection for each endpoint of a client file, as ipyparallel's Client does it. */
export const PYZMQ_READY = String.raw`
import json, subprocess, sys, time, zmq
from zmq.ssh import tunnel
info, server, keyfile = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = zmq.Context()
channels = ['registration', 'control', 'mux', 'task', 'iopub', 'notification', 'broadcast']
start = time.perf_counter()
pids = []
try:
    for ch in channels:
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        pids.append(tunnel.tunnel_connection(s, 'tcp://127.0.0.1:%d' % info[ch], server, keyfile=keyfile, timeout=60))
    print(json.dumps({'ms': (time.perf_counter() - start) * 1000}))
except Exception as e:
    print(json.dumps({'error': '%s: %s' % (type(e).__name__, e), 'ms': (time.perf_counter() - start) * 1000}))
finally:
    for pid in pids:
        try:
            import os, signal
            os.kill(pid, signal.SIGTERM)
        except Exception:
            pass
`

export async function waitConnectable(port: number, child: ChildProcess): Promise<void> {
  for (;;) {
    if (child.exitCode !== null) throw new Error(`ssh -L exited ${child.exitCode}`)
    const ok = await new Promise<boolean>((resolve) => {
      const socket = createConnection({ host: '127.0.0.1', port })
      socket.once('connect', () => {
        socket.destroy()
        resolve(true)
      })
      socket.once('error', () => resolve(false))
    })
    if (ok) return
    await sleep(20)
  }
}

/** A kernel file (no key) whose channels all go to `shell` on the server's loopback, but control to `control`. */
export async function writeBenchKernel(file: string, shell: number, control: number): Promise<void> {
  const kernel = {
    shell_port: shell,
    control_port: control,
    iopub_port: shell,
    stdin_port: shell,
    hb_port: shell,
    ip: '127.0.0.1',
    transport: 'tcp',
    key: '',
    signature_scheme: 'hmac-sha256',
    kernel_name: 'bench',
  }
  await writeFile(file, JSON.stringify(kernel), { mode: 0o600 })
}

/** `ssh` options for OpenSSH's own forwarding client (`-N`, no config, batch), with the same key and known_hosts as ours. */
export function opensshForwardArgs(sshd: Sshd): string[] {
  return [
    '-N',
    '-F',
    '/dev/null',
    '-i',
    sshd.clientKey,
    '-o',
    `UserKnownHostsFile=${sshd.knownHostsFile}`,
    '-o',
    'StrictHostKeyChecking=yes',
    '-o',
    'ExitOnForwardFailure=yes',
    '-o',
    'BatchMode=yes',
    '-p',
    String(sshd.port),
  ]
}

/** OpenSSH's own `ssh -N -L` for one port, with the same key and known_hosts as ours. */
export async function sshForward(
  sshd: Sshd,
  remotePort: number,
): Promise<{ port: number; pid: number; close(): Promise<void> }> {
  const port = await freePort()
  const child = spawn(
    'ssh',
    [
      ...opensshForwardArgs(sshd),
      '-L',
      `127.0.0.1:${port}:127.0.0.1:${remotePort}`,
      `${sshd.user}@${sshd.host}`,
    ],
    { stdio: 'ignore' },
  )
  await waitConnectable(port, child)
  if (child.pid === undefined) throw new Error('ssh -L has no pid')
  return { port, pid: child.pid, close: () => stopProcess(child) }
}

/**
 * `ipp-tunnel up` (a process of its own, as users run it and as `ssh -L` runs) on a kernel-shaped connection
 * file whose shell and control channels are the echo server's two ports.
 */
async function oursForward(
  sshd: Sshd,
  dir: string,
  shell: number,
  control: number,
  listen: 'tcp' | 'unix' = 'tcp',
) {
  const file = join(dir, `kernel-bench-${listen}.json`)
  await writeBenchKernel(file, shell, control)
  const upArgs = [
    'up',
    file,
    '--json',
    '--out',
    join(dir, `kernel-bench-${listen}-loopback.json`),
    '--listen',
    listen,
    '--ssh',
    `${sshd.user}@${sshd.host}:${sshd.port}`,
    ...sshArgsOf(sshd),
  ]
  // IPPT_BENCH_PROFILE=dir: the TCP \`up\` writes a CPU profile (.cpuprofile) there when it exits
  const profile = process.env.IPPT_BENCH_PROFILE
  const child =
    profile !== undefined && listen === 'tcp'
      ? spawn(process.execPath, ['--cpu-prof', `--cpu-prof-dir=${profile}`, CLI, ...upArgs], {
          stdio: ['ignore', 'pipe', 'pipe'],
        })
      : spawnCli(upArgs)
  const ready = await new JsonLines(child).next('ready')
  const forwards = ready.forwards as { channel: string; local: string }[]
  // a ZeroMQ endpoint for each channel: tcp://127.0.0.1:port, or ipc://path for a unix listener
  const endpoint = (channel: string): string => {
    const local = forwards.find((f) => f.channel === channel)?.local
    if (local === undefined) throw new Error(`no ${channel} forward`)
    return listen === 'unix' ? `ipc://${local}` : `tcp://${local}`
  }
  if (child.pid === undefined) throw new Error('up has no pid')
  return {
    rep: endpoint('shell'),
    router: endpoint('control'),
    pid: child.pid,
    close: () => stopProcess(child),
  }
}

async function roundTrips(endpoint: string): Promise<number[]> {
  const socket = new Request({ linger: 0, receiveTimeout: 10_000 })
  socket.connect(endpoint)
  try {
    const payload = Buffer.from('ping')
    for (let i = 0; i < UNTIMED_TRIPS; i++) {
      await socket.send(payload)
      await socket.receive()
    }
    const samples: number[] = []
    for (let i = 0; i < PINGS / ROUNDS; i++) {
      const started = process.hrtime.bigint()
      await socket.send(payload)
      await socket.receive()
      samples.push(Number(process.hrtime.bigint() - started) / 1000)
    }
    return samples
  } finally {
    socket.close()
  }
}

async function throughputMiBs(endpoint: string): Promise<number> {
  const socket = new Dealer({ linger: 0, receiveTimeout: 30_000, sendHighWaterMark: WINDOW * 2 })
  socket.connect(endpoint)
  const body = Buffer.alloc(MIB, 7)
  try {
    const burst = async (count: number): Promise<void> => {
      let sent = 0
      let acked = 0
      const acks = (async () => {
        while (acked < count) {
          await socket.receive()
          acked++
        }
      })()
      while (sent < count) {
        while (sent - acked >= WINDOW) await sleep(0)
        await socket.send(body)
        sent++
      }
      await acks
    }
    await burst(10)
    const started = performance.now()
    await burst(MIB_MESSAGES)
    return MIB_MESSAGES / ((performance.now() - started) / 1000)
  } finally {
    socket.close()
  }
}

/** The arguments of {@link PYZMQ_READY}: the client file's JSON, the ssh server, and pyzmq's keyfile (with our options). */
export function pyzmqArgs(sshd: Sshd, clientJson: string): string[] {
  // pyzmq pastes keyfile into the ssh command line: the same key and known_hosts as ours, nothing else
  return [
    clientJson,
    `${sshd.user}@${sshd.host}:${sshd.port}`,
    `${sshd.clientKey} -F /dev/null -o UserKnownHostsFile=${sshd.knownHostsFile} -o StrictHostKeyChecking=yes`,
  ]
}

async function pyzmqReadyMs(sshd: Sshd, clientJson: string): Promise<{ ms: number; error?: string }> {
  const result = await runPython(PYZMQ_READY, {
    args: pyzmqArgs(sshd, clientJson),
    timeoutMs: 120_000,
  })
  const line = result.stdout.trim().split('\n').at(-1) ?? ''
  try {
    return JSON.parse(line) as { ms: number; error?: string }
  } catch {
    return { ms: Number.NaN, error: `pyzmq run failed: ${result.stderr.trim().split('\n').at(-1) ?? ''}` }
  }
}

async function oursReadyMs(sshd: Sshd, file: string, out: string): Promise<number> {
  const started = performance.now()
  const tunnel = await openTunnel(file, { ...sshOptionsOf(sshd), agent: false, out })
  const ms = performance.now() - started
  await tunnel.close()
  return ms
}

/**
 * All three tunnel benchmarks in one run.
 *
 * @example for (const row of await benchTunnel()) console.log(row.name, row.ours, row.anchor)
 */
export async function benchTunnel(): Promise<BenchRow[]> {
  const ns: Netns = await createNetns()
  const dir = await mkdtemp(join(tmpdir(), 'ippt-bench-'))
  let echo: ChildProcess | undefined
  try {
    const sshd = await startSshd({ netns: ns })
    const controller = await startController({ netns: ns, ssh: `${sshd.user}@${sshd.host}:${sshd.port}` })
    try {
      // (a) ready time, alternating so both see the same machine state
      const clientJson = await readFile(controller.clientFile, 'utf8')
      const ours: number[] = []
      const anchor: number[] = []
      let anchorError: string | undefined
      for (let i = 0; i < READY_RUNS; i++) {
        ours.push(await oursReadyMs(sshd, controller.clientFile, join(dir, 'client.json')))
        const py = await pyzmqReadyMs(sshd, clientJson)
        if (py.error !== undefined) anchorError = py.error
        else anchor.push(py.ms)
      }

      // (b), (c): one echo server in the namespace, reached three ways
      // One core for every process on the paths measured below (this process, the echo server, sshd, ssh -L,
      // ipp-tunnel): on a small VM, wake-ups across cores otherwise add noise larger than the paths differ by.
      await pinToCore(process.pid)
      for (const pid of await netnsPids(ns)) await pinToCore(pid)
      echo = spawn('ip', ['netns', 'exec', ns.name, PYTHON, '-c', ECHO_SERVER], {
        stdio: ['ignore', 'pipe', 'inherit'],
      })
      const printed = await new Promise<string>((resolve, reject) => {
        let text = ''
        echo?.stdout?.on('data', (d: Buffer) => {
          text += d.toString()
          if (text.includes('\n')) resolve(text)
        })
        echo?.once('exit', (code) => reject(new Error(`echo server exited ${String(code)}`)))
      })
      const [repPort, routerPort] = printed.trim().split(/\s+/).map(Number)
      if (repPort === undefined || routerPort === undefined) throw new Error(`echo server printed ${printed}`)
      const tunnel = await oursForward(sshd, dir, repPort, routerPort)
      const unixTunnel = await oursForward(sshd, dir, repPort, routerPort, 'unix')
      const sshRep = await sshForward(sshd, repPort)
      const sshRouter = await sshForward(sshd, routerPort)
      try {
        // interleaved rounds, so that drift in the machine's state hits all three paths alike
        const samples = {
          direct: [] as number[],
          ssh: [] as number[],
          ours: [] as number[],
          unix: [] as number[],
        }
        // CPU time of the forwarding process itself (ours vs ssh -L), less noisy than wall time on a busy machine
        const cpu = { ssh: 0, ours: 0 }
        // the steady state of a tunnel that has been up a while: V8 optimises the forwarding path only after some
        // thousands of messages, and a just-started `up` would otherwise be measured while it compiles (same warm-up
        // for ssh -L, which has nothing to compile)
        for (const at of [`tcp://127.0.0.1:${sshRep.port}`, tunnel.rep, unixTunnel.rep]) {
          for (let i = 0; i < WARMUP_ROUNDS; i++) await roundTrips(at)
        }
        for (let round = 0; round < ROUNDS; round++) {
          samples.direct.push(...(await roundTrips(`tcp://${ns.nsAddr}:${repPort}`)))
          const viaSsh = await withCpu(sshRep.pid, () => roundTrips(`tcp://127.0.0.1:${sshRep.port}`))
          samples.ssh.push(...viaSsh.result)
          cpu.ssh += viaSsh.cpu
          const viaOurs = await withCpu(tunnel.pid, () => roundTrips(tunnel.rep))
          samples.ours.push(...viaOurs.result)
          cpu.ours += viaOurs.cpu
          samples.unix.push(...(await roundTrips(unixTunnel.rep)))
        }
        // every trip of the rounds, the untimed ones too
        const perTrip = (ms: number): string =>
          ((ms * 1000) / (ROUNDS * UNTIMED_TRIPS + samples.ssh.length)).toFixed(1)
        console.error(
          `  round trip CPU µs of the forwarding process: ssh -L ${perTrip(cpu.ssh)}, ours ${perTrip(cpu.ours)}`,
        )
        const direct = median(samples.direct)
        const viaSsh = median(samples.ssh)
        const viaOurs = median(samples.ours)
        const viaUnix = median(samples.unix)
        const pct = (xs: number[], q: number): string =>
          ([...xs].sort((a, b) => a - b)[Math.floor(xs.length * q)] ?? 0).toFixed(0)
        console.error(
          `  round trip µs p10/p50/p90: direct ${pct(samples.direct, 0.1)}/${pct(samples.direct, 0.5)}/${pct(samples.direct, 0.9)}, ssh -L ${pct(samples.ssh, 0.1)}/${pct(samples.ssh, 0.5)}/${pct(samples.ssh, 0.9)}, ours ${pct(samples.ours, 0.1)}/${pct(samples.ours, 0.5)}/${pct(samples.ours, 0.9)}, ours unix ${pct(samples.unix, 0.1)}/${pct(samples.unix, 0.5)}/${pct(samples.unix, 0.9)}`,
        )
        const sshRouterAt = `tcp://127.0.0.1:${sshRouter.port}`
        const mib = { ssh: [] as number[], ours: [] as number[], sshCpu: 0, oursCpu: 0 }
        for (let round = 0; round < 2; round++) {
          const viaSsh = await withCpu(sshRouter.pid, () => throughputMiBs(sshRouterAt))
          mib.ssh.push(viaSsh.result)
          mib.sshCpu += viaSsh.cpu
          const viaOurs = await withCpu(tunnel.pid, () => throughputMiBs(tunnel.router))
          mib.ours.push(viaOurs.result)
          mib.oursCpu += viaOurs.cpu
        }
        const perMiB = (ms: number): string => (ms / (2 * (MIB_MESSAGES + 10))).toFixed(2)
        console.error(
          `  1 MiB messages, CPU ms per MiB of the forwarding process: ssh -L ${perMiB(mib.sshCpu)}, ours ${perMiB(mib.oursCpu)}`,
        )
        return [
          {
            name: 'tunnel: start → all 7 forwards of ipcontroller-client.json ready',
            ours: median(ours),
            anchor: anchor.length > 0 ? median(anchor) : undefined,
            anchorName: 'pyzmq tunnel_connection + OpenSSH',
            unit: 'ms',
            better: 'lower',
            targetRatio: 10,
            note: `median of ${READY_RUNS}${anchorError !== undefined ? `; anchor failed: ${anchorError}` : ''}`,
          },
          {
            name: 'tunnel: small ZeroMQ request/reply round trip',
            ours: viaOurs,
            anchor: viaSsh,
            anchorName: 'ssh -L',
            unit: 'µs',
            better: 'lower',
            targetRatio: 1,
            note: `median of ${PINGS} in ${ROUNDS} interleaved rounds; direct without ssh: ${direct.toFixed(0)} µs`,
          },
          {
            name: 'tunnel: small ZeroMQ request/reply round trip, `up --listen unix` (ipc://)',
            ours: viaUnix,
            anchor: viaSsh,
            anchorName: 'ssh -L (TCP)',
            unit: 'µs',
            better: 'lower',
            targetRatio: 1,
            note: `interleaved with the TCP row above`,
          },
          {
            name: 'tunnel: 1 MiB ZeroMQ messages',
            ours: Math.max(...mib.ours),
            anchor: Math.max(...mib.ssh),
            anchorName: 'ssh -L',
            unit: 'MiB/s',
            better: 'higher',
            targetRatio: 1,
            note: `${MIB_MESSAGES} messages, ${WINDOW} in flight, best of 2`,
          },
        ]
      } finally {
        await unpin(process.pid)
        await tunnel.close()
        await unixTunnel.close()
        await sshRep.close()
        await sshRouter.close()
      }
    } finally {
      await controller.close()
      await sshd.close()
    }
  } finally {
    if (echo !== undefined) await stopProcess(echo, 'SIGKILL')
    await ns.close()
    await rm(dir, { recursive: true, force: true })
  }
}

const runTool = promisify(execFile)

/** CPU time (user + system) a process has used so far, in ms, from /proc (clock ticks of 10 ms). */
export async function cpuMs(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
  // the fields after the command name, which is in parentheses and may hold spaces
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) * 10
}

/** Runs `work` and returns its result with the CPU time `pid` spent meanwhile. */
export async function withCpu<T>(pid: number, work: () => Promise<T>): Promise<{ result: T; cpu: number }> {
  const before = await cpuMs(pid)
  const result = await work()
  return { result, cpu: (await cpuMs(pid)) - before }
}

export async function pinToCore(pid: number): Promise<void> {
  await runTool('taskset', ['-a', '-p', '-c', '0', String(pid)])
}

export async function unpin(pid: number): Promise<void> {
  await runTool('taskset', ['-a', '-p', '-c', `0-${availableParallelism() - 1}`, String(pid)])
}

export async function netnsPids(ns: Netns): Promise<number[]> {
  const { stdout } = await runTool('ip', ['netns', 'pids', ns.name])
  return stdout.split(/\s+/).filter(Boolean).map(Number)
}
