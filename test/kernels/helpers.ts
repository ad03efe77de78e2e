import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TestContext } from 'node:test'

import { exited, JsonLines, spawnCli } from '../support/cli.js'
import { createNetns, freePort, startSshd, type Netns, type Sshd } from '../support/index.js'
import { runPython, type PythonResult } from '../support/ipp.js'
import { kernelFileText } from '../support/kernel.js'

/**
 * `dir/kernel-NAME.json` as jupyter_client writes it: five free ports on 127.0.0.1 (or `ports`), a fresh key, and
 * the `jupyter_session` jupyter_client 8 adds.
 */
export async function writeKernelFile(dir: string, name: string, ports?: readonly number[]): Promise<string> {
  const free: number[] = []
  while (ports === undefined && free.length < 5) free.push(await freePort())
  const [shell = 0, iopub = 0, stdin = 0, control = 0, hb = 0] = ports ?? free
  const file = join(dir, `kernel-${name}.json`)
  const text = kernelFileText([shell, iopub, stdin, control, hb], {
    key: randomBytes(16).toString('hex'),
    kernel_name: 'remote',
    jupyter_session: '/home/me/notebook.ipynb',
  })
  await writeFile(file, text, { mode: 0o600 })
  return file
}

/** Runs `code` on the kernel of `file` with jupyter_client's BlockingKernelClient; prints its stdout. */
const EXECUTE = String.raw`
import sys
from jupyter_client import BlockingKernelClient
kc = BlockingKernelClient(connection_file=sys.argv[1])
kc.load_connection_file()
kc.start_channels()
kc.wait_for_ready(timeout=60)
out = []
reply = kc.execute_interactive(sys.argv[2], timeout=60,
    output_hook=lambda m: m['msg_type'] == 'stream' and out.append(m['content']['text']))
kc.stop_channels()
print(reply['content']['status'], ''.join(out), end='')
`

/**
 * Runs `code` on the kernel of connection file `file` (from inside `netns` when given, where its ports are);
 * stdout is the reply's status, a space and what the code printed (`ok 42\n`). `timeoutMs` bounds the client
 * (default 60 s).
 *
 * @example
 * assert.equal((await execute(file, 'print(6 * 7)')).stdout, 'ok 42\n')
 */
export function execute(
  file: string,
  code: string,
  options: { netns?: { readonly name: string }; timeoutMs?: number } = {},
): Promise<PythonResult> {
  return runPython(EXECUTE, { args: [file, code], ...options })
}

/**
 * The destination and options every kernel test gives `kernel` and `kernelspec install`: the sshd's key and
 * known_hosts, Debian's python (it has ipykernel), the remote state under `root`.
 */
export function remoteKernelArgs(
  sshd: Sshd,
  root: string,
  options: {
    /** Another name for the server (one /etc/hosts resolves); default its address. */
    readonly host?: string
    /** A known_hosts file of one's own (the host key under that name); default the sshd's. */
    readonly knownHosts?: string
  } = {},
): string[] {
  return [
    `root@${options.host ?? sshd.host}:${sshd.port}`,
    '--identity',
    sshd.clientKey,
    '--known-hosts',
    options.knownHosts ?? sshd.knownHostsFile,
    '--python',
    '/usr/bin/python3',
    '--remote-dir',
    join(root, 'remote'),
  ]
}

/**
 * Starts `ipp-tunnel watch --json` on `watched` (created 0700) with the sshd's key and known_hosts: the running
 * service a launcher with the same `IPP_TUNNEL_RUNTIME_DIR` in `env` finds. Resolves once it watches; it is stopped
 * (SIGTERM) when the test ends.
 *
 * @example
 * const service = await startService(t, sshd, join(root, 'watched'), env)
 */
export async function startService(
  t: TestContext,
  sshd: Sshd,
  watched: string,
  env: NodeJS.ProcessEnv,
): Promise<ChildProcess> {
  await mkdir(watched, { mode: 0o700 })
  const auth = ['--identity', sshd.clientKey, '--known-hosts', sshd.knownHostsFile]
  const service = spawnCli(['watch', '--json', '--dir', watched, ...auth], env)
  t.after(async () => {
    service.kill('SIGTERM')
    await exited(service)
  })
  await new JsonLines(service).next('watching')
  return service
}

/**
 * Starts `ipp-tunnel kernel` on connection file `file` ({@link remoteKernelArgs}, events as JSON on stderr) and
 * waits for its `started` event: the test fails on an `error` event instead, or after 60 s. The launcher is
 * SIGKILLed when the test ends, if it still runs.
 *
 * @example
 * const { launcher, events, started } = await startLauncher(t, sshd, root, file, env)
 */
export async function startLauncher(
  t: TestContext,
  sshd: Sshd,
  root: string,
  file: string,
  env: NodeJS.ProcessEnv,
): Promise<{ launcher: ChildProcess; events: JsonLines; started: Record<string, unknown> }> {
  const launcher = spawnCli(
    ['kernel', ...remoteKernelArgs(sshd, root), '--connection-file', file, '--json'],
    env,
  )
  t.after(async () => {
    launcher.kill('SIGKILL')
    await exited(launcher)
  })
  const events = new JsonLines(launcher, { from: 'stderr' })
  const started = await events.next((e) => e.event === 'started' || e.event === 'error', 60_000)
  assert.equal(started.event, 'started', JSON.stringify(events.events))
  return { launcher, events, started }
}

/** The ssh server the kernels of a test file run on: an sshd in a network namespace of its own, and a temp dir. */
export interface KernelServer {
  readonly ns: Netns
  readonly sshd: Sshd
  /** A temp dir (`prefix` + random) for the remote state ({@link remoteKernelArgs}) and the Jupyter dirs. */
  readonly root: string
  /** Stops the sshd, removes the namespace and the temp dir. */
  close(): Promise<void>
}

/**
 * Starts a {@link KernelServer} for a `describe` block.
 *
 * @example
 * let server: KernelServer
 * before(async () => (server = await startKernelServer('ippt-kernelspec-')))
 * after(() => server.close())
 */
export async function startKernelServer(prefix: string): Promise<KernelServer> {
  const ns = await createNetns()
  const sshd = await startSshd({ netns: ns })
  const root = await mkdtemp(join(tmpdir(), prefix))
  return {
    ns,
    sshd,
    root,
    close: async () => {
      await sshd.close()
      await ns.close()
      await rm(root, { recursive: true, force: true })
    },
  }
}
