import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Duplex } from 'node:stream'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { Link, type LinkEvents } from '../../src/ssh/index.js'
import {
  createNetns,
  hasCode,
  hopOf,
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

describe('Link reconnects, jumps and uses the agent', () => {
  let ns: Netns
  let target: Sshd
  let echo: EchoServer

  before(async () => {
    ns = await createNetns()
    ;[target, echo] = await Promise.all([startSshd({ netns: ns }), startEchoServer(ns)])
  })
  after(async () => {
    await echo.close()
    await target.close()
    await ns.close()
  })

  test('a dropped connection is noticed, reconnected, and forwards work again', async (t) => {
    const link = new Link({ hops: [hopOf(target)] }, { agent: false, backoff: { initialMs: 50 } })
    t.after(() => link.close())
    await link.connect()
    const before = await link.forwardOut(echo.host, echo.port)
    const beforeClosed = once(before, 'close')
    const reconnecting = once(link, 'reconnecting') as Promise<LinkEvents['reconnecting']>
    const reconnected = once(link, 'reconnected') as Promise<LinkEvents['reconnected']>

    await target.killConnections()

    const [down] = await reconnecting
    assert.equal(down.attempt, 1)
    assert.equal(down.error.code, 'E_LINK_DOWN')
    await beforeClosed
    // a forward asked for while the link is down waits for it
    const during = link.forwardOut(echo.host, echo.port)
    const [up] = await reconnected
    assert.equal(up.attempt, 1)
    assert.equal(link.state, 'up')
    assert.equal(link.stats.reconnects, 1)
    assert.equal(await echoRoundTrip(await during, 'waited'), 'waited')
    assert.equal(await echoRoundTrip(await link.forwardOut(echo.host, echo.port), 'after'), 'after')
    assert.equal(await target.sessionCount(), 1)
  })

  test('while the server stays away, forwardOut gives up with E_LINK_DOWN and retries go on', async (t) => {
    const flaky = await startSshd()
    t.after(() => flaky.close())
    const link = new Link(
      { hops: [hopOf(flaky)] },
      { agent: false, backoff: { initialMs: 20, maxMs: 40 }, waitForLinkMs: 200 },
    )
    t.after(() => link.close())
    await link.connect()
    const attempts: number[] = []
    const retried = new Promise<void>((resolve) => {
      link.on('reconnecting', ({ attempt, error }) => {
        attempts.push(attempt)
        if (attempt === 3) {
          assert.equal(error.code, 'E_CONNECT')
          resolve()
        }
      })
    })
    await flaky.close()
    await assert.rejects(link.forwardOut('127.0.0.1', 9), hasCode('E_LINK_DOWN', flaky.host))
    await retried
    assert.equal(link.state, 'reconnecting')
    await link.close()
    assert.equal(link.state, 'closed')
  })

  test('ProxyJump: a jump sshd on the host reaches the target sshd in the namespace', async (t) => {
    const jump = await startSshd()
    t.after(() => jump.close())
    const link = new Link({ hops: [hopOf(jump), hopOf(target)] }, { agent: false })
    t.after(() => link.close())
    await link.connect()
    assert.equal(await echoRoundTrip(await link.forwardOut(echo.host, echo.port), 'via jump'), 'via jump')
    assert.equal(await jump.sessionCount(), 1)
    assert.equal(await target.sessionCount(), 1)
    await link.close()
    assert.equal(link.closed, true)
  })

  test('ProxyJump checks the host key of the jump host too', async (t) => {
    const jump = await startSshd()
    t.after(() => jump.close())
    const link = new Link(
      { hops: [hopOf(jump, { knownHostsFiles: [target.knownHostsFile] }), hopOf(target)] },
      { agent: false },
    )
    t.after(() => link.close())
    await assert.rejects(link.connect(), hasCode('E_HOSTKEY_UNKNOWN', 'SHA256:', `${jump.port}`))
  })

  test('ssh-agent authenticates with no key files', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'ippt-agent-'))
    const socket = join(dir, 'agent.sock')
    const agent = spawn('ssh-agent', ['-D', '-a', socket], { stdio: 'ignore' })
    t.after(async () => {
      agent.kill()
      if (agent.exitCode === null) await once(agent, 'exit')
      await rm(dir, { recursive: true, force: true })
    })
    for (;;) {
      const ready = await stat(socket).then(
        (s) => s.isSocket(),
        () => false,
      )
      if (ready) break
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
    await run('ssh-add', [target.clientKey], { env: { ...process.env, SSH_AUTH_SOCK: socket } })
    const link = new Link(
      { hops: [hopOf(target, { identityFiles: [] })] },
      { env: { SSH_AUTH_SOCK: socket } },
    )
    t.after(() => link.close())
    await link.connect()
    assert.equal(await echoRoundTrip(await link.forwardOut(echo.host, echo.port), 'agent'), 'agent')
  })
})
