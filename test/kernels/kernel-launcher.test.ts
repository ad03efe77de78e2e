import assert from 'node:assert/strict'
import { readdir, readFile, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'

import * as zmq from 'zeromq'

import { exited, JsonLines, spawnCli } from '../support/cli.js'
import { alive, freePort, type Sshd } from '../support/index.js'
import {
  execute,
  type KernelServer,
  remoteKernelArgs,
  startKernelServer,
  writeKernelFile,
} from './helpers.js'

describe('ipp-tunnel kernel: the launcher a kernelspec runs, by hand', () => {
  let sshd: Sshd
  let root: string
  let kernelServer: KernelServer

  before(async () => {
    kernelServer = await startKernelServer('ippt-kernel-launcher-')
    ;({ sshd, root } = kernelServer)
  })
  after(() => kernelServer.close())

  function connectionFile(name: string, ports?: number[]): Promise<string> {
    return writeKernelFile(root, name, ports)
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
    assert.deepEqual((await execute(file, 'x = 41')).stdout, 'ok ')
    await sshd.killConnections()
    await events.next('reattached', 60_000)
    const after = await execute(file, 'print(x + 1)')
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

  test("jupyter_client 8's fields reach the remote file; its Curve keys only a kernel that reads them (not ipykernel 6.17)", async () => {
    const { publicKey, secretKey } = zmq.curveKeyPair()
    const file = await connectionFile('curve')
    const written = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>
    const later = { x_future: { nested: [1, 'two'] } }
    await writeFile(
      file,
      JSON.stringify({ ...written, curve_publickey: publicKey, curve_secretkey: secretKey, ...later }),
      { mode: 0o600 },
    )
    const { child, events } = launch(file)
    const warning = await events.next('warning')
    assert.match(
      String(warning.message),
      /^the remote kernel runs without Curve encryption: its ipykernel 6\.17\.\d+ reads no Curve keys \(ipykernel 7\.3\.0 does\); /u,
    )
    const started = await events.next('started')
    const remote = JSON.parse(
      await readFile(join(root, 'remote', String(started.name), 'kernel.json'), 'utf8'),
    ) as Record<string, unknown>
    assert.equal(remote.jupyter_session, '/home/me/notebook.ipynb')
    assert.deepEqual(remote.x_future, later.x_future)
    assert.equal(remote.key, written.key)
    assert.equal(remote.curve_publickey, undefined)
    assert.equal(remote.curve_secretkey, undefined)
    // Debian's jupyter_client 7.4 ignores the Curve keys, as the kernel does: they talk
    assert.equal((await execute(file, 'print(6 * 7)')).stdout, 'ok 42\n')
    assert.equal(events.events.filter((e) => e.event === 'warning').length, 1)
    child.kill('SIGTERM')
    assert.deepEqual(await exited(child), { code: 0, signal: null })
  })
})
