import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { connect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { ChannelBudget, rootBudget } from '../../src/tunnel/index.js'
import { CLI, exited, JsonLines } from '../support/cli.js'
import { sshArgsOf, startEchoServer, startSshd, type EchoServer, type Sshd } from '../support/index.js'

/** Connects, sends a byte, and says whether it came back (carried) or the connection ended first (refused). */
function attempt(port: number): Promise<{ carried: boolean; socket: Socket }> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1')
    let done = false
    const settle = (carried: boolean): void => {
      if (done) return
      done = true
      if (!carried) socket.destroy()
      resolve({ carried, socket })
    }
    socket.on('error', () => settle(false))
    socket.once('end', () => settle(false))
    socket.once('close', () => settle(false))
    socket.once('data', () => settle(true))
    socket.write('x')
  })
}

function localPort(ready: Record<string, unknown>): number {
  const forwards = ready.forwards as { channel: string; local: string }[]
  const shell = forwards.find((f) => f.channel === 'shell')
  if (shell === undefined) throw new Error('no shell forward')
  return Number(shell.local.split(':')[1])
}

describe('one file cannot starve the others of file descriptors', () => {
  let sshd: Sshd
  let echo: EchoServer
  let dir: string

  before(async () => {
    ;[sshd, echo, dir] = await Promise.all([
      startSshd(),
      startEchoServer(),
      mkdtemp(join(tmpdir(), 'ippt-fds-')),
    ])
  })
  after(async () => {
    await Promise.all([echo.close(), sshd.close()])
    await rm(dir, { recursive: true, force: true })
  })

  test('budgets nest: a share fills before its parent, and a full parent refuses every share', () => {
    const root = new ChannelBudget(3)
    const a = new ChannelBudget(2, root)
    const b = new ChannelBudget(2, root)
    assert.deepEqual([a.take(), a.take(), a.take()], [true, true, false])
    assert.equal(a.describe(), '2')
    assert.deepEqual([b.take(), b.take()], [true, false])
    assert.equal(b.describe(), '3')
    a.give()
    assert.equal(b.take(), true)
    assert.equal(root.open, 3)
  })

  test('the root budget keeps back an eighth of the descriptors, plus what the listeners of pulled files hold', () => {
    assert.equal(rootBudget(1024).limit, 1024 - 128)
    // watch --remote with one directory under ulimit -n 1024: 51 files of 10 listeners each are reserved
    assert.equal(rootBudget(1024, 510).limit, 1024 - 128 - 510)
    assert.equal(rootBudget(256, 10_000).limit, 1)
  })

  test('watch with 256 descriptors: a flood on one file leaves the other file working', async (t) => {
    const watched = join(dir, 'watched')
    const runtime = join(dir, 'run')
    await mkdir(watched, { mode: 0o700 })
    await mkdir(runtime, { mode: 0o700 })
    const kernel = JSON.stringify({
      ...Object.fromEntries(
        ['shell', 'iopub', 'stdin', 'control', 'hb'].map((k) => [`${k}_port`, echo.port]),
      ),
      ip: '127.0.0.1',
      key: '',
      transport: 'tcp',
      signature_scheme: 'hmac-sha256',
    })
    const fileA = join(watched, 'kernel-a.json')
    const fileB = join(watched, 'kernel-b.json')
    await writeFile(fileA, kernel, { mode: 0o600 })
    await writeFile(fileB, kernel, { mode: 0o600 })
    const watch = spawn(
      'prlimit',
      [
        '--nofile=256:256',
        '--',
        process.execPath,
        CLI,
        'watch',
        '--json',
        '--dir',
        watched,
        '--ssh',
        `${sshd.user}@${sshd.host}:${sshd.port}`,
        ...sshArgsOf(sshd),
      ],
      { env: { ...process.env, IPP_TUNNEL_RUNTIME_DIR: runtime }, stdio: ['ignore', 'pipe', 'pipe'] },
    )
    const events = new JsonLines(watch)
    t.after(async () => {
      watch.kill('SIGKILL')
      await exited(watch)
    })
    const [readyA, readyB] = await Promise.all(
      [fileA, fileB].map((file) => events.next((e) => e.event === 'ready' && e.file === file)),
    )
    const portA = localPort(readyA ?? {})
    const portB = localPort(readyB ?? {})

    // more connections to A than the whole process has descriptors, all held open
    const flood = await Promise.all(Array.from({ length: 400 }, () => attempt(portA)))
    t.after(() => {
      for (const { socket } of flood) socket.destroy()
    })
    const carried = flood.filter((f) => f.carried).length
    assert.ok(carried > 0, 'A carries connections up to its share')
    assert.ok(carried < 200, `A holds at most its share, not every descriptor (carried ${carried})`)

    // B still accepts and carries while A's flood is held
    const b = await attempt(portB)
    assert.equal(b.carried, true, 'B still works')
    b.socket.destroy()

    assert.equal(watch.exitCode, null, 'the service is still running')
    assert.equal(
      events.events.some((e) => e.event === 'error'),
      false,
      JSON.stringify(events.events),
    )
  })
})
