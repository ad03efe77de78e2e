import assert from 'node:assert/strict'
import { execFile, type ChildProcess } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, afterEach, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'

import { exited, JsonLines, runCli, spawnCli } from '../support/cli.js'
import {
  createNetns,
  joinClusterNetwork,
  processesWith,
  startSshd,
  type Netns,
  type Sshd,
} from '../support/index.js'
import { runPython } from '../support/ipp.js'
import { allocate, startSlurm, type Slurm } from '../support/slurm.js'
import { execute, remoteKernelArgs, writeKernelFile } from './helpers.js'

const run = promisify(execFile)

/**
 * Debian's jupyter_client KernelManager on a kernelspec of ours, as JupyterLab's server drives it: start, where the
 * kernel runs, interrupt a sleep, state kept, shutdown. Prints one JSON line of what it saw.
 */
const DRIVE = String.raw`
import json, sys, time
from jupyter_client.manager import KernelManager

def run(kc, code, timeout=60):
    out = []
    def hook(msg):
        if msg['msg_type'] == 'stream':
            out.append(msg['content']['text'])
    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    return reply['content']['status'], ''.join(out)

km = KernelManager(kernel_name=sys.argv[1])
km.start_kernel()
kc = km.client()
kc.start_channels()
seen = {}
try:
    kc.wait_for_ready(timeout=90)
    seen['where'] = run(kc, "import os, socket; print(socket.gethostname(), os.readlink('/proc/self/ns/net'), os.environ['SLURM_JOB_ID'], end='')")
    run(kc, "x = 41")
    msg_id = kc.execute("import time; time.sleep(60)", stop_on_error=False)
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if msg['parent_header'].get('msg_id') == msg_id and msg['msg_type'] == 'status' and msg['content']['execution_state'] == 'busy':
            break
    time.sleep(0.3)
    km.interrupt_kernel()
    while True:
        reply = kc.get_shell_msg(timeout=30)
        if reply['parent_header'].get('msg_id') == msg_id:
            break
    seen['interrupt'] = [reply['content']['status'], reply['content'].get('ename')]
    seen['kept'] = run(kc, "print(x + 1, end='')")
finally:
    # also when something above failed: the launcher holds this process's stdout open until it ends
    kc.stop_channels()
    km.shutdown_kernel(now=False)
print(json.dumps(seen))
`

/** A kernel that writes back an address it was not told: what a hostile or broken file looks like to the launcher. */
const LIAR = String.raw`
import json, sys, time
path = sys.argv[1]
info = json.load(open(path))
info.update(ip='10.9.9.9', shell_port=1, iopub_port=2, stdin_port=3, control_port=4, hb_port=5)
open(path, 'w').write(json.dumps(info))
time.sleep(60)
`

describe('kernels on Slurm compute nodes and over TCP, started from the login node', () => {
  let slurm: Slurm
  let login: Netns
  let sshd: Sshd
  let root: string
  let jupyterEnv: NodeJS.ProcessEnv

  before(async () => {
    slurm = await startSlurm({ nodes: 2 })
    login = await createNetns()
    await joinClusterNetwork(login)
    sshd = await startSshd({ netns: login })
    root = await mkdtemp(join(tmpdir(), 'ippt-slurm-kernel-'))
    jupyterEnv = { JUPYTER_DATA_DIR: join(root, 'jupyter'), JUPYTER_RUNTIME_DIR: join(root, 'runtime') }
  })
  /** Launchers started by a test: a failed test leaves none running. */
  const launched: ChildProcess[] = []
  afterEach(async () => {
    for (const child of launched.splice(0)) {
      child.kill('SIGTERM')
      await exited(child)
    }
  })
  after(async () => {
    await sshd.close()
    await login.close()
    await slurm.close()
    await rm(root, { recursive: true, force: true })
  })

  /** The destination, and the setup a site's login node would need to find its Slurm. */
  const args = (): string[] => [
    ...remoteKernelArgs(sshd, root),
    '--setup',
    `export SLURM_CONF=${slurm.env.SLURM_CONF}`,
  ]
  const node = (i: number) => {
    const n = slurm.nodes[i]
    if (n === undefined) throw new Error(`no node ${String(i)}`)
    return n
  }
  const slurmRun = async (cmd: string, words: readonly string[]): Promise<string> =>
    (await run(cmd, words, { env: { ...process.env, ...slurm.env }, timeout: 10_000 })).stdout.trim()
  const remoteDir = (): Promise<string[]> => readdir(join(root, 'remote')).catch(() => [])

  function launch(file: string, extra: readonly string[]) {
    // --kernel-cmd names its own python: no --python beside it
    const base = extra.includes('--kernel-cmd') ? args().filter((a) => !/python/u.test(a)) : args()
    const child = spawnCli(['kernel', ...base, '--connection-file', file, '--json', ...extra])
    launched.push(child)
    return { child, events: new JsonLines(child, { from: 'stderr' }) }
  }

  /** Polls a peer's state (Slurm's queue, a directory) until `done`; fails after `ms`. */
  async function until(what: string, done: () => Promise<boolean>, ms = 60_000): Promise<void> {
    const deadline = Date.now() + ms
    while (!(await done())) {
      assert.ok(Date.now() < deadline, what)
      await sleep(100)
    }
  }

  test('KernelManager runs it on a compute node with srun; SIGINT interrupts a sleep (scancel); shutdown cancels the job and leaves nothing', async () => {
    const target = node(1)
    const installed = await runCli(
      [
        'kernelspec',
        'install',
        ...args(),
        '--name',
        'on-node',
        `--slurm=-w ${target.name} --time=10`,
        '--interrupt-mode',
        'signal',
        '--json',
      ],
      jupyterEnv,
    )
    assert.equal(installed.code, 0, installed.stderr)
    const spec = JSON.parse(
      await readFile(join(root, 'jupyter', 'kernels', 'on-node', 'kernel.json'), 'utf8'),
    ) as { argv: string[]; metadata: { ipp_tunnel: { start: string } } }
    assert.ok(spec.argv.includes(`--slurm=-w ${target.name} --time=10`), spec.argv.join(' '))
    assert.equal(spec.metadata.ipp_tunnel.start, 'slurm')

    const drive = await runPython(DRIVE, { args: ['on-node'], env: jupyterEnv, timeoutMs: 170_000 })
    assert.equal(drive.code, 0, drive.stderr)
    const seen = JSON.parse(drive.stdout.trim().split('\n').at(-1) ?? '') as {
      where: [string, string]
      interrupt: [string, string]
      kept: [string, string]
    }
    const [host, netLink, job] = seen.where[1].split(' ')
    assert.equal(host, target.name, 'the kernel runs on the compute node')
    assert.equal(netLink, `net:[${String((await stat(`/run/netns/${target.ns.name}`)).ino)}]`)
    assert.match(job ?? '', /^\d+$/u)
    assert.deepEqual(seen.interrupt, ['error', 'KeyboardInterrupt'])
    assert.deepEqual(seen.kept, ['ok', '42'])
    // shutdown: srun ended, so the job it allocated is gone; no file left in the remote dir
    assert.equal(await slurmRun('squeue', ['-h']), '', 'no job left')
    assert.deepEqual(await remoteDir(), [])
    assert.deepEqual(await processesWith(join(root, 'remote')), [])
  })

  test('--slurm-jobid: a step of an allocation the user holds (salloc --no-shell); the allocation outlives it', async () => {
    const job = await allocate(slurm, 1, 1)
    try {
      const file = await writeKernelFile(root, 'jobid')
      const { child, events } = launch(file, ['--slurm-jobid', job])
      const started = await events.next('started', 60_000)
      assert.equal(started.job, job)
      const where = await execute(
        file,
        "import os; print(os.environ['SLURM_JOB_ID'], os.environ['SLURM_STEP_ID'])",
      )
      assert.equal(where.stdout, `ok ${job} ${String(started.step)}\n`, where.stderr)
      child.kill('SIGTERM')
      assert.deepEqual(await exited(child), { code: 0, signal: null })
      assert.equal(await slurmRun('squeue', ['-h', '-s', '-j', job]), '', 'no step left')
      assert.match(await slurmRun('squeue', ['-h', '-j', job, '-o', '%i %t']), new RegExp(`^${job} R$`, 'u'))
      assert.deepEqual(await remoteDir(), [])
    } finally {
      await slurmRun('scancel', [job])
    }
  })

  test('a queue wait is reported (kernel-state pending, then running); a SIGKILLed launcher leaves no job after --persist', async () => {
    const target = node(0)
    await slurmRun('scontrol', ['update', `nodename=${target.name}`, 'state=drain', 'reason=busy'])
    const file = await writeKernelFile(root, 'queued')
    const { child, events } = launch(file, [`--slurm=-w ${target.name}`, '--persist', '2'])
    try {
      const pending = await events.next((e) => e.event === 'kernel-state' && e.state === 'pending', 60_000)
      assert.match(await slurmRun('squeue', ['-h', '-j', String(pending.job), '-o', '%t']), /^PD$/u)
    } finally {
      await slurmRun('scontrol', ['update', `nodename=${target.name}`, 'state=resume'])
    }
    const running = await events.next((e) => e.event === 'kernel-state' && e.state === 'running', 60_000)
    assert.equal(running.node, target.name)
    await events.next('started')
    const x = await execute(file, 'import socket; print(socket.gethostname())')
    assert.equal(x.stdout, `ok ${target.name}\n`, x.stderr)
    child.kill('SIGKILL')
    await exited(child)
    // the supervisor alone ends srun once the lease runs out: the job is cancelled, the files removed
    await until('the job outlived the lease', async () => (await slurmRun('squeue', ['-h'])) === '')
    await until('the remote files outlived the lease', async () => (await remoteDir()).length === 0)
  })

  test('a launcher SIGTERMed while its job waits in the queue cancels the job and leaves nothing', async () => {
    const target = node(0)
    await slurmRun('scontrol', ['update', `nodename=${target.name}`, 'state=drain', 'reason=busy'])
    try {
      const file = await writeKernelFile(root, 'cancelled')
      const { child, events } = launch(file, [`--slurm=-w ${target.name}`])
      const pending = await events.next((e) => e.event === 'kernel-state' && e.state === 'pending', 60_000)
      assert.notEqual(await slurmRun('squeue', ['-h', '-j', String(pending.job)]), '')
      child.kill('SIGTERM')
      await exited(child)
      assert.equal(await slurmRun('squeue', ['-h']), '', 'the pending job was cancelled')
      assert.deepEqual(await remoteDir(), [])
    } finally {
      await slurmRun('scontrol', ['update', `nodename=${target.name}`, 'state=resume'])
    }
  })

  test('--remote-transport tcp on the login node: ports the kernel picked, read back and forwarded', async () => {
    const file = await writeKernelFile(root, 'tcp')
    const { child, events } = launch(file, ['--remote-transport', 'tcp'])
    await events.next('started', 60_000)
    const [name] = await remoteDir()
    const remote = JSON.parse(await readFile(join(root, 'remote', name ?? '', 'kernel.json'), 'utf8')) as {
      transport: string
      ip: string
      shell_port: number
    }
    assert.equal(remote.transport, 'tcp')
    assert.equal(remote.ip, '127.0.0.1')
    assert.ok(remote.shell_port > 0)
    const local = JSON.parse(await readFile(file, 'utf8')) as { shell_port: number }
    assert.notEqual(remote.shell_port, local.shell_port, "the kernel's own port, not the file's")
    const x = await execute(file, "import os; print(os.readlink('/proc/self/ns/net'))")
    assert.equal(x.stdout, `ok net:[${String((await stat(`/run/netns/${login.name}`)).ino)}]\n`, x.stderr)
    child.kill('SIGTERM')
    assert.deepEqual(await exited(child), { code: 0, signal: null })
    assert.deepEqual(await remoteDir(), [])
  })

  test('--remote-transport tcp: a file written back with another address is refused, and the kernel stopped', async () => {
    const liar = join(root, 'liar.py')
    await writeFile(liar, LIAR)
    const file = await writeKernelFile(root, 'liar')
    const { child, events } = launch(file, [
      '--remote-transport',
      'tcp',
      '--kernel-cmd',
      `/usr/bin/python3 ${liar} {remote_connection_file}`,
    ])
    const failed = await events.next('error', 60_000)
    assert.equal(failed.code, 'E_CONNFILE_FIELD')
    assert.match(String(failed.message), /kernel\.json: field "ip" is "10\.9\.9\.9" over tcp/u)
    assert.equal((await exited(child)).code, 2, 'a bad connection file (as for a local one)')
    assert.deepEqual(await remoteDir(), [])
    assert.deepEqual(await processesWith(liar), [])
  })
})
