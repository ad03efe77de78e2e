/**
 * Engines benchmark: time from launch until the controller has registered all N engines, for N = 1 and 8.
 *
 * - ipp-tunnel: `ipp-tunnel engines ENGINE_FILE -n N` — one ssh connection (ssh2, in process) for every engine.
 * - anchor: N × `ipengine` (`/usr/bin/python3 -m ipyparallel.engine --file=ENGINE_FILE --sshkey=KEY`), which reads
 *   the file's `ssh` field and opens pyzmq's OpenSSH tunnels: one `ssh -f -L … sleep 60` per channel and engine
 *   (plus a passwordless check), through the system `ssh`; a wrapper on PATH adds `-F` with the throw-away
 *   known_hosts, as a user's ~/.ssh/config would.
 *
 * Both run against the same controller, in a network namespace reachable only through its sshd (the demo's local
 * remote). "Registered" is counted on the controller's side (its "Engine Connected" log lines); the controller's
 * heartbeat period is 500 ms so that its beat (new hearts are admitted on a beat) blurs the figures less.
 *
 * Run alone: `node dist/bench/engines.js`.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath, pathToFileURL } from 'node:url'

import { pidsWhere } from '../test/support/proc.js'
import { startLocalRemote, type LocalRemote } from '../src/demo/index.js'
import { markdownTable, median, type BenchRow } from './common.js'

const CLI = fileURLToPath(new URL('../../bin/ipp-tunnel.js', import.meta.url))
const PYTHON = '/usr/bin/python3'
const TIMEOUT_MS = 60_000
const RUNS: Record<number, number> = { 1: 3, 8: 2 }
/** Ours must be at least as fast: the anchor pays a handshake per channel and engine, we pay one. */
const TARGET_RATIO = 1

function waitExit(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => child.once('exit', () => resolve()))
}

/** SIGTERM to a detached child's process group, SIGKILL after 8 s; resolves once the child is gone. */
export async function stopGroup(child: ChildProcess): Promise<void> {
  const pid = child.pid
  if (pid === undefined) return
  const signal = (s: NodeJS.Signals) => {
    try {
      process.kill(-pid, s)
    } catch {
      // gone
    }
  }
  signal('SIGTERM')
  const timer = setTimeout(() => signal('SIGKILL'), 8000)
  await waitExit(child)
  clearTimeout(timer)
  signal('SIGKILL')
}

/** Waits until the controller has counted `target` engine connections in total; ms since `started`. */
async function registered(remote: LocalRemote, target: number, started: number): Promise<number | undefined> {
  while (remote.connectedEngines() < target) {
    if (performance.now() - started > TIMEOUT_MS) return undefined
    await sleep(10)
  }
  return performance.now() - started
}

/** Pids of the OpenSSH client processes on this machine talking to `host` (pyzmq's `ssh -f` tunnels). */
function sshPids(host: string): Promise<number[]> {
  return pidsWhere((p) => /(^|\/)ssh$/.test(p.argv[0] ?? '') && p.argv.some((a) => a.includes(host)))
}

async function ours(remote: LocalRemote, n: number): Promise<number | undefined> {
  const target = remote.connectedEngines() + n
  const started = performance.now()
  const child = spawn(
    process.execPath,
    [
      CLI,
      'engines',
      remote.engineFile,
      '-n',
      String(n),
      '--json',
      '--identity',
      remote.identity,
      '--known-hosts',
      remote.knownHosts,
    ],
    { stdio: 'ignore', detached: true },
  )
  try {
    return await registered(remote, target, started)
  } finally {
    await stopGroup(child)
  }
}

async function anchor(
  remote: LocalRemote,
  n: number,
  pathDir: string,
): Promise<{ ms: number | undefined; ssh: number }> {
  const target = remote.connectedEngines() + n
  const host = remote.destination.slice(remote.destination.indexOf('@') + 1).split(':')[0] ?? ''
  const env = { ...process.env, PATH: `${pathDir}:${process.env.PATH ?? ''}`, PYTHONUNBUFFERED: '1' }
  const started = performance.now()
  const engines = Array.from({ length: n }, () =>
    spawn(
      PYTHON,
      ['-m', 'ipyparallel.engine', `--file=${remote.engineFile}`, `--sshkey=${remote.identity}`],
      {
        env,
        stdio: 'ignore',
        detached: true,
      },
    ),
  )
  try {
    const ms = await registered(remote, target, started)
    return { ms, ssh: (await sshPids(host)).length }
  } finally {
    await Promise.all(engines.map((e) => stopGroup(e)))
    // `ssh -f` detaches into a session of its own: end the tunnels these engines opened, by pid.
    for (const pid of await sshPids(host)) {
      try {
        process.kill(pid, 'SIGTERM')
      } catch {
        // gone
      }
    }
  }
}

/** A directory with an `ssh` that is the system's plus `-F config` (known_hosts and key of the throw-away server). */
export async function sshWrapper(remote: { identity: string; knownHosts: string }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-bench-ssh-'))
  const config = join(dir, 'ssh_config')
  await writeFile(
    config,
    [
      'Host *',
      `  IdentityFile ${remote.identity}`,
      '  IdentitiesOnly yes',
      `  UserKnownHostsFile ${remote.knownHosts}`,
      '  StrictHostKeyChecking yes',
      '  BatchMode yes',
      '',
    ].join('\n'),
  )
  const wrapper = join(dir, 'ssh')
  // SIGHUP ignored: pyzmq spawns `ssh -f` on a pexpect pty whose session ssh leads; when ssh's parent half exits
  // before its forked child has called setsid(), the child gets the pty's SIGHUP and the tunnel dies silently.
  // On this 2-core machine that race is lost on most launches and ipengine --ssh then times out registering.
  await writeFile(wrapper, `#!/bin/sh\ntrap '' HUP\nexec /usr/bin/ssh -F ${config} "$@"\n`)
  await chmod(wrapper, 0o755)
  return dir
}

export async function benchEngines(): Promise<BenchRow[]> {
  const remote = await startLocalRemote({ controllerArgs: ['--HeartMonitor.period=500'] })
  const pathDir = await sshWrapper(remote)
  const rows: BenchRow[] = []
  try {
    for (const n of [1, 8]) {
      const runs = RUNS[n] ?? 1
      const oursMs: number[] = []
      const anchorMs: number[] = []
      let anchorFailed = false
      let sshCount = 0
      for (let i = 0; i < runs; i++) {
        const a = await anchor(remote, n, pathDir)
        sshCount = Math.max(sshCount, a.ssh)
        if (a.ms === undefined) anchorFailed = true
        else anchorMs.push(a.ms)
        const o = await ours(remote, n)
        if (o === undefined)
          throw new Error(`ipp-tunnel engines -n ${n}: not all registered in ${TIMEOUT_MS} ms`)
        oursMs.push(o)
      }
      rows.push({
        name: `engines: launch → ${n} engine${n === 1 ? '' : 's'} registered`,
        ours: median(oursMs),
        anchor: anchorFailed ? undefined : median(anchorMs),
        anchorName: 'ipengine --ssh (pyzmq OpenSSH tunnels)',
        unit: 'ms',
        better: 'lower',
        targetRatio: TARGET_RATIO,
        note: `median of ${runs}; ssh connections: ours 1, anchor ${sshCount} ssh processes${anchorFailed ? `; anchor timed out after ${TIMEOUT_MS} ms` : ''}`,
      })
    }
  } finally {
    await remote.close()
    await rm(pathDir, { recursive: true, force: true })
  }
  return rows
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(markdownTable(await benchEngines()))
}
