import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Duplex } from 'node:stream'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import type { IppTunnelError } from '../../src/errors/index.js'
import { Link, type ResolvedHop } from '../../src/ssh/index.js'
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

describe('Link against a real sshd in a network namespace', () => {
  let ns: Netns
  let sshd: Sshd
  let echo: EchoServer
  let dir: string

  before(async () => {
    ns = await createNetns()
    ;[sshd, echo, dir] = await Promise.all([
      startSshd({ netns: ns }),
      startEchoServer(ns),
      mkdtemp(join(tmpdir(), 'ippt-link-')),
    ])
  })
  after(async () => {
    await echo.close()
    await sshd.close()
    await ns.close()
    await rm(dir, { recursive: true, force: true })
  })

  function newLink(
    t: { after(fn: () => Promise<void>): void },
    hop: Partial<ResolvedHop> = {},
    opts = {},
  ): Link {
    const link = new Link({ hops: [hopOf(sshd, hop)] }, { agent: false, ...opts })
    t.after(() => link.close())
    return link
  }

  test('forwards over one connection to a server only the ssh server can reach', async (t) => {
    const direct = connect(echo.port, ns.nsAddr)
    const [err] = (await once(direct, 'error')) as [NodeJS.ErrnoException]
    assert.equal(err.code, 'ECONNREFUSED')

    const link = newLink(t)
    const states: string[] = []
    link.on('state', (s) => states.push(s))
    await link.connect()
    assert.equal(link.state, 'up')
    const [a, b] = await Promise.all([
      link.forwardOut(echo.host, echo.port),
      link.forwardOut(echo.host, echo.port),
    ])
    assert.equal(link.stats.channelsOpen, 2)
    assert.equal(await sshd.sessionCount(), 1)
    assert.equal(await echoRoundTrip(a, 'hello through ssh'), 'hello through ssh')
    assert.equal(await echoRoundTrip(b, 'second channel'), 'second channel')
    await link.close()
    await link.close()
    assert.equal(link.closed, true)
    assert.deepEqual(states, ['connecting', 'up', 'closed'])
    await assert.rejects(link.forwardOut(echo.host, echo.port), hasCode('E_CLOSED'))
  })

  test('an unknown host key is refused with its SHA256 fingerprint and nothing is forwarded', async (t) => {
    const empty = join(dir, 'empty_known_hosts')
    await writeFile(empty, '')
    const link = newLink(t, { knownHostsFiles: [empty] })
    const failed = once(link, 'failed')
    await assert.rejects(link.connect(), hasCode('E_HOSTKEY_UNKNOWN', 'SHA256:'))
    assert.equal(link.state, 'failed')
    const [{ error }] = (await failed) as [{ error: IppTunnelError }]
    assert.equal(error.code, 'E_HOSTKEY_UNKNOWN')
    await assert.rejects(link.forwardOut(echo.host, echo.port), hasCode('E_HOSTKEY_UNKNOWN'))
    assert.equal(await readFile(empty, 'utf8'), '')
  })

  test('a changed host key is refused, also under accept-new', async (t) => {
    const other = join(dir, 'other_host_key')
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other])
    const otherPub = (await readFile(`${other}.pub`, 'utf8')).split(' ').slice(0, 2).join(' ')
    const wrong = join(dir, 'wrong_known_hosts')
    await writeFile(wrong, `[${sshd.host}]:${sshd.port} ${otherPub}\n`)
    const link = newLink(t, { knownHostsFiles: [wrong] }, { hostKeyCheck: 'accept-new' })
    await assert.rejects(link.connect(), hasCode('E_HOSTKEY_MISMATCH', 'SHA256:'))
  })

  test('accept-new records an unknown key, then strict accepts it', async (t) => {
    const fresh = join(dir, 'fresh_known_hosts')
    const link = newLink(t, { knownHostsFiles: [fresh] }, { hostKeyCheck: 'accept-new' })
    await link.connect()
    const recorded = await readFile(fresh, 'utf8')
    assert.ok(recorded.includes(sshd.hostKeyPub.split(' ')[1] ?? '-'), recorded)
    const strict = newLink(t, { knownHostsFiles: [fresh] }, { hostKeyCheck: 'strict' })
    await strict.connect()
    assert.equal(await echoRoundTrip(await strict.forwardOut(echo.host, echo.port), 'ok'), 'ok')
  })

  test('a key the server does not know gives E_AUTH naming user@host:port and the key tried', async (t) => {
    const stranger = join(dir, 'stranger_key')
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', stranger])
    const link = newLink(t, { identityFiles: [stranger] })
    await assert.rejects(link.connect(), hasCode('E_AUTH', `root@${sshd.host}:${sshd.port}`, stranger))
    assert.equal(link.state, 'failed')
  })

  test('no agent and no key file gives E_IDENTITY', async (t) => {
    const link = newLink(t, { identityFiles: [join(dir, 'does-not-exist')] })
    await assert.rejects(link.connect(), hasCode('E_IDENTITY', 'does-not-exist'))
  })

  test('an encrypted key opens with the passphrase provider', async (t) => {
    const asked: string[] = []
    const link = newLink(
      t,
      { identityFiles: [sshd.encryptedClientKey] },
      {
        passphrase: (path: string) => {
          asked.push(path)
          return Promise.resolve(sshd.passphrase)
        },
      },
    )
    await link.connect()
    assert.deepEqual(asked, [sshd.encryptedClientKey])
    assert.equal(await echoRoundTrip(await link.forwardOut(echo.host, echo.port), 'secret'), 'secret')
  })

  test('an encrypted key without a passphrase gives E_PASSPHRASE, not a hang', async (t) => {
    const link = newLink(t, { identityFiles: [sshd.encryptedClientKey] })
    await assert.rejects(
      link.connect(),
      hasCode('E_PASSPHRASE', sshd.encryptedClientKey, '--passphrase-file'),
    )
    const provided = newLink(
      t,
      { identityFiles: [sshd.encryptedClientKey] },
      { passphrase: () => Promise.resolve(undefined) },
    )
    await assert.rejects(provided.connect(), hasCode('E_PASSPHRASE', sshd.encryptedClientKey))
    const wrong = newLink(
      t,
      { identityFiles: [sshd.encryptedClientKey] },
      { passphrase: () => Promise.resolve('not it') },
    )
    await assert.rejects(wrong.connect(), hasCode('E_PASSPHRASE', 'Wrong passphrase'))
  })

  test('a port nothing listens on gives E_FORWARD and the link stays up', async (t) => {
    const gone = await startEchoServer(ns)
    await gone.close()
    const link = newLink(t)
    await link.connect()
    await assert.rejects(
      link.forwardOut(gone.host, gone.port),
      hasCode('E_FORWARD', `${gone.host}:${gone.port}`),
    )
    assert.equal(link.state, 'up')
    assert.equal(await echoRoundTrip(await link.forwardOut(echo.host, echo.port), 'still'), 'still')
  })

  test('an unreachable ssh server gives E_CONNECT naming host:port', async (t) => {
    const gone = await startEchoServer(ns)
    await gone.close()
    const link = new Link(
      { hops: [hopOf(sshd, { host: ns.nsAddr, alias: ns.nsAddr, port: gone.port })] },
      { agent: false },
    )
    t.after(() => link.close())
    await assert.rejects(link.connect(), hasCode('E_CONNECT', `${ns.nsAddr}:${gone.port}`))
  })

  test('AllowTcpForwarding no gives E_FORWARD_DENIED', async (t) => {
    const denying = await startSshd({ allowTcpForwarding: false })
    t.after(() => denying.close())
    const link = new Link({ hops: [hopOf(denying)] }, { agent: false })
    t.after(() => link.close())
    await link.connect()
    await assert.rejects(
      link.forwardOut('127.0.0.1', denying.port),
      hasCode('E_FORWARD_DENIED', `127.0.0.1:${denying.port}`, 'AllowTcpForwarding'),
    )
  })
})
