import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'

import { exited, JsonLines, spawnCli } from '../support/cli.js'
import { alive, createNetns, freePort, startSshd, type Netns, type Sshd } from '../support/index.js'
import { runPython } from '../support/ipp.js'
import { kernelFileText } from '../support/kernel.js'
import { remoteKernelArgs } from './helpers.js'

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

describe('ipp-tunnel kernel: the launcher a kernelspec runs, by hand', () => {
  let ns: Netns
  let sshd: Sshd
  let root: string

  before(async () => {
    ns = await createNetns()
    sshd = await startSshd({ netns: ns })
    root = await mkdtemp(join(tmpdir(), 'ippt-kernel-launcher-'))
  })
  after(async () => {
    await sshd.close()
    await ns.close()
    await rm(root, { recursive: true, force: true })
  })

  /** A connection file as jupyter_client writes it: five free ports on 127.0.0.1, a fresh key. */
  async function connectionFile(name: string, ports?: number[]): Promise<string> {
    const free: number[] = []
    while (ports === undefined && free.length < 5) free.push(await freePort())
    const [shell = 0, iopub = 0, stdin = 0, control = 0, hb = 0] = ports ?? free
    const file = join(root, `kernel-${name}.json`)
    const text = kernelFileText([shell, iopub, stdin, control, hb], {
      key: randomBytes(16).toString('hex'),
      kernel_name: 'remote',
      jupyter_session: '/home/me/notebook.ipynb',
    })
    await writeFile(file, text, { mode: 0o600 })
    return file
  }

  function launch(file: string, extra: readonly string[] = []) {
    const child = spawnCli([
      'kernel',
      ...remoteKernelArgs(sshd, root),
      '--connection-file',
      file,
      '--json',
      ...extra,
    ])
    return { child, events: new JsonLines(child, { from: 'stderr' }) }
  }

  test('the kernel keeps its state across a dropped link, and the launcher attaches again', async (t) => {
    const file = await connectionFile('drop')
    const { child, events } = launch(file)
    t.after(() => child.kill('SIGKILL'))
    await events.next('started')
    assert.deepEqual((await runPython(EXECUTE, { args: [file, 'x = 41'] })).stdout, 'ok ')
    await sshd.killConnections()
    await events.next('reattached', 60_000)
    const after = await runPython(EXECUTE, { args: [file, 'print(x + 1)'] })
    assert.equal(after.stdout, 'ok 42\n', after.stderr)
    child.kill('SIGTERM')
    assert.deepEqual(await exited(child), { code: 0, signal: null })
    assert.deepEqual(await readdir(join(root, 'remote')), [])
  })

  test('a SIGKILLed launcher leaves the kernel for --persist seconds, then the server side ends it alone', async () => {
    const file = await connectionFile('orphan')
    const { child, events } = launch(file, ['--persist', '2'])
    const started = await events.next('started')
    const pid = Number(started.pid)
    assert.ok(await alive(pid))
    child.kill('SIGKILL')
    await exited(child)
    const deadline = Date.now() + 30_000
    while ((await alive(pid)) || (await readdir(join(root, 'remote'))).length > 0) {
      assert.ok(Date.now() < deadline, 'the kernel outlived its lease')
      await sleep(100)
    }
  })

  test('a port of the file taken here: a clear error naming the channel, and nothing left on the server', async () => {
    const taken = createServer().listen(0, '127.0.0.1')
    await new Promise((resolve) => taken.once('listening', resolve))
    const address = taken.address()
    const port = typeof address === 'object' && address !== null ? address.port : 0
    const file = await connectionFile('taken', [
      await freePort(),
      await freePort(),
      await freePort(),
      port,
      await freePort(),
    ])
    const { child, events } = launch(file)
    const failed = await events.next('error')
    taken.close()
    assert.equal(failed.code, 'E_FORWARD')
    assert.match(
      String(failed.message),
      new RegExp(`channel "control": cannot listen on 127\\.0\\.0\\.1:${port}`, 'u'),
    )
    assert.deepEqual(await exited(child), { code: 1, signal: null })
    assert.deepEqual(await readdir(join(root, 'remote')), [])
  })
})
