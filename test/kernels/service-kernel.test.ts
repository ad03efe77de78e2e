import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readdir, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { CLI, JsonLines, exited, runCli, spawnCli } from '../support/cli.js'
import { processesWith, type Netns, type Sshd } from '../support/index.js'
import { runPython } from '../support/ipp.js'
import { startOtpSshd } from '../support/otp.js'
import { literal, loginOnPty } from '../support/pty.js'
import {
  execute,
  type KernelServer,
  remoteKernelArgs,
  startKernelServer,
  startLauncher,
  startService,
  writeKernelFile,
} from './helpers.js'

/**
 * Two kernels of one kernelspec at once, as two notebooks open in JupyterLab: each runs where the sshd is and
 * keeps its own state; `ipp-tunnel status` (asked from the same Python, while both run) lists them.
 */
const TWO = String.raw`
import json, subprocess, sys, time
from jupyter_client.manager import KernelManager

def run(kc, code):
    out = []
    def hook(msg):
        if msg['msg_type'] == 'stream':
            out.append(msg['content']['text'])
    reply = kc.execute_interactive(code, output_hook=hook, timeout=60)
    return reply['content']['status'], ''.join(out)

kms = [KernelManager(kernel_name=sys.argv[1]) for _ in range(2)]
for km in kms:
    km.start_kernel()
kcs = [km.client() for km in kms]
for kc in kcs:
    kc.start_channels()
    kc.wait_for_ready(timeout=90)
seen = {}
run(kcs[0], 'x = 1')
run(kcs[1], 'x = 2')
seen['where'] = [run(kc, "import os; print(os.readlink('/proc/self/ns/net'), x, end='')")[1] for kc in kcs]
# interrupt_mode signal: SIGINT to the launcher, over the service socket, to the remote kernel
msg_id = kcs[0].execute("import time; time.sleep(60)", stop_on_error=False)
while True:
    msg = kcs[0].get_iopub_msg(timeout=30)
    if msg['parent_header'].get('msg_id') == msg_id and msg['msg_type'] == 'status' and msg['content']['execution_state'] == 'busy':
        break
time.sleep(0.3)
kms[0].interrupt_kernel()
while True:
    reply = kcs[0].get_shell_msg(timeout=30)
    if reply['parent_header'].get('msg_id') == msg_id:
        break
seen['interrupt'] = [reply['content']['status'], reply['content'].get('ename')]
status = subprocess.run([sys.argv[2], sys.argv[3], 'status', '--json'], capture_output=True, text=True)
seen['status'] = json.loads(status.stdout)
for kc, km in zip(kcs, kms):
    kc.stop_channels()
    km.shutdown_kernel(now=False)
print(json.dumps(seen))
`

describe('kernels through the running watch service: one link, one login for all of them', () => {
  let ns: Netns
  let sshd: Sshd
  let root: string
  let kernelServer: KernelServer
  let env: NodeJS.ProcessEnv

  before(async () => {
    kernelServer = await startKernelServer('ippt-service-kernel-')
    ;({ ns, sshd, root } = kernelServer)
    env = {
      JUPYTER_DATA_DIR: join(root, 'jupyter'),
      JUPYTER_RUNTIME_DIR: join(root, 'runtime'),
      IPP_TUNNEL_RUNTIME_DIR: join(root, 'run'),
      SSH_AUTH_SOCK: '',
    }
  })
  after(() => kernelServer.close())

  test('two kernels share the service’s one SSH connection (one login in sshd’s log); status lists them', async (t) => {
    const installed = await runCli(
      [
        'kernelspec',
        'install',
        ...remoteKernelArgs(sshd, root),
        '--name',
        'shared',
        '--no-check',
        '--interrupt-mode',
        'signal',
      ],
      env,
    )
    assert.equal(installed.code, 0, installed.stderr)
    await startService(t, sshd, join(root, 'watched'), env)
    const loginsBefore = sshd.log().match(/Accepted publickey/gu)?.length ?? 0

    const run = await runPython(TWO, { args: ['shared', process.execPath, CLI], env, timeoutMs: 170_000 })
    assert.equal(run.code, 0, run.stderr)
    const seen = JSON.parse(run.stdout.trim().split('\n').at(-1) ?? '') as {
      where: string[]
      interrupt: [string, string]
      status: { links: number; kernels: { state: string; host: string; file: string }[] }
    }
    const nsIno = (await stat(`/run/netns/${ns.name}`)).ino
    assert.deepEqual(seen.where, [`net:[${nsIno}] 1`, `net:[${nsIno}] 2`])
    assert.deepEqual(seen.interrupt, ['error', 'KeyboardInterrupt'])
    assert.equal(seen.status.links, 1)
    assert.deepEqual(
      seen.status.kernels.map((k) => k.state),
      ['running', 'running'],
    )
    // both launchers said where their kernel went: the Jupyter server's log
    assert.equal(run.stderr.match(/through the ipp-tunnel service's link/gu)?.length, 2, run.stderr)
    assert.equal((sshd.log().match(/Accepted publickey/gu)?.length ?? 0) - loginsBefore, 1, sshd.log())
    assert.deepEqual(await processesWith(join(root, 'remote')), [], 'no remote kernel or supervisor')
    assert.deepEqual(await readdir(join(root, 'remote')), [])
  })

  test('the service stops under a running kernel: its launcher follows it over a link of its own, state kept', async (t) => {
    const service = await startService(t, sshd, join(root, 'watched-2'), env)
    const file = await writeKernelFile(root, 'adopt')
    const { launcher, events, started } = await startLauncher(t, sshd, root, file, env)
    assert.ok(events.events.some((e) => e.event === 'via-service'))
    const set = await execute(file, "x = 7; print(x, end='')", { timeoutMs: 90_000 })
    assert.equal(set.stdout, 'ok 7', set.stderr)

    service.kill('SIGTERM')
    assert.equal((await exited(service)).code, 0)
    await events.next((e) => e.event === 'warning' && /link of our own/u.test(String(e.message)), 60_000)
    const after = await execute(file, "import os; print(x, os.getpid(), end='')", { timeoutMs: 90_000 })
    assert.equal(after.stdout, `ok 7 ${String(started.pid)}`, after.stderr)
    launcher.kill('SIGTERM')
    assert.deepEqual(await exited(launcher), { code: 0, signal: null })
    assert.deepEqual(await processesWith(join(root, 'remote')), [], 'no remote kernel or supervisor')
  })
  test('a restart through the service (the launcher stopped, a new one on the same file) logs in no more, and starts with no new command session', async (t) => {
    await startService(t, sshd, join(root, 'watched-3'), env)
    const file = await writeKernelFile(root, 'restart')
    const logins = (): number => sshd.log().match(/Accepted publickey/gu)?.length ?? 0
    const sessions = (): number => sshd.log().match(/Starting session: command/gu)?.length ?? 0
    const loginsBefore = logins()
    const run = async (code: string): Promise<{ pid: unknown; out: string }> => {
      const { launcher, started } = await startLauncher(t, sshd, root, file, env)
      const got = await execute(file, code, { timeoutMs: 90_000 })
      launcher.kill('SIGTERM')
      assert.deepEqual(await exited(launcher), { code: 0, signal: null })
      return { pid: started.pid, out: got.stdout }
    }
    const first = await run("x = 1; print('set', end='')")
    assert.equal(first.out, 'ok set')
    const sessionsBefore = sessions()
    // what jupyter_client's restart does: the same file, key and ports, a new launcher a moment later
    const second = await run("print('x' in dir(), end='')")
    assert.equal(second.out, 'ok False')
    assert.notEqual(second.pid, first.pid)
    assert.equal(logins() - loginsBefore, 1, sshd.log())
    // the kept supervisor started and stopped it; the one session is the launcher's following of its output
    assert.equal(sessions() - sessionsBefore, 1, sshd.log())
    assert.deepEqual(await processesWith(join(root, 'remote')), [], 'no remote kernel or supervisor')
  })
})

test('a launcher with no terminal at a one-time-code server waits and says so; the service and `login` take it on', async (t) => {
  const { otp, sshd } = await startOtpSshd(t)
  const dir = await mkdtemp(join(tmpdir(), 'ippt-kernel-otp-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const env = { IPP_TUNNEL_RUNTIME_DIR: join(dir, 'run'), SSH_AUTH_SOCK: '' }
  const file = await writeKernelFile(dir, 'otp')
  const auth = ['--identity', sshd.clientKey, '--known-hosts', sshd.knownHostsFile]
  const destination = `root@${sshd.host}:${sshd.port}`
  const launcher = spawnCli(
    [
      'kernel',
      destination,
      ...auth,
      '--python',
      '/usr/bin/python3',
      '--remote-dir',
      join(dir, 'remote'),
      '--connection-file',
      file,
      '--json',
    ],
    env,
  )
  t.after(async () => {
    launcher.kill('SIGKILL')
    await exited(launcher)
  })
  const events = new JsonLines(launcher, { from: 'stderr' })
  const waiting = await events.next('waiting')
  assert.equal(waiting.code, 'E_AUTH_PROMPT')
  assert.match(String(waiting.message), /ipp-tunnel watch.*ipp-tunnel login/u)
  assert.equal(launcher.exitCode, null, 'the launcher waits: it does not exit')

  const watched = join(dir, 'watched')
  await mkdir(watched, { mode: 0o700 })
  const service = spawnCli(['watch', '--json', '--dir', watched, ...auth], env)
  t.after(async () => {
    service.kill('SIGTERM')
    await exited(service)
  })
  await events.next((e) => e.event === 'kernel-state' && e.state === 'waiting-login', 60_000)
  const status = await runCli(['status', '--json'], env)
  const report = JSON.parse(status.stdout) as { kernels: { state: string; file: string }[] }
  assert.deepEqual(
    report.kernels.map((k) => [k.file, k.state]),
    [[file, 'waiting-login']],
  )
  const code = await otp.code(await otp.counter())
  const login = await loginOnPty(literal(otp.prompt), code, env)
  assert.equal(login.code, 0, login.output)
  const started = await events.next((e) => e.event === 'started' || e.event === 'error', 60_000)
  assert.equal(started.event, 'started', JSON.stringify(events.events))
  assert.ok(events.events.some((e) => e.event === 'via-service'))
  const executed = await execute(file, "import os; print(os.getpid(), end='')", { timeoutMs: 90_000 })
  assert.equal(executed.code, 0, executed.stderr)
  assert.equal(executed.stdout, `ok ${String(started.pid)}`)
  assert.equal(sshd.log().match(/Accepted keyboard-interactive/gu)?.length, 1, sshd.log())

  launcher.kill('SIGTERM')
  assert.deepEqual(await exited(launcher), { code: 0, signal: null })
  assert.deepEqual(await processesWith(join(dir, 'remote')), [], 'no remote kernel or supervisor')
  assert.deepEqual(await readdir(join(dir, 'remote')), [])
})
