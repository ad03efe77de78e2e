import assert from 'node:assert/strict'
import { execFile, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'

import { exited, JsonLines, spawnCli, withHostsFile } from '../support/cli.js'
import { alive, createNetns, startSshd, type Netns, type Sshd } from '../support/index.js'
import { execute, remoteKernelArgs, writeKernelFile } from './helpers.js'

const run = promisify(execFile)

/** The login alias: a name /etc/hosts (the launcher's own, bind-mounted) resolves to one login node or the other. */
const LOGIN = 'login.ippt-pin.test'

describe('ipp-tunnel kernel: a reconnect goes to the node the kernel runs on (round-robin login alias)', () => {
  let nsA: Netns
  let nsB: Netns
  let sshdA: Sshd
  let sshdB: Sshd
  let root: string
  let hosts: string
  let knownHosts: string

  before(async () => {
    nsA = await createNetns()
    nsB = await createNetns()
    sshdA = await startSshd({ netns: nsA })
    // another login node behind the same name: the same port, host key and accepted keys, another host name
    sshdB = await startSshd({ netns: nsB, port: sshdA.port, keysOf: sshdA, hostname: 'ippt-login-b' })
    root = await mkdtemp(join(tmpdir(), 'ippt-kernel-pin-'))
    hosts = join(root, 'hosts')
    knownHosts = join(root, 'known_hosts')
    await writeFile(knownHosts, `[${LOGIN}]:${sshdA.port} ${sshdA.hostKeyPub}\n`, { mode: 0o600 })
  })
  after(async () => {
    await sshdA.close()
    await sshdB.close()
    await nsA.close()
    await nsB.close()
    await rm(root, { recursive: true, force: true })
  })

  /** Points LOGIN at `address` for the launcher: rewritten in place, so its bind mount of the file sees it. */
  async function resolveTo(address: string): Promise<void> {
    await writeFile(hosts, `127.0.0.1 localhost\n${address} ${LOGIN}\n`)
  }

  function launch(file: string, extra: readonly string[] = []) {
    const child = spawnCli(
      [
        'kernel',
        ...remoteKernelArgs(sshdA, root, { host: LOGIN, knownHosts }),
        '--connection-file',
        file,
        '--json',
        ...extra,
      ],
      {},
      { wrap: withHostsFile(hosts) },
    )
    return { child, events: new JsonLines(child, { from: 'stderr' }) }
  }

  /**
   * Points LOGIN at node B, checks that a fresh lookup in the launcher's world now gives B, and cuts the link;
   * returns what each sshd logs from then on.
   */
  async function moveNameAndCut(launcher: ChildProcess): Promise<{ logA(): string; logB(): string }> {
    const marks = [sshdA.log().length, sshdB.log().length] as const
    await resolveTo(nsB.nsAddr)
    const { stdout } = await run('nsenter', [
      `--target=${String(launcher.pid)}`,
      '--mount',
      'getent',
      'hosts',
      LOGIN,
    ])
    assert.equal(stdout.split(/\s+/u)[0], nsB.nsAddr)
    await sshdA.killConnections()
    return { logA: () => sshdA.log().slice(marks[0]), logB: () => sshdB.log().slice(marks[1]) }
  }

  test('the name now resolves to another node: the launcher reconnects to the first one, the kernel keeps its state', async (t) => {
    await resolveTo(nsA.nsAddr)
    const file = await writeKernelFile(root, 'pin')
    const { child, events } = launch(file)
    t.after(() => child.kill('SIGKILL'))
    const started = await events.next('started')
    const before = await execute(file, 'import os; x = 41; print(os.getpid())')
    assert.equal(before.stdout, `ok ${String(started.pid)}\n`, before.stderr)
    const since = await moveNameAndCut(child)
    await events.next('reattached', 60_000)

    const after = await execute(file, 'print(x + 1, os.getpid())')
    assert.equal(after.stdout, `ok 42 ${String(started.pid)}\n`, after.stderr)
    assert.doesNotMatch(since.logB(), /Accepted publickey/u, 'a reconnect reached the other login node')
    assert.match(since.logA(), /Accepted publickey/u)
    assert.ok(await alive(Number(started.pid)))
    child.kill('SIGTERM')
    assert.deepEqual(await exited(child), { code: 0, signal: null })
  })

  test('through a ProxyCommand there is no address to pin: the reconnect lands on node B, which refuses (E_REMOTE_NODE)', async (t) => {
    await resolveTo(nsA.nsAddr)
    const file = await writeKernelFile(root, 'proxy')
    // a ProxyCommand that resolves %h itself, as ssh -W on a jump host would
    const proxy = `${process.execPath} -e "const s = require('node:net').connect(Number(process.argv[2]), process.argv[1]); process.stdin.pipe(s).pipe(process.stdout)" %h %p`
    const { child, events } = launch(file, ['--proxy-command', proxy, '--persist', '5'])
    t.after(() => child.kill('SIGKILL'))
    const started = await events.next('started')
    const since = await moveNameAndCut(child)
    const refused = await events.next('error', 60_000)
    assert.equal(refused.code, 'E_REMOTE_NODE')
    assert.match(
      String(refused.message),
      new RegExp(`runs on ${String(started.host)}, and this is ippt-login-b`, 'u'),
    )
    assert.match(since.logB(), /Accepted publickey/u)
    assert.deepEqual(await exited(child), { code: 1, signal: null })
  })
})
