import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { access, chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Duplex } from 'node:stream'
import { after, before, describe, test } from 'node:test'
import { once } from 'node:events'
import { promisify } from 'node:util'
import { RemoteProcesses } from '../../src/remote/index.js'
import { Link, type ResolvedHop } from '../../src/ssh/index.js'
import {
  createNetns,
  hasCode,
  hopOf,
  pidsWhere,
  startEchoServer,
  startSshd,
  type EchoServer,
  type Netns,
  type Sshd,
} from '../support/index.js'

const run = promisify(execFile)

async function echoRoundTrip(stream: Duplex, text: string): Promise<string> {
  stream.write(text)
  let got = ''
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    got += chunk.toString()
    if (got.length >= text.length) break
  }
  stream.destroy()
  return got
}

/** Pids of this process's `ssh` children. */
function sshChildren(): Promise<number[]> {
  return pidsWhere((p) => p.ppid === process.pid && p.argv[0] === 'ssh')
}

function accepted(sshd: Sshd): number {
  return sshd.log().match(/Accepted publickey/g)?.length ?? 0
}

describe('reusing the user’s OpenSSH master (ControlPath)', () => {
  let ns: Netns
  let sshd: Sshd
  let echo: EchoServer
  let dir: string
  let socket: string
  let hop: ResolvedHop
  let masterArgs: string[]

  before(async () => {
    ns = await createNetns()
    ;[sshd, echo, dir] = await Promise.all([
      startSshd({ netns: ns }),
      startEchoServer(ns),
      mkdtemp(join(tmpdir(), 'ippt-master-')),
    ])
    socket = join(dir, 'cm.sock')
    // the only credential is an encrypted key whose passphrase only ssh gets (through SSH_ASKPASS)
    const askpass = join(dir, 'askpass')
    await writeFile(askpass, `#!/bin/sh\necho '${sshd.passphrase}'\n`)
    await chmod(askpass, 0o700)
    masterArgs = [
      '-F',
      '/dev/null',
      '-i',
      sshd.encryptedClientKey,
      '-o',
      `UserKnownHostsFile=${sshd.knownHostsFile}`,
      '-S',
      socket,
      '-p',
      String(sshd.port),
      `root@${sshd.host}`,
    ]
    await run('ssh', ['-M', '-fN', '-o', 'ControlPersist=yes', ...masterArgs], {
      env: { ...process.env, SSH_ASKPASS: askpass, SSH_ASKPASS_REQUIRE: 'force', DISPLAY: ':0' },
    })
    // ipp-tunnel has no usable credential: no agent, and a key file that does not exist
    hop = hopOf(sshd, { identityFiles: [join(dir, 'no-such-key')], controlPath: socket })
  })
  after(async () => {
    await run('ssh', ['-O', 'exit', ...masterArgs]).catch(() => undefined)
    await echo.close()
    await sshd.close()
    await ns.close()
    await rm(dir, { recursive: true, force: true })
  })

  test('auto: forwards go through the live master with no new login; nothing is left on close', async (t) => {
    const before = accepted(sshd)
    assert.equal(before, 1)
    const link = new Link({ hops: [hop] }, { agent: false })
    t.after(() => link.close())
    await link.connect()
    assert.equal(link.transport, 'openssh')
    const streams = await Promise.all([1, 2, 3].map(() => link.forwardOut(echo.host, echo.port)))
    assert.equal(link.stats.channelsOpen, 3)
    const echoed = await Promise.all(streams.map((s, i) => echoRoundTrip(s, `hello ${i}`)))
    assert.deepEqual(echoed, ['hello 0', 'hello 1', 'hello 2'])
    assert.equal(accepted(sshd), before)
    await link.close()
    assert.deepEqual(await sshChildren(), [])
    // the master is the user's: it stays
    await run('ssh', ['-O', 'check', ...masterArgs])
  })

  test('auto: remote commands and remote processes run through the master too, with no new login', async (t) => {
    const logins = accepted(sshd)
    const link = new Link({ hops: [hop] }, { agent: false })
    t.after(() => link.close())
    await link.connect()
    assert.equal(link.transport, 'openssh')
    const command = await link.exec('echo "$((6 * 7))"; echo err >&2; exit 5')
    command.stdin.end()
    let out = ''
    command.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk))
    command.stderr.resume()
    assert.deepEqual(await command.exited, { code: 5, signal: null })
    assert.equal(out, '42\n')
    const procs = new RemoteProcesses(link, { dir: join(dir, 'remote'), python: '/usr/bin/python3' })
    const started = await procs.start({ name: 'via-master', argv: ['sleep', '300'] })
    assert.equal(started.state, 'running')
    assert.equal(await procs.stop('via-master'), 'running')
    assert.equal(accepted(sshd), logins)
    await link.close()
    assert.deepEqual(await sshChildren(), [])
  })

  test('openssh starts a master when none is alive (its prompt answered by SSH_ASKPASS here), and reuses it', async (t) => {
    const started = join(dir, 'started.sock')
    const own = { ...hop, identityFiles: [sshd.encryptedClientKey], controlPath: started }
    const env = {
      ...process.env,
      SSH_ASKPASS: join(dir, 'askpass'),
      SSH_ASKPASS_REQUIRE: 'force',
      DISPLAY: ':0',
    }
    t.after(() => run('ssh', ['-S', started, '-O', 'exit', 'x']).then(undefined, () => undefined))
    const link = new Link({ hops: [own] }, { agent: false, transport: 'openssh', env })
    t.after(() => link.close())
    const logins = accepted(sshd)
    await link.connect()
    assert.equal(link.transport, 'openssh')
    assert.equal(accepted(sshd), logins + 1)
    assert.equal(await echoRoundTrip(await link.forwardOut(echo.host, echo.port), 'started'), 'started')
    await link.close()
    await run('ssh', ['-S', started, '-O', 'check', 'x'])
  })

  test('auto: when the master goes away, the link falls back to its own connection', async (t) => {
    const gone = join(dir, 'gone.sock')
    const args = ['-F', '/dev/null', '-S', gone, 'x']
    const env = {
      ...process.env,
      SSH_ASKPASS: join(dir, 'askpass'),
      SSH_ASKPASS_REQUIRE: 'force',
      DISPLAY: ':0',
    }
    await run(
      'ssh',
      [
        '-M',
        '-fN',
        '-o',
        'ControlPersist=yes',
        ...masterArgs.slice(0, 6),
        '-S',
        gone,
        '-p',
        String(sshd.port),
        `root@${sshd.host}`,
      ],
      { env },
    )
    // this time ipp-tunnel has a key of its own too
    const link = new Link(
      { hops: [hopOf(sshd, { controlPath: gone })] },
      { agent: false, backoff: { initialMs: 10 } },
    )
    t.after(() => link.close())
    await link.connect()
    assert.equal(link.transport, 'openssh')
    await run('ssh', ['-O', 'exit', ...args])
    const reconnected = once(link, 'reconnected')
    assert.equal(await echoRoundTrip(await link.forwardOut(echo.host, echo.port), 'fallback'), 'fallback')
    await reconnected
    assert.equal(link.transport, 'ssh2')
  })

  test('ssh2 transport has no credential here; auto without a master falls back to it and starts none', async (t) => {
    const own = new Link({ hops: [hop] }, { agent: false, transport: 'ssh2' })
    t.after(() => own.close())
    await assert.rejects(own.connect(), hasCode('E_IDENTITY'))

    const nowhere = join(dir, 'no-master.sock')
    const fallback = new Link({ hops: [{ ...hop, controlPath: nowhere }] }, { agent: false })
    t.after(() => fallback.close())
    await assert.rejects(fallback.connect(), hasCode('E_IDENTITY'))
    await assert.rejects(access(nowhere))
  })
})
