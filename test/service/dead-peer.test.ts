import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { exited, JsonLines, runCli, spawnCli } from '../support/cli.js'
import { sshArgsOf, startEchoServer, startSshd, type EchoServer, type Sshd } from '../support/index.js'
import { stopProcess } from '../support/ipp.js'
import { kernelFileText } from '../support/kernel.js'

describe('a kernel that dies under the service', () => {
  let sshd: Sshd
  let peer: EchoServer
  let base: string
  let ssh: string[]

  before(async () => {
    sshd = await startSshd()
    peer = await startEchoServer()
    base = await mkdtemp(join(tmpdir(), 'ippt-dead-peer-'))
    ssh = ['--ssh', `root@${sshd.host}:${sshd.port}`, ...sshArgsOf(sshd)]
  })
  after(async () => {
    await rm(base, { recursive: true, force: true })
    await peer.close()
    await sshd.close()
  })

  test('one error event naming the file and the channel; ping on the copy fails at once naming the channel', async () => {
    const dir = join(base, 'watched')
    await mkdir(dir, { mode: 0o700 })
    const source = join(dir, 'kernel-1.json')
    const port = peer.port
    await writeFile(source, kernelFileText(port), { mode: 0o600 })
    const env = { IPP_TUNNEL_RUNTIME_DIR: join(base, 'run') }
    const watch = spawnCli(['watch', '--dir', dir, '--json', ...ssh], env)
    const events = new JsonLines(watch)
    try {
      const ready = await events.next((e) => e.event === 'ready' && e.file === source)
      await peer.close() // the kernel dies; its file stays
      const copy = String(ready.out)
      const ping = await runCli(['ping', copy, '--timeout', '30'], env)
      assert.equal(ping.code, 1, ping.stderr)
      assert.match(
        ping.stderr,
        /channel shell at 127\.0\.0\.1:\d+ closed the connection without a word; if this is a tunnel's loopback copy, the controller or kernel behind it is gone/,
      )
      const error = await events.next((e) => e.event === 'error' && e.file === source)
      assert.equal(error.code, 'E_FORWARD')
      assert.match(String(error.message), /^channel (shell|iopub|stdin|control|hb): /)
      const again = await runCli(['ping', copy, '--timeout', '30'], env)
      assert.equal(again.code, 1)
      const status = await runCli(['status', '--json'], env)
      assert.equal(status.code, 0, status.stderr)
      assert.equal(
        events.events.filter((e) => e.event === 'error').length,
        1,
        'said once, not per connection',
      )
      watch.kill('SIGTERM')
      assert.equal((await exited(watch)).code, 0, events.stderr)
    } finally {
      await stopProcess(watch, 'SIGKILL')
    }
  })
})
