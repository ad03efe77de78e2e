import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { copyFile, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { exited, JsonLines, runCli, spawnCli } from '../support/cli.js'
import { createNetns, sshArgsOf, startSshd, type Netns, type Sshd, exists } from '../support/index.js'
import { runPython, stopProcess } from '../support/ipp.js'
import { startKernel, type Kernel } from '../support/kernel.js'

/** jupyter_client finds the copy by the newest kernel file and by name, and a BlockingKernelClient gets a reply. */
const FIND_AND_CONNECT = `
import json, sys, jupyter_client
newest = jupyter_client.find_connection_file()
named = jupyter_client.find_connection_file(sys.argv[1])
kc = jupyter_client.BlockingKernelClient(connection_file=named)
kc.load_connection_file()
kc.start_channels()
kc.wait_for_ready(timeout=30)
kc.stop_channels()
print(json.dumps({"newest": newest, "named": named}))
`

describe('a kernel file in a Jupyter runtime dir: the copy is kernel-<id>-ssh.json beside it, as jupyter_client names it', () => {
  let ns: Netns
  let sshd: Sshd
  let kernel: Kernel
  let runtime: string
  let run: string
  let ssh: string[]
  let env: NodeJS.ProcessEnv
  let watch: ChildProcess | undefined

  before(async () => {
    ns = await createNetns()
    sshd = await startSshd({ netns: ns })
    kernel = await startKernel({ netns: ns })
    runtime = await mkdtemp(join(tmpdir(), 'ippt-jrt-'))
    run = await mkdtemp(join(tmpdir(), 'ippt-kc-run-'))
    ssh = ['--ssh', `${sshd.user}@${sshd.host}:${sshd.port}`, ...sshArgsOf(sshd)]
    env = { JUPYTER_RUNTIME_DIR: runtime, IPP_TUNNEL_RUNTIME_DIR: run }
    await copyFile(kernel.file, join(runtime, 'kernel-abc.json'))
  })
  after(async () => {
    if (watch) await stopProcess(watch, 'SIGKILL')
    await kernel.close()
    await sshd.close()
    await ns.close()
    await rm(runtime, { recursive: true, force: true })
    await rm(`${runtime}-tunnel`, { recursive: true, force: true })
    await rm(run, { recursive: true, force: true })
  })

  test('up kernel-abc.json: jupyter_client finds kernel-abc-ssh.json (newest and by name) and talks to the kernel', async (t) => {
    const source = join(runtime, 'kernel-abc.json')
    const copy = join(runtime, 'kernel-abc-ssh.json')
    const child = spawnCli(['up', source, '--json', ...ssh], env)
    t.after(() => stopProcess(child, 'SIGKILL'))
    const events = new JsonLines(child)
    assert.equal((await events.next('ready')).out, copy)
    const found = await runPython(FIND_AND_CONNECT, { args: ['kernel-abc-ssh.json'], env })
    assert.equal(found.code, 0, found.stderr)
    assert.deepEqual(JSON.parse(found.stdout), { newest: copy, named: copy })
    child.kill('SIGINT')
    assert.deepEqual(await exited(child), { code: 0, signal: null }, events.stderr)
    assert.deepEqual(await readdir(runtime), ['kernel-abc.json'], 'the copy goes with the tunnel')
  })

  test("up never replaces a kernel-<id>-ssh.json it did not write (jupyter console --ssh's)", async () => {
    const theirs = join(runtime, 'kernel-abc-ssh.json')
    await writeFile(theirs, 'theirs\n')
    const result = await runCli(['up', join(runtime, 'kernel-abc.json'), ...ssh], env)
    assert.equal(result.code, 2, result.stderr)
    assert.match(result.stderr, /kernel-abc-ssh\.json exists/)
    assert.equal(await readFile(theirs, 'utf8'), 'theirs\n')
    await rm(theirs)
  })

  test('watch --dir on the runtime dir: copies beside each kernel file, never tunnels a -ssh.json, never replaces one not its own', async () => {
    const theirs = join(runtime, 'kernel-def-ssh.json')
    await writeFile(theirs, 'theirs\n')
    watch = spawnCli(['watch', '--json', '--dir', runtime, ...ssh], env)
    const events = new JsonLines(watch)
    const source = join(runtime, 'kernel-abc.json')
    const copy = join(runtime, 'kernel-abc-ssh.json')
    const ready = await events.next((e) => e.event === 'ready' && e.file === source)
    assert.equal(ready.out, copy)
    const found = await runPython(FIND_AND_CONNECT, { args: ['kernel-abc-ssh.json'], env })
    assert.equal(found.code, 0, found.stderr)
    assert.deepEqual(JSON.parse(found.stdout), { newest: copy, named: copy })

    const def = join(runtime, 'kernel-def.json')
    await copyFile(kernel.file, def)
    const conflict = await events.next((e) => e.event === 'error' && e.file === def)
    assert.equal(conflict.code, 'E_COPY_CONFLICT')
    assert.equal(await readFile(theirs, 'utf8'), 'theirs\n')

    const status = JSON.parse((await runCli(['status', '--json'], env)).stdout) as {
      files: { file: string }[]
    }
    assert.deepEqual(status.files.map((f) => f.file).sort(), [source, def])
    watch.kill('SIGTERM')
    assert.equal((await exited(watch)).code, 0, events.stderr)
    watch = undefined
    assert.equal(await exists(copy), false)
    assert.equal(await readFile(theirs, 'utf8'), 'theirs\n')
  })
})
