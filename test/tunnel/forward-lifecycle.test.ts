import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { connect, createServer, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { parseConnectionFile, type Endpoint } from '../../src/connection-file/index.js'
import { Link } from '../../src/ssh/index.js'
import { Forward, Tunnel } from '../../src/tunnel/index.js'
import { hopOf, startEchoServer, startSshd, type EchoServer, type Sshd } from '../support/index.js'

/** Yields to I/O until `done()` holds, at most `rounds` times; returns whether it held. */
async function until(done: () => boolean, rounds = 5_000_000): Promise<boolean> {
  for (let i = 0; i < rounds && !done(); i++) await new Promise((resolve) => setImmediate(resolve))
  return done()
}

async function listening(server: Server): Promise<number> {
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return address.port
}

/** Everything a client reads until the other side's EOF, and how the connection ended. */
function readToEnd(socket: Socket): Promise<{ data: string; error: NodeJS.ErrnoException | undefined }> {
  return new Promise((resolve) => {
    let data = ''
    let error: NodeJS.ErrnoException | undefined
    socket.on('data', (chunk: Buffer) => (data += chunk.toString()))
    socket.on('error', (err) => (error = err))
    socket.once('close', () => resolve({ data, error }))
  })
}

/**
 * Servers that make half-close visible. `eof-reply` answers only after the client's EOF (`got:<all it sent>`), as
 * a request/EOF/response protocol does; `eof-first` greets and shuts its write side at once, then records what the
 * client still sends.
 */
async function startHalfCloseServers(): Promise<{
  eofReply: number
  eofFirst: number
  received: string[]
  close: () => Promise<void>
}> {
  const sockets = new Set<Socket>()
  const received: string[] = []
  const track = (s: Socket): void => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
    s.on('error', () => undefined)
  }
  const eofReply = createServer({ allowHalfOpen: true }, (s) => {
    track(s)
    let got = ''
    s.on('data', (chunk: Buffer) => (got += chunk.toString()))
    s.on('end', () => s.end(`got:${got}`))
  })
  const eofFirst = createServer({ allowHalfOpen: true }, (s) => {
    track(s)
    let got = ''
    s.end('hello')
    s.on('data', (chunk: Buffer) => (got += chunk.toString()))
    s.on('end', () => received.push(got))
  })
  const ports = await Promise.all([listening(eofReply), listening(eofFirst)])
  return {
    eofReply: ports[0],
    eofFirst: ports[1],
    received,
    close: async () => {
      for (const s of sockets) s.destroy()
      await Promise.all([eofReply, eofFirst].map((srv) => new Promise((resolve) => srv.close(resolve))))
    },
  }
}

describe('forwards over a real sshd: channel lifecycle, half-close, refusals, many files on one link', () => {
  let sshd: Sshd
  let echo: EchoServer
  let servers: Awaited<ReturnType<typeof startHalfCloseServers>>
  let link: Link
  let dir: string

  before(async () => {
    ;[sshd, echo, servers, dir] = await Promise.all([
      startSshd(),
      startEchoServer(),
      startHalfCloseServers(),
      mkdtemp(join(tmpdir(), 'ippt-lifecycle-')),
    ])
    link = new Link({ hops: [hopOf(sshd)] }, { agent: false })
    await link.connect()
  })
  after(async () => {
    await link.close()
    await Promise.all([echo.close(), servers.close(), sshd.close()])
    await rm(dir, { recursive: true, force: true })
  })

  async function forwardTo(
    remote: Endpoint,
    t: { after(fn: () => Promise<void>): void },
    via: Link = link,
  ): Promise<{ forward: Forward; errors: Error[] }> {
    const errors: Error[] = []
    const forward = await Forward.listen(
      remote,
      (r) => (r.kind === 'unix' ? via.forwardOutUnix(r.path) : via.forwardOut(r.host, r.port)),
      (_channel, err) => errors.push(err as Error),
    )
    t.after(() => forward.close())
    return { forward, errors }
  }

  test('10 000 connections that the local client closes first leave no channel and no socket behind', async (t) => {
    const { forward } = await forwardTo({ channel: 'echo', host: echo.host, port: echo.port }, t)
    const total = 10_000
    const concurrency = 50
    let next = 0
    const one = async (i: number): Promise<void> => {
      const socket = connect(forward.localPort, '127.0.0.1')
      socket.on('error', () => undefined)
      await once(socket, 'connect')
      socket.write('x')
      await once(socket, 'data')
      const closed = once(socket, 'close')
      // the client leaves first: half of them with a FIN, half with a RST
      if (i % 2 === 0) socket.end()
      else socket.resetAndDestroy()
      await closed
    }
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < total) await one(next++)
      }),
    )
    // channels whose client left before they were ever read (the probe does this) go too
    await Promise.all(
      Array.from({ length: 100 }, async () => (await link.forwardOut(echo.host, echo.port)).destroy()),
    )
    const drained = await until(() => link.stats.channelsOpen === 0 && forward.stats().open === 0)
    assert.equal(link.stats.channelsOpen, 0, 'the link holds no channels')
    assert.equal(forward.stats().open, 0, 'the forward holds no connections')
    assert.ok(drained)
    assert.equal(forward.stats().accepted, total)
    assert.equal(forward.stats().failed, 0)
  })

  test('half-close is carried each way, as ssh -L carries it', async (t) => {
    const { forward: replyFwd } = await forwardTo(
      { channel: 'reply', host: '127.0.0.1', port: servers.eofReply },
      t,
    )
    const { forward: firstFwd } = await forwardTo(
      { channel: 'first', host: '127.0.0.1', port: servers.eofFirst },
      t,
    )

    // ssh -L on a unix socket (no port to pick) to the same servers, through the same sshd
    const ours = { reply: replyFwd.localPort, first: firstFwd.localPort }
    const theirs = { reply: join(dir, 'reply.sock'), first: join(dir, 'first.sock') }
    const ssh = spawn(
      'ssh',
      [
        '-v',
        '-N',
        '-F',
        '/dev/null',
        '-i',
        sshd.clientKey,
        '-o',
        `UserKnownHostsFile=${sshd.knownHostsFile}`,
        '-o',
        'BatchMode=yes',
        '-o',
        'ExitOnForwardFailure=yes',
        '-p',
        String(sshd.port),
        '-L',
        `${theirs.reply}:127.0.0.1:${servers.eofReply}`,
        '-L',
        `${theirs.first}:127.0.0.1:${servers.eofFirst}`,
        `${sshd.user}@${sshd.host}`,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    )
    t.after(() => {
      ssh.kill('SIGKILL')
    })
    await new Promise<void>((resolve, reject) => {
      let stderr = ''
      let listening = 0
      ssh.stderr.setEncoding('utf8')
      ssh.stderr.on('data', (chunk: string) => {
        stderr += chunk
        listening = stderr.split('Local forwarding listening on path').length - 1
        if (listening === 2) resolve()
      })
      ssh.once('exit', () => reject(new Error(`ssh -L exited: ${stderr}`)))
    })

    const request = async (socket: Socket): Promise<{ data: string; error: unknown }> => {
      socket.on('error', () => undefined)
      await once(socket, 'connect')
      const result = readToEnd(socket)
      socket.end('ping') // send, shut down the write side, then read
      return result
    }
    const greeted = async (socket: Socket, message: string): Promise<string> => {
      const s = new Promise<string>((resolve) => {
        let data = ''
        socket.on('data', (chunk: Buffer) => (data += chunk.toString()))
        socket.once('end', () => {
          // the server's EOF arrived; our write side stays open: answer, then close
          socket.end(message)
          resolve(data)
        })
      })
      socket.on('error', () => undefined)
      return s
    }

    const viaSsh = await request(connect(theirs.reply))
    const viaUs = await request(connect(ours.reply, '127.0.0.1'))
    assert.deepEqual(viaSsh, { data: 'got:ping', error: undefined }, 'ssh -L delivers the reply')
    assert.deepEqual(viaUs, viaSsh, 'so does the forward')

    const before = servers.received.length
    assert.equal(await greeted(connect(theirs.first), 'after-eof-ssh'), 'hello')
    assert.equal(await greeted(connect(ours.first, '127.0.0.1'), 'after-eof-us'), 'hello')
    assert.ok(await until(() => servers.received.length === before + 2))
    assert.deepEqual(servers.received.slice(before).sort(), ['after-eof-ssh', 'after-eof-us'])
  })

  test('a connection that cannot be carried is closed cleanly (FIN), even with data unread', async (t) => {
    const gone = createServer()
    const gonePort = await listening(gone)
    await new Promise((resolve) => gone.close(resolve))
    // refused by the ssh server (nothing listens there), and a link that is down (never connected)
    const down = new Link({ hops: [hopOf(sshd)] }, { agent: false })
    t.after(() => down.close())
    const cases = [
      await forwardTo({ channel: 'gone', host: '127.0.0.1', port: gonePort }, t),
      await forwardTo({ channel: 'down', host: echo.host, port: echo.port }, t, down),
    ]
    for (const { forward, errors } of cases) {
      const socket = connect(forward.localPort, '127.0.0.1')
      await once(socket, 'connect')
      socket.write('greeting the server will never read')
      const ended = once(socket, 'end')
      const result = readToEnd(socket)
      await ended
      socket.end()
      const { data, error } = await result
      assert.equal(error, undefined, `${forward.channel}: no ${error?.code ?? ''}`)
      assert.equal(data, '')
      assert.equal(errors.length, 1, `${forward.channel}: reported`)
      assert.ok(await until(() => forward.stats().open === 0))
    }
  })

  test('twelve files on one link: one listener per link event, and every file hears the link', async (t) => {
    const warnings: Error[] = []
    const onWarning = (w: Error): void => {
      if (w.name === 'MaxListenersExceededWarning') warnings.push(w)
    }
    process.on('warning', onWarning)
    t.after(() => process.off('warning', onWarning))

    const own = new Link({ hops: [hopOf(sshd)] }, { agent: false, backoff: { initialMs: 50, maxMs: 200 } })
    t.after(() => own.close())
    await own.connect()
    const ports = ['shell', 'iopub', 'stdin', 'control', 'hb'].map((k) => `"${k}_port": ${echo.port}`)
    const info = parseConnectionFile(
      `{${ports.join(', ')}, "ip": "127.0.0.1", "key": "", "transport": "tcp", "signature_scheme": "hmac-sha256"}`,
      'kernel-many.json',
    )
    // one signal for all of them, as the service passes: it must not collect a listener per file either
    const shared = new AbortController()
    const tunnels = await Promise.all(
      Array.from({ length: 12 }, () => Tunnel.over(info, own, { signal: shared.signal })),
    )
    t.after(() => Promise.all(tunnels.map((tn) => tn.close())))
    assert.equal(own.listenerCount('reconnecting'), 1)
    assert.equal(own.listenerCount('reconnected'), 1)
    assert.equal(own.listenerCount('failed'), 1)

    const heard = tunnels.map((tn) => once(tn, 'link:reconnected'))
    await sshd.killConnections()
    await Promise.all(heard)
    await new Promise((resolve) => setImmediate(resolve)) // warnings are emitted on the next tick
    assert.deepEqual(warnings, [])

    await Promise.all(tunnels.map((tn) => tn.close()))
    assert.equal(own.listenerCount('reconnecting'), 0)
    assert.equal(own.listenerCount('failed'), 0)
  })
})
