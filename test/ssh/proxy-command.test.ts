import assert from 'node:assert/strict'
import { once } from 'node:events'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Duplex } from 'node:stream'
import { after, before, describe, test } from 'node:test'
import { Link, resolveTarget } from '../../src/ssh/index.js'
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

/** Pids of this process's children running `ssh -W`. */
function proxyPids(): Promise<number[]> {
  return pidsWhere((p) => p.ppid === process.pid && p.argv[0] === 'ssh' && p.argv[1] === '-W')
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe('ProxyCommand: ssh -W through a second sshd', () => {
  let ns: Netns
  let sshd: Sshd
  let jump: Sshd
  let echo: EchoServer
  let dir: string
  let config: string

  before(async () => {
    ns = await createNetns()
    ;[sshd, jump, echo, dir] = await Promise.all([
      startSshd({ netns: ns }),
      startSshd(),
      startEchoServer(ns),
      mkdtemp(join(tmpdir(), 'ippt-proxycmd-')),
    ])
    config = join(dir, 'ssh_config')
    await writeFile(
      config,
      [
        'Host cluster',
        `  HostName ${sshd.host}`,
        `  Port ${sshd.port}`,
        '  User root',
        `  IdentityFile ${sshd.clientKey}`,
        `  UserKnownHostsFile ${sshd.knownHostsFile}`,
        `  ProxyCommand ssh -W %h:%p -F /dev/null -i ${jump.clientKey} -o UserKnownHostsFile=${jump.knownHostsFile} -o BatchMode=yes -p ${jump.port} root@${jump.host}`,
        '',
      ].join('\n'),
    )
  })
  after(async () => {
    await echo.close()
    await Promise.all([sshd.close(), jump.close()])
    await ns.close()
    await rm(dir, { recursive: true, force: true })
  })

  test('the link runs over the command, restarts it on reconnect and reaps it on close', async () => {
    const target = await resolveTarget('cluster', { configFile: config, agent: false })
    const link = new Link(target, { agent: false, backoff: { initialMs: 10, jitter: 0 } })
    try {
      await link.connect()
      assert.equal(await echoRoundTrip(await link.forwardOut(echo.host, echo.port), 'via proxy'), 'via proxy')
      assert.equal(await jump.sessionCount(), 1)
      const [first, ...more] = await proxyPids()
      assert.ok(first !== undefined && more.length === 0)

      // the command dies: the link goes down and comes back over a new one
      const reconnected = once(link, 'reconnected')
      process.kill(first, 'SIGKILL')
      await reconnected
      assert.equal(await echoRoundTrip(await link.forwardOut(echo.host, echo.port), 'again'), 'again')
      const [second] = await proxyPids()
      assert.ok(second !== undefined && second !== first)

      await link.close()
      assert.equal(alive(second), false)
      assert.deepEqual(await proxyPids(), [])
    } finally {
      await link.close()
    }
  })

  test('a failing command: E_CONNECT with its status and stderr, which also comes as an event', async () => {
    const hop = hopOf(sshd, { proxyCommand: "sh -c 'echo no route to the cluster >&2; exit 3'" })
    const said: string[] = []
    const link = new Link({ hops: [hop] }, { agent: false, onProxyStderr: (text) => said.push(text) })
    const events: string[] = []
    link.on('proxy-stderr', ({ text }) => events.push(text))
    try {
      await assert.rejects(
        link.connect(),
        hasCode('E_CONNECT', 'exited with status 3: no route to the cluster'),
      )
      assert.equal(said.join(''), 'no route to the cluster\n')
      assert.deepEqual(events, said)
    } finally {
      await link.close()
    }
  })
})
