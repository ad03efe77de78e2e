import { execFile, spawn, type ChildProcess, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { lstat, mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'

import { endpoints, parseConnectionFile } from '../../src/connection-file/index.js'

const run = promisify(execFile)

/** Debian's interpreter, which carries ipyparallel 7.1, jupyter_client, ipykernel and mpi4py. */
export const PYTHON = '/usr/bin/python3'

export interface Controller {
  readonly ipythonDir: string
  readonly securityDir: string
  readonly clientFile: string
  readonly engineFile: string
  readonly process: ChildProcess
  /** Everything the controller printed so far, for failure messages. */
  log(): string
  close(): Promise<void>
}

export interface ControllerOptions {
  /** Run the controller inside this network namespace (it then listens on the namespace's own loopback). */
  readonly netns?: { readonly name: string }
  /** Value of the client file's `ssh` field (`--ssh`). */
  readonly ssh?: string
  /** Value of the engine file's `ssh` field (`--enginessh`). */
  readonly engineSsh?: string
  /** Start with `IPP_ENABLE_CURVE=1`. */
  readonly curve?: boolean
  /** Reuse this IPYTHONDIR (e.g. to restart a controller in place). */
  readonly ipythonDir?: string
  readonly extraArgs?: readonly string[]
  /** Listen on this address instead of the loopback (e.g. a namespace's own address, reachable from others). */
  readonly ip?: string
  /** Listen on unix sockets with this path prefix instead (`--transport=ipc --ip=PREFIX`): sockets `PREFIX-<port>`. */
  readonly ipc?: string
}

function inNetns(netns: { readonly name: string } | undefined, argv: readonly string[]): string[] {
  return netns ? ['ip', 'netns', 'exec', netns.name, ...argv] : [...argv]
}

async function waitForFile(path: string, child: ChildProcess, log: () => string, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const size = await stat(path).then(
      (s) => s.size,
      () => 0,
    )
    if (size > 0) {
      // ipcontroller writes in place: wait until the content parses.
      try {
        JSON.parse(await readFile(path, 'utf8'))
        return
      } catch {
        /* still being written */
      }
    }
    if (child.exitCode !== null) throw new Error(`controller exited ${child.exitCode}:\n${log()}`)
    if (Date.now() > deadline) throw new Error(`controller did not write ${path} in time:\n${log()}`)
    await sleep(50)
  }
}

/** TCP ports listening now (inside `netns` when given), read with `ss`. */
async function listeningPorts(netns: { readonly name: string } | undefined): Promise<Set<number>> {
  const [cmd, ...rest] = inNetns(netns, ['ss', '-Hltn'])
  const { stdout } = await run(cmd!, rest)
  const ports = new Set<number>()
  for (const line of stdout.split('\n')) {
    const local = line.trim().split(/\s+/)[3]
    const port = Number(local?.slice(local.lastIndexOf(':') + 1))
    if (Number.isInteger(port)) ports.add(port)
  }
  return ports
}

/**
 * ipcontroller writes its files before its schedulers (separate processes) listen: wait until every port the
 * files name accepts connections, so that a test never races the controller's own start-up.
 */
async function waitForListening(
  files: readonly string[],
  netns: { readonly name: string } | undefined,
  child: ChildProcess,
  log: () => string,
  timeoutMs: number,
): Promise<void> {
  const wanted = new Set<number>()
  const sockets = new Set<string>()
  for (const file of files) {
    const info = parseConnectionFile(await readFile(file, 'utf8'), file)
    for (const endpoint of endpoints(info)) {
      if (endpoint.kind === 'unix') sockets.add(endpoint.path)
      else wanted.add(endpoint.port)
    }
  }
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const listening = await listeningPorts(netns)
    const there = await Promise.all(
      [...sockets].map((path) =>
        lstat(path).then(
          (s) => s.isSocket(),
          () => false,
        ),
      ),
    )
    const missing = [
      ...[...wanted].filter((port) => !listening.has(port)),
      ...[...sockets].filter((_, i) => there[i] !== true),
    ]
    if (missing.length === 0) return
    if (child.exitCode !== null) throw new Error(`controller exited ${child.exitCode}:\n${log()}`)
    if (Date.now() > deadline) {
      throw new Error(`controller ports ${missing.join(', ')} did not listen in time:\n${log()}`)
    }
    await sleep(50)
  }
}

/** Kill a child and wait for it to be gone. */
export async function stopProcess(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 3000) {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.kill(signal)
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await exited
  clearTimeout(timer)
}

/**
 * Starts Debian's real `ipcontroller` listening on loopback only (the namespace's loopback when `netns` is given),
 * and resolves once both connection files are complete.
 */
export async function startController(options: ControllerOptions = {}): Promise<Controller> {
  const ownDir = options.ipythonDir === undefined
  const ipythonDir = options.ipythonDir ?? (await mkdtemp(join(tmpdir(), 'ippt-ipython-')))
  const securityDir = join(ipythonDir, 'profile_default', 'security')
  const clientFile = join(securityDir, 'ipcontroller-client.json')
  const engineFile = join(securityDir, 'ipcontroller-engine.json')
  await rm(clientFile, { force: true })
  await rm(engineFile, { force: true })
  const args = [
    PYTHON,
    '-m',
    'ipyparallel.controller',
    `--ip=${options.ipc ?? options.ip ?? '127.0.0.1'}`,
    '--log-level=20',
  ]
  if (options.ipc !== undefined) args.push('--transport=ipc')
  if (options.ssh !== undefined) args.push(`--ssh=${options.ssh}`)
  if (options.engineSsh !== undefined) args.push(`--enginessh=${options.engineSsh}`)
  args.push(...(options.extraArgs ?? []))
  const [cmd, ...rest] = inNetns(options.netns, args)
  const env: NodeJS.ProcessEnv = { ...process.env, IPYTHONDIR: ipythonDir, PYTHONUNBUFFERED: '1' }
  delete env.IPP_ENABLE_CURVE
  if (options.curve) env.IPP_ENABLE_CURVE = '1'
  const child = spawn(cmd!, rest, { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (d: Buffer) => (output += d.toString()))
  child.stderr.on('data', (d: Buffer) => (output += d.toString()))
  const log = () => output
  try {
    await waitForFile(clientFile, child, log, 20_000)
    await waitForFile(engineFile, child, log, 20_000)
    await waitForListening([clientFile, engineFile], options.netns, child, log, 20_000)
  } catch (err) {
    await stopProcess(child, 'SIGKILL')
    throw err
  }
  return {
    ipythonDir,
    securityDir,
    clientFile,
    engineFile,
    process: child,
    log,
    async close() {
      await stopProcess(child)
      if (ownDir) await rm(ipythonDir, { recursive: true, force: true })
    },
  }
}

export interface Engines {
  readonly processes: readonly ChildProcess[]
  log(): string
  close(): Promise<void>
}

/** Starts `n` real `ipengine`s on an engine connection file (inside `netns` when given). */
export function startEngines(
  file: string,
  n: number,
  options: { netns?: { readonly name: string }; ipythonDir?: string } = {},
): Engines {
  let output = ''
  const processes = Array.from({ length: n }, () => {
    const [cmd, ...rest] = inNetns(options.netns, [PYTHON, '-m', 'ipyparallel.engine', `--file=${file}`])
    const env: NodeJS.ProcessEnv = { ...process.env, PYTHONUNBUFFERED: '1' }
    if (options.ipythonDir !== undefined) env.IPYTHONDIR = options.ipythonDir
    const child = spawn(cmd!, rest, { env, stdio: ['ignore', 'pipe', 'pipe'] })
    child.stdout.on('data', (d: Buffer) => (output += d.toString()))
    child.stderr.on('data', (d: Buffer) => (output += d.toString()))
    return child
  })
  return {
    processes,
    log: () => output,
    async close() {
      await Promise.all(processes.map((p) => stopProcess(p)))
    },
  }
}

export interface PythonResult {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Runs a Python snippet with Debian's interpreter (inside `netns` when given). */
export function runPython(
  code: string,
  options: {
    netns?: { readonly name: string }
    env?: NodeJS.ProcessEnv
    timeoutMs?: number
    args?: string[]
  } = {},
): Promise<PythonResult> {
  const [cmd, ...rest] = inNetns(options.netns, [PYTHON, '-c', code, ...(options.args ?? [])])
  const child = spawn(cmd!, rest, {
    env: { ...process.env, PYTHONUNBUFFERED: '1', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000)
  return new Promise((resolve) => {
    child.on('close', (exit) => {
      clearTimeout(timer)
      resolve({ code: exit, stdout, stderr })
    })
  })
}

/**
 * Python that connects the real `ipyparallel.Client` to a connection file, waits for `n` engines,
 * runs `apply_sync` on all of them and prints a JSON line `{"ids": [...], "results": [...]}`.
 */
export function clientApplyScript(file: string, engines: number, timeoutS = 30): string {
  return `
import json, os, socket, time, ipyparallel as ipp
c = ipp.Client(${JSON.stringify(file)}, timeout=${timeoutS})
c.wait_for_engines(${engines}, timeout=${timeoutS})
ids = sorted(c.ids)
def whoami():
    import os
    return os.getpid()
r = c[:].apply_sync(whoami)
print(json.dumps({"ids": ids, "results": r}))
c.close()
`
}

/**
 * A Python process holding one `ipyparallel.Client` open on the copy for the whole file, as a notebook does: each
 * line on its stdin runs a function on every engine and answers with one JSON line.
 */
export class KeptClient {
  readonly #child: ChildProcessWithoutNullStreams
  #stdout = ''
  #stderr = ''
  #waiting: ((line: string) => void) | undefined

  constructor(file: string, netns: { readonly name: string }) {
    const code = [
      'import json, os, sys, ipyparallel',
      `rc = ipyparallel.Client(${JSON.stringify(file)})`,
      'rc.wait_for_engines(2, timeout=60)',
      // a request the controller routes to an engine whose connection is not back yet is dropped (a ZeroMQ ROUTER
      // drops what it cannot route; ipyparallel sends nothing again): asked again, as a user would, 2 s apart
      'for line in sys.stdin:',
      '    for tries in range(1, 41):',
      '        ar = rc[:].apply_async(os.getpid)',
      '        try:',
      '            pids = ar.get(timeout=2)',
      '            break',
      '        except ipyparallel.error.TimeoutError:',
      '            pass',
      '    print(json.dumps({"ids": sorted(rc.ids), "pids": pids, "tries": tries}), flush=True)',
    ].join('\n')
    this.#child = spawn('ip', ['netns', 'exec', netns.name, PYTHON, '-c', code], {
      env: { ...process.env, PYTHONUNBUFFERED: '1' },
    })
    this.#child.stdout.on('data', (d: Buffer) => {
      this.#stdout += d.toString()
      const newline = this.#stdout.indexOf('\n')
      if (newline < 0) return
      const line = this.#stdout.slice(0, newline)
      this.#stdout = this.#stdout.slice(newline + 1)
      this.#waiting?.(line)
    })
    this.#child.stderr.on('data', (d: Buffer) => (this.#stderr += d.toString()))
  }

  /** Runs `os.getpid` on every engine: the engine ids and their pids. */
  run(): Promise<{ ids: number[]; pids: number[]; tries: number }> {
    return new Promise((resolve, reject) => {
      const onExit = (): void => reject(new Error(`the Client exited:\n${this.#stderr}`))
      this.#child.once('exit', onExit)
      this.#waiting = (line) => {
        this.#child.off('exit', onExit)
        this.#waiting = undefined
        resolve(JSON.parse(line) as { ids: number[]; pids: number[]; tries: number })
      }
      this.#child.stdin.write('go\n')
    })
  }

  async close(): Promise<void> {
    this.#child.stdin.end()
    await stopProcess(this.#child)
  }
}
