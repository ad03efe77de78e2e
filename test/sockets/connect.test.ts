import assert from 'node:assert/strict'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'

import * as zmq from 'zeromq'

import { IppClient } from '../../src/client/index.js'
import { connect, type ConnectOptions, type Connection } from '../../src/sockets/index.js'
import { isStream, type Message } from '../../src/wire/index.js'
import type { Controller } from '../support/ipp.js'
import { hasCode, sshOptionsOf, startCluster, type Cluster, type Sshd } from '../support/index.js'
import { FORGE_ON_IOPUB } from './forge.js'

function sshOptions(sshd: Sshd): ConnectOptions {
  return { ...sshOptionsOf(sshd), handshakeTimeoutMs: 20_000 }
}

async function waitForEngines(conn: Connection<'ipp-client'>, n: number): Promise<Record<string, string>> {
  const deadline = Date.now() + 30_000
  for (;;) {
    const reply = await conn.request('query', 'connection_request', {})
    const engines = (reply.content as { engines: Record<string, string> }).engines
    if (Object.keys(engines).length >= n) return engines
    if (Date.now() > deadline) throw new Error(`only ${Object.keys(engines).length} engines registered`)
    await sleep(200)
  }
}

async function ippConnection(file: string, options: ConnectOptions): Promise<Connection<'ipp-client'>> {
  const conn = await connect(file, options)
  assert.ok(conn.kind === 'ipp-client')
  return conn
}

describe('connect() to a real ipcontroller through sshd, HMAC signing', () => {
  let cluster: Cluster
  let sshd: Sshd
  let ctl: Controller

  before(async () => {
    cluster = await startCluster({ engines: 2 })
    ;({ sshd, controller: ctl } = cluster)
  })
  after(() => cluster.close())

  test('tunnels, makes one socket of the right type per channel, and releases everything on close', async () => {
    const conn = await ippConnection(ctl.clientFile, sshOptions(sshd))
    const tunnel = conn.tunnel
    assert.ok(tunnel, 'the file names an ssh server, so connect() opens a tunnel')
    assert.equal(conn.curve, false)
    const id = conn.session.session
    for (const channel of ['query', 'mux', 'task', 'control', 'broadcast'] as const) {
      const socket = conn.socket(channel)
      assert.ok(socket instanceof zmq.Dealer, `${channel} is a Dealer`)
      assert.equal(socket.routingId, id, `${channel} shares the session's routing id`)
      assert.equal(socket.linger, 0)
    }
    for (const channel of ['iopub', 'notification'] as const) {
      const socket = conn.socket(channel)
      assert.ok(socket instanceof zmq.Subscriber, `${channel} is a Subscriber`)
      assert.equal(socket.linger, 0)
    }
    const engineIds = await waitForEngines(conn, 2)
    assert.deepEqual(Object.keys(engineIds).sort(), ['0', '1'])
    const sockets = conn.channels.map((c) => conn.socket(c))
    await conn[Symbol.asyncDispose]()
    assert.ok(conn.closed)
    assert.ok(tunnel.closed, 'the tunnel connect() opened is closed with it')
    assert.ok(sockets.every((s) => s.closed))
    await conn.close() // twice is fine
    await assert.rejects(conn.request('query', 'connection_request', {}), hasCode('E_CLOSED'))
  })

  test('many concurrent requests on one Dealer are queued, each answered by its own reply', async () => {
    await using conn = await ippConnection(ctl.clientFile, sshOptions(sshd))
    const replies = await Promise.all(
      Array.from({ length: 50 }, () =>
        conn.request('query', 'queue_request', { targets: null, verbose: false }),
      ),
    )
    for (const reply of replies) {
      assert.equal(reply.header.msg_type, 'queue_reply')
      assert.equal((reply.content as { status: string }).status, 'ok')
    }
    assert.equal(new Set(replies.map((r) => r.parent_header.msg_id)).size, 50)
    assert.equal(conn.stats().sent.query, 50)
  })

  test('a message with a bad signature on iopub is dropped and counted; the client keeps working', async () => {
    await using conn = await ippConnection(ctl.clientFile, sshOptions(sshd))
    const engineIds = await waitForEngines(conn, 2)
    const delivered: Message[] = []
    const stop = new AbortController()
    const reading = (async () => {
      for await (const m of conn.messages('iopub', { signal: stop.signal })) delivered.push(m)
    })()
    const dropped: string[] = []
    conn.on('message:dropped', (e) => dropped.push(`${e.channel}:${e.code}`))
    const twoDropped = new Promise<void>((resolve) => {
      conn.on('message:dropped', () => dropped.length >= 2 && resolve())
    })
    const request = conn.session.msg('execute_request', {
      code: FORGE_ON_IOPUB,
      silent: false,
      store_history: false,
      user_expressions: {},
      allow_stdin: false,
      stop_on_error: true,
    })
    const reply = await conn.requestMessage('mux', request, { ident: engineIds['0'] ?? '' })
    assert.equal((reply.content as { status: string }).status, 'ok', JSON.stringify(reply.content))
    await twoDropped
    assert.deepEqual(dropped.sort(), ['iopub:E_SIGNATURE_MISMATCH', 'iopub:E_SIGNATURE_MISSING'])
    const stats = conn.stats()
    assert.equal(stats.dropped.E_SIGNATURE_MISMATCH, 1)
    assert.equal(stats.dropped.E_SIGNATURE_MISSING, 1)
    assert.equal(stats.droppedByChannel.iopub, 2)
    // still working: the hub answers, and the real output of the request arrived
    const again = await conn.request('query', 'connection_request', {})
    assert.equal((again.content as { status: string }).status, 'ok')
    stop.abort()
    await reading
    const texts = delivered.filter(isStream).map((m) => m.content.text)
    assert.ok(texts.includes('real\n'), `real output delivered: ${JSON.stringify(texts)}`)
    assert.ok(!texts.some((t) => t.includes('forged') || t.includes('unsigned')), 'forgeries never delivered')
  })

  test('a remote exception comes back as a structured reply, not a throw', async () => {
    await using client = await IppClient.open(ctl.clientFile, sshOptions(sshd))
    const [result] = await client.execute('1/0', { targets: [1] })
    assert.equal(result?.engineId, 1)
    assert.equal(result.status, 'error')
    assert.equal(result.error?.ename, 'ZeroDivisionError')
    assert.equal(result.error.evalue, 'division by zero')
    assert.ok(result.error.traceback.length > 0)
  })

  test('an engine file is refused: clients connect with the client file', async () => {
    await assert.rejects(connect(ctl.engineFile, sshOptions(sshd)), hasCode('E_CONNFILE_KIND', 'engine'))
  })

  test('a request nobody answers times out with E_TIMEOUT instead of hanging', async () => {
    await using conn = await ippConnection(ctl.clientFile, sshOptions(sshd))
    // the task scheduler drops a message addressed to no engine with no reply
    await assert.rejects(
      conn.request('control', 'no_such_request', {}, { timeoutMs: 500, ident: 'nobody' }),
      hasCode('E_TIMEOUT', 'no_such_request'),
    )
  })
})

describe('connect() with CurveZMQ (IPP_ENABLE_CURVE=1) through sshd', () => {
  let cluster: Cluster
  let sshd: Sshd
  let ctl: Controller

  before(async () => {
    cluster = await startCluster({ engines: 1, curve: true })
    ;({ sshd, controller: ctl } = cluster)
  })
  after(() => cluster.close())

  test('every socket, not only the query socket, speaks Curve; engines run code', async () => {
    await using client = await IppClient.open(ctl.clientFile, sshOptions(sshd))
    const conn = client.connection
    assert.equal(conn.curve, true)
    // zeromq.js cannot read Curve keys back (getsockopt EINVAL); the mechanism shows they were set
    for (const channel of conn.channels) {
      assert.equal(conn.socket(channel).securityMechanism, 'curve', `${channel} uses Curve`)
    }
    const deadline = Date.now() + 30_000
    while ((await client.engines()).ids.length < 1) {
      assert.ok(Date.now() < deadline, 'engine registers with Curve on')
      await sleep(200)
    }
    const [result] = await client.execute('print(6 * 7)', { targets: [0] })
    assert.equal(result?.status, 'ok')
    assert.equal(result.stdout, '42\n')
  })

  test('a wrong server key is an E_CURVE authentication error, not a hang', async () => {
    const wrong = join(ctl.securityDir, 'wrong-key-client.json')
    const file = JSON.parse(await readFile(ctl.clientFile, 'utf8')) as Record<string, unknown>
    await writeFile(wrong, JSON.stringify({ ...file, curve_serverkey: zmq.curveKeyPair().publicKey }), {
      mode: 0o600,
    })
    await assert.rejects(connect(wrong, sshOptions(sshd)), hasCode('E_CURVE', 'curve'))
  })

  test('a file without the key against a Curve controller is an E_CURVE error, not a hang', async () => {
    const plain = join(ctl.securityDir, 'no-key-client.json')
    const file = JSON.parse(await readFile(ctl.clientFile, 'utf8')) as Record<string, unknown>
    delete file.curve_serverkey
    await writeFile(plain, JSON.stringify(file), { mode: 0o600 })
    await assert.rejects(connect(plain, sshOptions(sshd)), hasCode('E_CURVE', 'Curve'))
  })
})
