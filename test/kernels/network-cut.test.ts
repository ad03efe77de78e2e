import assert from 'node:assert/strict'
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { exited, JsonLines, spawnCli } from '../support/cli.js'
import {
  alive,
  comeBackAs,
  createNetns,
  cutOff,
  joinClusterNetwork,
  startSshd,
  type Netns,
  type Sshd,
} from '../support/index.js'
import { execute, remoteKernelArgs, writeKernelFile } from './helpers.js'

describe('ipp-tunnel kernel across a network cut during which this side gets another address', () => {
  /** The ssh server's namespace, and the launcher's own (a laptop): they reach each other through this host. */
  let server: Netns
  let laptop: Netns
  let sshd: Sshd
  let root: string
  let sshConfig: string

  before(async () => {
    server = await createNetns()
    laptop = await createNetns()
    await joinClusterNetwork(server)
    await joinClusterNetwork(laptop)
    sshd = await startSshd({ netns: server })
    root = await mkdtemp(join(tmpdir(), 'ippt-kernel-cut-'))
    // a dead connection is noticed after two unanswered keepalives a second apart
    sshConfig = join(root, 'ssh_config')
    await writeFile(sshConfig, 'Host *\n  ServerAliveInterval 1\n  ServerAliveCountMax 2\n')
  })
  after(async () => {
    await sshd.close()
    await laptop.close()
    await server.close()
    await rm(root, { recursive: true, force: true })
  })

  test('the old TCP connection is dead; the launcher reconnects from the new address to the same node, with the state', async (t) => {
    const file = await writeKernelFile(root, 'cut')
    const child = spawnCli(
      [
        'kernel',
        ...remoteKernelArgs(sshd, root),
        '--ssh-config',
        sshConfig,
        '--connection-file',
        file,
        '--json',
      ],
      {},
      { wrap: ['ip', 'netns', 'exec', laptop.name] },
    )
    t.after(() => child.kill('SIGKILL'))
    const events = new JsonLines(child, { from: 'stderr' })
    const started = await events.next('started')
    // the file's ports are on the laptop's loopback: the client runs there too
    const before = await execute(file, 'import os; x = 41; print(os.getpid())', { netns: laptop })
    assert.equal(before.stdout, `ok ${String(started.pid)}\n`, before.stderr)
    assert.match(sshd.log(), new RegExp(`Accepted publickey for root from ${laptop.nsAddr} `, 'u'))

    await cutOff(laptop)
    // the launcher has noticed (keepalives unanswered): its old connection is gone for good, the address with it
    await events.next('reconnecting', 60_000)
    const mark = sshd.log().length
    const address = await comeBackAs(laptop, 3)
    await events.next('reattached', 60_000)

    const after = await execute(file, 'print(x + 1, os.getpid())', { netns: laptop })
    assert.equal(after.stdout, `ok 42 ${String(started.pid)}\n`, after.stderr)
    // a new connection from the new address, to the node the kernel runs on (no E_REMOTE_NODE: it attached)
    assert.match(sshd.log().slice(mark), new RegExp(`Accepted publickey for root from ${address} `, 'u'))
    assert.ok(await alive(Number(started.pid)))
    child.kill('SIGTERM')
    assert.deepEqual(await exited(child), { code: 0, signal: null })
    assert.deepEqual(await readdir(join(root, 'remote')), [])
  })
})
