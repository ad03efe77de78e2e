import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'

import { createNetworkNamespace, type NetworkNamespace } from './netns.js'
import { sshdConfig } from './sshd-config.js'

const run = promisify(execFile)

/** Debian's interpreter, which carries ipyparallel 7.1 and mpi4py. */
const PYTHON = '/usr/bin/python3'
/** sshd's port inside the namespace: a fresh namespace has nothing else listening. */
const SSH_PORT = 2222

/**
 * A stand-in for a cluster's login host on this machine: a network namespace of its own, an OpenSSH sshd on its
 * address, and an ipyparallel controller that listens only on the namespace's loopback, so that from here it is
 * reachable through ssh alone. Needs root (namespaces) and Debian's openssh-server, ipyparallel and iproute2.
 */
export interface LocalRemote {
  /** Name of the network namespace (`ip netns exec NAME …`). */
  readonly netns: string
  /** ssh destination of the namespace's sshd, `root@ADDR:PORT`; also the `ssh` field of both connection files. */
  readonly destination: string
  /** Private key sshd accepts for root. */
  readonly identity: string
  /** known_hosts file naming sshd's host key. */
  readonly knownHosts: string
  /** The controller's client and engine connection files. */
  readonly clientFile: string
  readonly engineFile: string
  /** What the controller printed so far. */
  controllerLog(): string
  /** Engines the controller has registered so far (from its log). */
  connectedEngines(): number
  /** Kills everything inside the namespace, removes it and the temp dir. Safe to call twice. */
  close(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

export interface LocalRemoteOptions {
  /** More `ipcontroller` arguments, e.g. `--HeartMonitor.period=1000`. */
  readonly controllerArgs?: readonly string[]
}

async function keygen(path: string): Promise<string> {
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'ipp-tunnel-demo', '-f', path])
  return (await readFile(`${path}.pub`, 'utf8')).trim()
}

function collect(child: ChildProcess): () => string {
  let text = ''
  child.stdout?.on('data', (d: Buffer) => (text += d.toString()))
  child.stderr?.on('data', (d: Buffer) => (text += d.toString()))
  return () => text
}

async function until(what: string, ready: () => Promise<boolean>, child: ChildProcess, log: () => string) {
  const deadline = Date.now() + 30_000
  while (!(await ready())) {
    if (child.exitCode !== null)
      throw new Error(`${what} exited with status ${String(child.exitCode)}:\n${log()}`)
    if (Date.now() > deadline) throw new Error(`${what} did not start in 30 s:\n${log()}`)
    await sleep(50)
  }
}

async function parsedJson(path: string): Promise<boolean> {
  try {
    JSON.parse(await readFile(path, 'utf8'))
    return true
  } catch {
    return false // not written yet, or still being written in place
  }
}

/**
 * Starts the local "remote": namespace, sshd, controller. Resolves once both connection files are complete.
 *
 * @example
 * await using remote = await startLocalRemote()
 * // ipp-tunnel engines remote.engineFile -n 2 --identity remote.identity --known-hosts remote.knownHosts
 */
export async function startLocalRemote(options: LocalRemoteOptions = {}): Promise<LocalRemote> {
  const dir = await mkdtemp(join(tmpdir(), 'ipp-tunnel-demo-'))
  let ns: NetworkNamespace | undefined
  let closing: Promise<void> | undefined
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      await ns?.close()
      await rm(dir, { recursive: true, force: true })
    })())
  try {
    ns = await createNetworkNamespace({ prefix: 'ipptd', interfacePrefix: 'ipd', net: '10.232' })
    const netns = ns.name
    const nsAddr = ns.nsAddr

    const hostKey = join(dir, 'host_ed25519')
    const identity = join(dir, 'id_ed25519')
    const [hostPub, clientPub] = await Promise.all([keygen(hostKey), keygen(identity)])
    const authorizedKeys = join(dir, 'authorized_keys')
    await writeFile(authorizedKeys, `${clientPub}\n`, { mode: 0o600 })
    const knownHosts = join(dir, 'known_hosts')
    await writeFile(knownHosts, `[${nsAddr}]:${SSH_PORT} ${hostPub}\n`, { mode: 0o600 })
    const config = join(dir, 'sshd_config')
    const home = join(dir, 'home')
    await mkdir(home, { mode: 0o700 })
    await writeFile(
      config,
      sshdConfig({
        listen: `${nsAddr}:${SSH_PORT}`,
        hostKey,
        authorizedKeys,
        allowTcpForwarding: true,
        maxStartups: 200,
        // Sessions start in a home of their own: no rc file of the machine's root (pyenv's rehash takes a global
        // lock) runs at each login of the anchors' ssh processes.
        extra: `SetEnv HOME=${home}`,
      }),
    )
    await mkdir('/run/sshd', { recursive: true, mode: 0o755 })
    const sshd = spawn('ip', ['netns', 'exec', netns, '/usr/sbin/sshd', '-D', '-e', '-f', config], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    const sshdLog = collect(sshd)
    await until('sshd', () => Promise.resolve(/Server listening on /.test(sshdLog())), sshd, sshdLog)

    const destination = `root@${nsAddr}:${SSH_PORT}`
    const ipythonDir = join(dir, 'ipython')
    const security = join(ipythonDir, 'profile_default', 'security')
    const clientFile = join(security, 'ipcontroller-client.json')
    const engineFile = join(security, 'ipcontroller-engine.json')
    const controller = spawn(
      'ip',
      [
        ...[
          'netns',
          'exec',
          netns,
          PYTHON,
          '-m',
          'ipyparallel.controller',
          '--ip=127.0.0.1',
          '--log-level=20',
        ],
        `--ssh=${destination}`,
        `--enginessh=${destination}`,
        ...(options.controllerArgs ?? []),
      ],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, IPYTHONDIR: ipythonDir, PYTHONUNBUFFERED: '1' },
      },
    )
    const controllerLog = collect(controller)
    await until(
      'ipcontroller',
      async () => (await parsedJson(clientFile)) && (await parsedJson(engineFile)),
      controller,
      controllerLog,
    )
    return {
      netns,
      destination,
      identity,
      knownHosts,
      clientFile,
      engineFile,
      controllerLog,
      connectedEngines: () => controllerLog().match(/engine::Engine Connected: \d+/g)?.length ?? 0,
      close,
      [Symbol.asyncDispose]: close,
    }
  } catch (err) {
    await close()
    throw err
  }
}
