import assert from 'node:assert/strict'
import { readFile, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import * as zmq from 'zeromq'

import { KernelClient, openClient } from '../../src/client/index.js'
import { isIppTunnelError } from '../../src/errors/index.js'
import { connect, type ConnectOptions } from '../../src/sockets/index.js'
import { runCli } from '../support/cli.js'
import { createNetns, sshArgsOf, sshOptionsOf, startSshd, type Netns, type Sshd } from '../support/index.js'
import { startKernel, type Kernel } from '../support/kernel.js'
import { FORGE_ON_IOPUB } from '../sockets/forge.js'

describe('a real ipykernel in another network namespace, reached through sshd', () => {
  let ns: Netns
  let sshd: Sshd
  let kernel: Kernel
  let ssh: string
  let options: ConnectOptions

  before(async () => {
    ns = await createNetns()
    sshd = await startSshd({ netns: ns })
    kernel = await startKernel({ netns: ns })
    ssh = `root@${sshd.host}:${sshd.port}`
    options = { ssh, ...sshOptionsOf(sshd), handshakeTimeoutMs: 20_000 }
  })
  after(async () => {
    await kernel.close()
    await sshd.close()
    await ns.close()
  })

  test('sockets per channel: shell/control/stdin Dealers, iopub Subscriber, hb Request', async () => {
    await using conn = await connect(kernel.file, options)
    assert.equal(conn.kind, 'kernel')
    assert.ok(conn.tunnel, 'options.ssh opens a tunnel')
    for (const channel of ['shell', 'control', 'stdin'] as const) {
      assert.ok(conn.socket(channel) instanceof zmq.Dealer, channel)
    }
    assert.ok(conn.socket('iopub') instanceof zmq.Subscriber)
    assert.ok(conn.socket('hb') instanceof zmq.Request)
    assert.ok((await conn.heartbeat()) >= 0)
  })

  test('kernel_info_request and execute_request with output, result and user_expressions', async () => {
    await using client = await KernelClient.open(kernel.file, options)
    const info = await client.kernelInfo()
    assert.equal(info.status, 'ok')
    assert.equal(info.language_info.name, 'python')
    const r = await client.execute(
      'import sys\nprint("out")\nprint("err", file=sys.stderr)\nanswer = 6 * 7\nanswer + 1',
      {
        userExpressions: { answer: 'answer', missing: 'no_such_name' },
      },
    )
    assert.equal(r.status, 'ok')
    assert.equal(r.stdout, 'out\n')
    assert.equal(r.stderr, 'err\n')
    assert.equal(r.result, '43')
    assert.deepEqual(r.expressions.answer, { status: 'ok', text: '42', data: { 'text/plain': '42' } })
    assert.equal(r.expressions.missing?.status, 'error')
  })

  test('a remote exception comes back structured (ename, evalue, traceback)', async () => {
    await using client = await openClient(kernel.file, options)
    assert.ok(client instanceof KernelClient, 'openClient picks the client for the file')
    const r = await client.execute('raise KeyError("nope")')
    assert.equal(r.status, 'error')
    assert.equal(r.error?.ename, 'KeyError')
    assert.equal(r.error.evalue, "'nope'")
    assert.ok(r.error.traceback.some((line) => line.includes('KeyError')))
  })

  test('forged and unsigned iopub messages from the kernel process are dropped and counted', async () => {
    await using client = await KernelClient.open(kernel.file, options)
    const drops = new Promise<void>((resolve) => {
      let n = 0
      client.connection.on('message:dropped', () => ++n === 2 && resolve())
    })
    const r = await client.execute(FORGE_ON_IOPUB)
    await drops
    assert.equal(r.status, 'ok')
    assert.equal(r.stdout, 'real\n', 'only the genuine output is collected')
    const { dropped, droppedByChannel } = client.connection.stats()
    assert.equal(dropped.E_SIGNATURE_MISMATCH, 1)
    assert.equal(dropped.E_SIGNATURE_MISSING, 1)
    assert.equal(droppedByChannel.iopub, 2)
    const again = await client.execute('print("still here")')
    assert.equal(again.stdout, 'still here\n')
  })

  test('Curve keys in the file against this kernel (no Curve in Debian ipykernel 6.17) fail fast with E_CURVE', async () => {
    const { publicKey, secretKey } = zmq.curveKeyPair()
    const info = JSON.parse(await readFile(kernel.file, 'utf8')) as Record<string, unknown>
    const file = join(dirname(kernel.file), 'kernel-curve.json')
    await writeFile(
      file,
      JSON.stringify({ ...info, curve_publickey: publicKey, curve_secretkey: secretKey }),
      {
        mode: 0o600,
      },
    )
    await assert.rejects(connect(file, options), (err: unknown) => {
      assert.ok(isIppTunnelError(err))
      assert.equal(err.code, 'E_CURVE', err.message)
      return true
    })
  })

  test('CLI: ping and px on the kernel, JSON and exit status', async () => {
    const ssh_ = ['--ssh', ssh, ...sshArgsOf(sshd)]
    const ping = await runCli(['ping', kernel.file, ...ssh_, '--json'])
    assert.equal(ping.code, 0, ping.stderr)
    const pong = JSON.parse(ping.stdout) as Record<string, unknown>
    assert.equal(pong.kind, 'kernel')
    assert.equal(pong.language, 'python')
    assert.equal(pong.tunnelled, true)
    assert.equal(typeof pong.roundTripMs, 'number')

    const ok = await runCli(['px', kernel.file, 'x = 5\nprint(x)', '--expr', 'x * 2', ...ssh_, '--json'])
    assert.equal(ok.code, 0, ok.stderr)
    const out = JSON.parse(ok.stdout) as { kind: string; results: Record<string, unknown>[] }
    assert.equal(out.kind, 'kernel')
    assert.equal(out.results.length, 1)
    const [only] = out.results
    assert.ok(only)
    assert.equal(only.status, 'ok')
    assert.equal(only.stdout, '5\n')
    assert.deepEqual(only.expressions, { 'x * 2': '10' })

    const failed = await runCli(['px', kernel.file, '1/0', ...ssh_])
    assert.equal(failed.code, 1, 'remote exception → exit 1')
    assert.match(failed.stdout, /\[kernel\] error: ZeroDivisionError: division by zero/)
  })

  test('CLI px --timeout --abort-on-timeout on a kernel: named as timed out, interrupted, free again', async () => {
    const ssh_ = ['--ssh', ssh, ...sshArgsOf(sshd)]
    const late = await runCli([
      'px',
      kernel.file,
      'import time\ntime.sleep(600)',
      '--timeout',
      '3',
      '--abort-on-timeout',
      ...ssh_,
    ])
    assert.equal(late.code, 124, late.stderr)
    assert.match(late.stdout, /^\[kernel\] timeout: no reply within 3 s; interrupted$/m)
    await using client = await KernelClient.open(kernel.file, options)
    // Without the interrupt the kernel would sleep ten more minutes: this would time out.
    const after = await client.execute('print("free")', { timeoutMs: 60_000 })
    assert.equal(after.stdout, 'free\n')
  })
})
