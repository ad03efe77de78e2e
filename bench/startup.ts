/**
 * Whole-process start-up, not pinned (as users run them):
 *  (a) `ipp-tunnel up` exec → its `ready` line, vs one OpenSSH `ssh -N` process with the same 7 `-L` forwards
 *      (exec → all 7 local ports accept), against one sshd in its own network namespace;
 *      and vs pyzmq's tunnel_connection for the same 7 channels in a python process of its own (exec → ready);
 *  (b) `ipp-tunnel --version` vs a bare `node -e 0`;
 *  (c) the same `up` exec → ready with TCP_QUICKACK (src/ssh/transport/ssh2-socket.ts) against the same build without it:
 *      a preloaded stand-in for the native binding that has no `quickAck`, as a binding built before it; and
 *      the library's `openTunnel` → ready, again and again in one warm process, with and without it.
 *
 * NODE_EXTRA_CA_CERTS, which this machine sets for its package proxy, is unset for every node process here: node
 * reads and parses the CA file it names at every start (~50 ms), before any of a program's code runs.
 *
 * Run alone: `node dist/bench/run.js startup`.
 */
import { spawn } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createConnection } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

import { CLI, JsonLines, spawnCli } from '../test/support/cli.js'
import {
  createNetns,
  freePort,
  sshArgsOf,
  sshOptionsOf,
  startEchoServer,
  startSshd,
  type Sshd,
} from '../test/support/index.js'
import { PYTHON, stopProcess } from '../test/support/ipp.js'
import { median, type BenchRow } from './common.js'
import { opensshForwardArgs, pyzmqArgs, PYZMQ_READY } from './tunnel.js'

const RUNS = 7
const PYZMQ_RUNS = 3
/** See the file's comment: a machine setting, not ours; unset for ours and the bare node alike. */
const NODE_ENV: NodeJS.ProcessEnv = { NODE_EXTRA_CA_CERTS: undefined }
const VERSION_RUNS = 15
const WARM_PROCESSES = 3
const WARM_OPENS = 6
const CHANNELS = ['registration', 'control', 'mux', 'task', 'iopub', 'notification', 'broadcast']

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port })
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })
}

/** A `--require` preload standing the native binding in with one that has no `quickAck` (an older build). */
function noQuickAckPreload(): string {
  const addon = join(dirname(CLI), '..', 'src', 'native', 'build', 'Release', 'ipp_tunnel_native.node')
  return `const addon = ${JSON.stringify(addon)}
require.cache[addon] = { id: addon, filename: addon, loaded: true, exports: { trim: () => false } }
`
}

async function oursReadyMs(
  sshd: Sshd,
  file: string,
  out: string,
  env: NodeJS.ProcessEnv = NODE_ENV,
  opened?: number[],
): Promise<number> {
  const started = performance.now()
  const child = spawnCli(
    [
      'up',
      file,
      '--json',
      '--out',
      out,
      '--ssh',
      `${sshd.user}@${sshd.host}:${sshd.port}`,
      ...sshArgsOf(sshd),
    ],
    env,
  )
  try {
    const ready = await new JsonLines(child).next('ready')
    const ms = performance.now() - started
    // connect → ready inside the process (the event's `ms`): the same figure without node's start-up noise
    if (typeof ready.ms === 'number') opened?.push(ready.ms)
    return ms
  } finally {
    await stopProcess(child)
  }
}

async function sshReadyMs(sshd: Sshd, remotePort: number): Promise<number> {
  const ports = await Promise.all(CHANNELS.map(() => freePort()))
  const started = performance.now()
  const child = spawn(
    'ssh',
    [
      ...opensshForwardArgs(sshd),
      ...ports.flatMap((port) => ['-L', `127.0.0.1:${port}:127.0.0.1:${remotePort}`]),
      `${sshd.user}@${sshd.host}`,
    ],
    { stdio: 'ignore' },
  )
  try {
    // ssh binds its listeners one after another: the last one accepting is the moment all are ready
    for (const port of ports) {
      while (!(await accepts(port))) {
        if (child.exitCode !== null) throw new Error(`ssh -L exited ${child.exitCode}`)
        await sleep(2)
      }
    }
    return performance.now() - started
  } finally {
    await stopProcess(child)
  }
}

/** A python process running pyzmq's tunnel_connection for every channel: exec → its line saying all are up. */
async function pyzmqProcessMs(sshd: Sshd, clientJson: string): Promise<number> {
  const started = performance.now()
  const child = spawn(PYTHON, ['-c', PYZMQ_READY, ...pyzmqArgs(sshd, clientJson)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  try {
    let text = ''
    const line = await new Promise<string>((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        text += d.toString()
        if (text.includes('\n')) resolve(text.trim())
      })
      child.once('exit', (code) => reject(new Error(`pyzmq tunnels exited ${String(code)}: ${text}`)))
    })
    const ms = performance.now() - started
    const result = JSON.parse(line) as { error?: string }
    if (result.error !== undefined) throw new Error(`pyzmq tunnels: ${result.error}`)
    return ms
  } finally {
    await stopProcess(child)
  }
}

/** Opens and closes the tunnel WARM_OPENS times (after one unmeasured) in one node process: each open's ms. */
const WARM_SCRIPT = `
const [index, file, options] = process.argv.slice(1)
const { openTunnel } = await import(index)
const ms = []
for (let i = 0; i <= ${WARM_OPENS}; i++) {
  const started = performance.now()
  const tunnel = await openTunnel(file, JSON.parse(options))
  if (i > 0) ms.push(performance.now() - started)
  await tunnel.close()
}
process.stdout.write(JSON.stringify(ms) + '\\n')
`

async function warmOpensMs(sshd: Sshd, file: string, out: string, env: NodeJS.ProcessEnv): Promise<number[]> {
  const index = join(dirname(CLI), '..', 'dist', 'src', 'index.js')
  const options = {
    ...sshOptionsOf(sshd),
    ssh: `${sshd.user}@${sshd.host}:${sshd.port}`,
    out,
  }
  const child = spawn(
    process.execPath,
    ['--input-type=module', '-e', WARM_SCRIPT, index, file, JSON.stringify(options)],
    { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env } },
  )
  let text = ''
  child.stdout.on('data', (d: Buffer) => (text += d.toString()))
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  if (code !== 0) throw new Error(`the warm openTunnel loop exited ${String(code)}`)
  return JSON.parse(text) as number[]
}

/** Every run's figure in ms, in order: the stall comes in some runs only, so the spread says more than a median. */
function runs(ms: readonly number[]): string {
  return ms.map((m) => m.toFixed(0)).join(' ')
}

async function exitMs(argv: readonly string[]): Promise<number> {
  const started = performance.now()
  const child = spawn(process.execPath, argv, { stdio: 'ignore', env: { ...process.env, ...NODE_ENV } })
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  if (code !== 0) throw new Error(`${argv.join(' ')} exited ${String(code)}`)
  return performance.now() - started
}

/**
 * The start-up benchmarks in one run.
 *
 * @example for (const row of await benchStartup()) console.log(row.name, row.ours, row.anchor)
 */
export async function benchStartup(): Promise<BenchRow[]> {
  const ns = await createNetns()
  const dir = await mkdtemp(join(tmpdir(), 'ippt-bench-startup-'))
  try {
    const sshd = await startSshd({ netns: ns })
    // 7 channels on one echo server in the namespace (up checks that the registration port answers)
    const echo = await startEchoServer(ns)
    try {
      const remotePort = echo.port
      const file = join(dir, 'ipcontroller-client.json')
      const clientJson = JSON.stringify({
        interface: 'tcp://127.0.0.1',
        ...Object.fromEntries(CHANNELS.map((c) => [c, remotePort])),
        task_scheme: 'leastload',
        key: '',
        location: 'bench',
        pack: 'json',
        unpack: 'json',
        signature_scheme: 'hmac-sha256',
      })
      await writeFile(file, clientJson, { mode: 0o600 })
      const preload = join(dir, 'no-quickack.cjs')
      await writeFile(preload, noQuickAckPreload())
      const noQuickAckEnv = { ...NODE_ENV, NODE_OPTIONS: `--require=${preload}` }
      const ours: number[] = []
      const ssh: number[] = []
      const noQuickAck: number[] = []
      const opened: number[] = []
      const openedNoQuickAck: number[] = []
      // one of each first, unmeasured: the page cache then holds node, ssh and every module for both, and the
      // one-file build's V8 code cache is written (~/.cache/ipp-tunnel), as after a user's first run
      await oursReadyMs(sshd, file, join(dir, 'loopback.json'))
      await sshReadyMs(sshd, remotePort)
      for (let i = 0; i < RUNS; i++) {
        ours.push(await oursReadyMs(sshd, file, join(dir, 'loopback.json'), NODE_ENV, opened))
        ssh.push(await sshReadyMs(sshd, remotePort))
        noQuickAck.push(
          await oursReadyMs(sshd, file, join(dir, 'loopback.json'), noQuickAckEnv, openedNoQuickAck),
        )
      }
      const warm: number[] = []
      const warmNoQuickAck: number[] = []
      for (let i = 0; i < WARM_PROCESSES; i++) {
        warm.push(...(await warmOpensMs(sshd, file, join(dir, 'loopback.json'), NODE_ENV)))
        warmNoQuickAck.push(...(await warmOpensMs(sshd, file, join(dir, 'loopback.json'), noQuickAckEnv)))
      }
      const pyzmq: number[] = []
      for (let i = 0; i < PYZMQ_RUNS; i++) pyzmq.push(await pyzmqProcessMs(sshd, clientJson))
      const version: number[] = []
      const bare: number[] = []
      await exitMs([CLI, '--version'])
      for (let i = 0; i < VERSION_RUNS; i++) {
        version.push(await exitMs([CLI, '--version']))
        bare.push(await exitMs(['-e', '0']))
      }
      return [
        {
          name: 'start-up: `up` exec → ready (7 forwards of an ipcontroller-client.json)',
          ours: median(ours),
          anchor: median(ssh),
          anchorName: 'one `ssh -N` with the same 7 -L, until all accept',
          unit: 'ms',
          better: 'lower',
          targetRatio: 1,
          note: `median of ${RUNS} interleaved`,
        },
        {
          name: 'start-up: `up` exec → ready, with TCP_QUICKACK while channels open',
          ours: median(ours),
          anchor: median(noQuickAck),
          anchorName: 'the same build without it',
          unit: 'ms',
          better: 'lower',
          targetRatio: 0,
          note: `median of ${RUNS} interleaved; each run, ours ${runs(ours)}, without ${runs(noQuickAck)}; connect → ready in the process, ours ${runs(opened)}, without ${runs(openedNoQuickAck)}`,
        },
        {
          name: 'start-up: `openTunnel` → ready in a warm process, with TCP_QUICKACK while channels open',
          ours: median(warm),
          anchor: median(warmNoQuickAck),
          anchorName: 'the same build without it',
          unit: 'ms',
          better: 'lower',
          targetRatio: 0,
          note: `median of ${WARM_PROCESSES} processes x ${WARM_OPENS} opens, alternating; each open, ours ${runs(warm)}, without ${runs(warmNoQuickAck)}`,
        },
        {
          name: 'start-up: `up` exec → ready, against pyzmq in a process of its own',
          ours: median(ours),
          anchor: median(pyzmq),
          anchorName: "python3 running pyzmq's tunnel_connection for the 7 channels",
          unit: 'ms',
          better: 'lower',
          targetRatio: 15,
          note: `median of ${PYZMQ_RUNS}; ours: the row above`,
        },
        {
          name: 'start-up: `ipp-tunnel --version`',
          ours: median(version),
          anchor: median(bare),
          anchorName: 'bare `node -e 0`',
          unit: 'ms',
          better: 'lower',
          targetRatio: 0.77, // at most 1.3x the time of bare node
          note: `median of ${VERSION_RUNS} interleaved`,
        },
      ]
    } finally {
      await sshd.close()
      await echo.close()
    }
  } finally {
    await ns.close()
    await rm(dir, { recursive: true, force: true })
  }
}
