/**
 * Many-stream and memory benchmarks of `ipp-tunnel up` (a process of its own) against one OpenSSH sshd in its own
 * network namespace, pinned to one core as the tunnel benchmarks are:
 *  (a) 100 concurrent 10 MiB streams through `up` and through `ssh -L`, interleaved;
 *  (b) the `up` process's RSS: per idle forwarded connection (1000 open at once), per streaming connection at the
 *      peak of (a), and idle again after the streams end, against its idle baseline.
 *
 * Run alone: `node dist/bench/run.js streams`.
 */
import { type ChildProcess } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { createConnection, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

import { JsonLines, spawnCli } from '../test/support/cli.js'
import {
  createNetns,
  portPrinted,
  sshArgsOf,
  startSshd,
  type Netns,
  type Sshd,
} from '../test/support/index.js'
import { stopProcess } from '../test/support/ipp.js'
import { hasNativeBinding } from '../src/native/index.js'
import { type BenchRow } from './common.js'
import { netnsPids, pinToCore, sshForward, unpin, withCpu, writeBenchKernel } from './tunnel.js'

const STREAMS = 100
const STREAM_BYTES = 10 * 1024 * 1024
const IDLE_CONNECTIONS = 1000
const ROUNDS = 2
/** How long after the last stream the idle RSS is taken. */
const IDLE_WAIT_MS = 15_000
const MIB = 1024 * 1024
const KIB = 1024

/**
 * The remote end: says `h` as soon as a connection is accepted (so the client knows the channel is open end to
 * end), drops what it is sent, and says `k` and closes at the client's EOF.
 */
const SINK = `
const net = require('node:net')
const server = net.createServer((s) => {
  s.on('error', () => {})
  s.write('h')
  s.on('data', () => {})
  s.on('end', () => s.end('k'))
})
server.listen(0, '127.0.0.1', () => process.stdout.write(server.address().port + '\\n'))
process.stdin.on('end', () => process.exit(0)).resume()
`

async function startSink(ns: Netns): Promise<{ port: number; child: ChildProcess }> {
  const child = ns.exec([process.execPath, '-e', SINK], { stdio: ['pipe', 'pipe', 'inherit'] })
  return { port: await portPrinted(child, 'sink'), child }
}

/** Opens a connection and resolves once the remote end's `h` arrived: the channel is carried end to end. */
function openCarried(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ host: '127.0.0.1', port })
    socket.once('error', reject)
    socket.once('data', () => {
      socket.off('error', reject)
      socket.on('error', () => undefined)
      resolve(socket)
    })
  })
}

/** Writes `bytes` with backpressure, ends, and resolves at the remote's `k` and close. */
async function stream(port: number, bytes: number): Promise<void> {
  const socket = await openCarried(port)
  const chunk = Buffer.alloc(64 * KIB, 7)
  let left = bytes
  while (left > 0) {
    const piece = left >= chunk.length ? chunk : chunk.subarray(0, left)
    left -= piece.length
    if (!socket.write(piece)) await new Promise((resolve) => socket.once('drain', resolve))
  }
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject)
    socket.once('close', () => resolve())
    socket.end()
    socket.resume()
  })
}

async function manyStreamsMiBs(port: number): Promise<number> {
  const started = performance.now()
  await Promise.all(Array.from({ length: STREAMS }, () => stream(port, STREAM_BYTES)))
  return (STREAMS * STREAM_BYTES) / MIB / ((performance.now() - started) / 1000)
}

async function rssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const kib = /VmRSS:\s+(\d+) kB/.exec(status)?.[1]
  if (kib === undefined) throw new Error(`no VmRSS for ${pid}`)
  return Number(kib) * KIB
}

/** Samples a process's RSS every 20 ms while `work` runs; resolves with the work's result and the peak seen. */
async function withPeakRss<T>(pid: number, work: Promise<T>): Promise<{ result: T; peak: number }> {
  let peak = await rssBytes(pid)
  const state = { done: false }
  const sampler = (async () => {
    while (!state.done) {
      peak = Math.max(peak, await rssBytes(pid))
      await sleep(20)
    }
  })()
  try {
    const result = await work
    return { result, peak: Math.max(peak, await rssBytes(pid)) }
  } finally {
    state.done = true
    await sampler
  }
}

/** RSS once it has stopped falling (the heap shrinks on the next GCs, which idle timers trigger). */
async function settledRss(pid: number): Promise<number> {
  let last = await rssBytes(pid)
  for (let i = 0; i < 20; i++) {
    await sleep(250)
    const now = await rssBytes(pid)
    if (Math.abs(now - last) < 64 * KIB) return now
    last = now
  }
  return last
}

async function upOn(sshd: Sshd, dir: string, port: number) {
  const file = join(dir, 'kernel-streams.json')
  await writeBenchKernel(file, port, port)
  const child = spawnCli([
    'up',
    file,
    '--json',
    '--out',
    join(dir, 'kernel-streams-loopback.json'),
    '--ssh',
    `${sshd.user}@${sshd.host}:${sshd.port}`,
    ...sshArgsOf(sshd),
  ])
  const ready = await new JsonLines(child).next('ready')
  const forwards = ready.forwards as { channel: string; local: string }[]
  const local = forwards.find((f) => f.channel === 'shell')?.local ?? ''
  if (child.pid === undefined) throw new Error('up has no pid')
  return {
    pid: child.pid,
    port: Number(local.slice(local.lastIndexOf(':') + 1)),
    close: () => stopProcess(child),
  }
}

/**
 * The many-stream and memory benchmarks in one run.
 *
 * @example for (const row of await benchStreams()) console.log(row.name, row.ours, row.anchor)
 */
export async function benchStreams(): Promise<BenchRow[]> {
  const ns = await createNetns()
  const dir = await mkdtemp(join(tmpdir(), 'ippt-bench-streams-'))
  let sink: ChildProcess | undefined
  try {
    const sshd = await startSshd({ netns: ns })
    try {
      await pinToCore(process.pid)
      for (const pid of await netnsPids(ns)) await pinToCore(pid)
      const started = await startSink(ns)
      sink = started.child
      const up = await upOn(sshd, dir, started.port)
      const ssh = await sshForward(sshd, started.port)
      try {
        // warm both paths (JIT, ciphers, first allocations) before the baseline
        await Promise.all(Array.from({ length: 4 }, () => stream(up.port, MIB)))
        await Promise.all(Array.from({ length: 4 }, () => stream(ssh.port, MIB)))
        const baseline = await settledRss(up.pid)

        // idle connections, each carried end to end
        const idle: Socket[] = []
        for (let i = 0; i < IDLE_CONNECTIONS; i += 50) {
          idle.push(...(await Promise.all(Array.from({ length: 50 }, () => openCarried(up.port)))))
        }
        const withIdle = await settledRss(up.pid)
        for (const socket of idle) socket.destroy()
        await settledRss(up.pid)

        // many streams, interleaved; the peak RSS of ours is taken over every round
        const oursMiBs: number[] = []
        const sshMiBs: number[] = []
        let peak = 0
        const cpu = { ssh: 0, ours: 0 }
        const before = await settledRss(up.pid)
        for (let round = 0; round < ROUNDS; round++) {
          const viaSsh = await withCpu(ssh.pid, () => manyStreamsMiBs(ssh.port))
          sshMiBs.push(viaSsh.result)
          cpu.ssh += viaSsh.cpu
          const measured = await withCpu(up.pid, () => withPeakRss(up.pid, manyStreamsMiBs(up.port)))
          oursMiBs.push(measured.result.result)
          cpu.ours += measured.cpu
          peak = Math.max(peak, measured.result.peak)
        }
        // the tunnel collects and hands freed heap pages back 10–11 s after its forwards went quiet, and again 2 s
        // later (src/tunnel/heap-release.ts)
        await sleep(IDLE_WAIT_MS)
        const after = await settledRss(up.pid)
        const perGiB = (ms: number): string =>
          ((ms / (ROUNDS * STREAMS * STREAM_BYTES)) * 1024 * MIB).toFixed(0)
        console.error(
          `  streams, CPU ms per GiB of the forwarding process: ssh -L ${perGiB(cpu.ssh)}, ours ${perGiB(cpu.ours)}`,
        )
        console.error(
          `  up RSS MiB: baseline ${(baseline / MIB).toFixed(1)}, 1000 idle ${(withIdle / MIB).toFixed(1)}, before streams ${(before / MIB).toFixed(1)}, peak ${(peak / MIB).toFixed(1)}, after ${(after / MIB).toFixed(1)}`,
        )
        const best = (xs: number[]): number => Math.max(...xs)
        return [
          {
            name: `streams: ${STREAMS} concurrent ${STREAM_BYTES / MIB} MiB streams`,
            ours: best(oursMiBs),
            anchor: best(sshMiBs),
            anchorName: 'ssh -L',
            unit: 'MiB/s',
            better: 'higher',
            targetRatio: 1.5,
            note: `raw TCP to a sink, best of ${ROUNDS} interleaved rounds, all on one core`,
          },
          {
            name: `memory: RSS of \`up\` per idle forwarded connection (${IDLE_CONNECTIONS} open)`,
            ours: (withIdle - baseline) / IDLE_CONNECTIONS / KIB,
            anchor: 64,
            anchorName: 'target',
            unit: 'KiB',
            better: 'lower',
            targetRatio: 1,
          },
          {
            name: `memory: peak RSS of \`up\` per streaming connection (${STREAMS} streams)`,
            ours: (peak - before) / STREAMS / KIB,
            anchor: 1024,
            anchorName: 'target',
            unit: 'KiB',
            better: 'lower',
            targetRatio: 1,
          },
          {
            name: 'memory: idle RSS of `up` after the streams end',
            note: `${IDLE_WAIT_MS / 1000} s after the last stream; native binding ${hasNativeBinding() ? 'built' : 'NOT built (no malloc_trim)'}`,
            ours: after / MIB,
            anchor: (baseline * 1.1) / MIB,
            anchorName: `baseline ${(baseline / MIB).toFixed(1)} MiB + 10%`,
            unit: 'MiB',
            better: 'lower',
            targetRatio: 1,
          },
        ]
      } finally {
        await unpin(process.pid)
        await up.close()
        await ssh.close()
      }
    } finally {
      await sshd.close()
    }
  } finally {
    if (sink !== undefined) await stopProcess(sink, 'SIGKILL')
    await ns.close()
    await rm(dir, { recursive: true, force: true })
  }
}
