/**
 * Whole-process start-up, not pinned (as users run them):
 *  (a) `ipp-tunnel up` exec → its `ready` line, vs one OpenSSH `ssh -N` process with the same 7 `-L` forwards
 *      (exec → all 7 local ports accept), against one sshd in its own network namespace;
 *      and vs pyzmq's tunnel_connection for the same 7 channels in a python process of its own (exec → ready);
 *  (b) `ipp-tunnel --version` vs a bare `node -e 0`.
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
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

import { CLI, JsonLines, spawnCli } from '../test/support/cli.js'
import {
  createNetns,
  freePort,
  sshArgsOf,
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

async function oursReadyMs(sshd: Sshd, file: string, out: string): Promise<number> {
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
    NODE_ENV,
  )
  try {
    await new JsonLines(child).next('ready')
    return performance.now() - started
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
      const ours: number[] = []
      const ssh: number[] = []
      // one of each first, unmeasured: the page cache then holds node, ssh and every module for both, and the
      // one-file build's V8 code cache is written (~/.cache/ipp-tunnel), as after a user's first run
      await oursReadyMs(sshd, file, join(dir, 'loopback.json'))
      await sshReadyMs(sshd, remotePort)
      for (let i = 0; i < RUNS; i++) {
        ours.push(await oursReadyMs(sshd, file, join(dir, 'loopback.json')))
        ssh.push(await sshReadyMs(sshd, remotePort))
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
