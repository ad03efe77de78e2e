import type { ChildProcess } from 'node:child_process'
import type { TestContext } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'

import { IppClient } from '../../src/client/index.js'
import { isIppTunnelError } from '../../src/errors/index.js'
import type { ConnectOptions } from '../../src/sockets/index.js'

import { exited, JsonLines, spawnCli } from '../support/cli.js'
import { runPython, type Controller } from '../support/ipp.js'
import { startSshRemote, type Netns, type Sshd } from '../support/index.js'

/** A controller in a namespace of its own, reachable only through the sshd there, with no engines. */
export interface Remote {
  readonly ns: Netns
  readonly sshd: Sshd
  readonly ctl: Controller
}

/** Starts namespace, sshd and controller (engine file's ssh field = that sshd); cleaned up after the test. */
export async function startRemote(t: TestContext, extraArgs: readonly string[] = []): Promise<Remote> {
  const remote = await startSshRemote(extraArgs)
  t.after(() => remote.close())
  return remote
}

/** The real CLI running `engines` on the remote's engine file, with --json; stopped after the test. */
export function startEnginesCli(
  t: TestContext,
  remote: Remote,
  args: readonly string[],
  options: {
    /** Leave out the engine file argument (the info is then in the environment). */
    readonly noFile?: boolean
    readonly env?: NodeJS.ProcessEnv
  } = {},
): { child: ChildProcess; lines: JsonLines } {
  const child = spawnCli(
    [
      'engines',
      ...(options.noFile === true ? [] : [remote.ctl.engineFile]),
      '--json',
      '--identity',
      remote.sshd.clientKey,
      '--known-hosts',
      remote.sshd.knownHostsFile,
      ...args,
    ],
    options.env,
  )
  const lines = new JsonLines(child)
  t.after(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000)
    await exited(child)
    clearTimeout(timer)
  })
  return { child, lines }
}

/** Stops the CLI with `signal` and resolves with its exit status. */
export async function stopCli(
  child: ChildProcess,
  signal: NodeJS.Signals = 'SIGTERM',
): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  const done = exited(child)
  child.kill(signal)
  return done
}

/** Whether a process with this pid still exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** Python for the controller's side: waits for `n` engines and prints their ids and apply results as JSON. */
export function idsAndPidsScript(clientFile: string, n: number): string {
  return `
import json, ipyparallel as ipp
c = ipp.Client(${JSON.stringify(clientFile)}, timeout=30)
c.wait_for_engines(${n}, timeout=60)
def pid():
    import os
    return os.getpid()
print(json.dumps({"ids": sorted(c.ids), "pids": c[:].apply_sync(pid)}))
c.close()
`
}

/**
 * Python for the controller's side: waits for `n` engines and runs the seed's `psum` on all of them, an MPI
 * Allreduce over `MPI_COMM_WORLD`; prints ids and each rank's result (rank, size, node, total) as JSON.
 */
export function psumScript(clientFile: string, n: number): string {
  return `
import json, ipyparallel as ipp
c = ipp.Client(${JSON.stringify(clientFile)}, timeout=30)
c.wait_for_engines(${String(n)}, timeout=60)
def psum(n):
    import array
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    mine = array.array('d', [float(rank * n + i) for i in range(n)])
    local = array.array('d', [sum(mine)])
    total = array.array('d', [0.0])
    comm.Allreduce(local, total, op=MPI.SUM)
    return {"rank": rank, "size": comm.Get_size(), "node": MPI.Get_processor_name(), "local": local[0], "total": total[0]}
print(json.dumps({"ids": sorted(c.ids), "results": c[:].apply_sync(psum, 1000)}))
c.close()
`
}

/** One rank's answer in {@link psumScript}: its rank, the world's size, its node, its own sum and the Allreduce total. */
export interface PsumResult {
  readonly rank: number
  readonly size: number
  readonly node: string
  readonly local: number
  readonly total: number
}

/** Runs {@link psumScript} in the controller's namespace for `n` engines; fails the test if python does. */
export async function runPsum(remote: Remote, n: number): Promise<{ ids: number[]; results: PsumResult[] }> {
  const result = await runPython(psumScript(remote.ctl.clientFile, n), {
    netns: remote.ns,
    timeoutMs: 90_000,
  })
  if (result.code !== 0)
    throw new Error(`psum on ${String(n)} engines exited ${String(result.code)}: ${result.stderr}`)
  return JSON.parse(result.stdout) as { ids: number[]; results: PsumResult[] }
}

/**
 * Opens our client on a controller's client file once the controller listens on every port: ipcontroller
 * writes its files before its schedulers (separate processes) bind theirs. Waiting for the peer, not a retry
 * of what a test checks.
 */
export async function openClientWhenReady(file: string, options: ConnectOptions): Promise<IppClient> {
  const deadline = Date.now() + 30_000
  for (;;) {
    try {
      return await IppClient.open(file, options)
    } catch (err) {
      const notYet = isIppTunnelError(err) && (err.code === 'E_FORWARD' || err.code === 'E_CONNECT')
      if (!notYet || Date.now() > deadline) throw err
      await sleep(200)
    }
  }
}
