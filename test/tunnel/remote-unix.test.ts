import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { connect, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'

import { IppClient, KernelClient } from '../../src/client/index.js'
import { endpoints, parseConnectionFile } from '../../src/connection-file/index.js'
import { Link } from '../../src/ssh/index.js'
import { openTunnel, Tunnel } from '../../src/tunnel/index.js'
import { exited, JsonLines, runCli, spawnCli } from '../support/cli.js'
import {
  createNetns,
  hasCode,
  hopOf,
  sshArgsOf,
  sshOptionsOf,
  startSshd,
  type Netns,
  type Sshd,
} from '../support/index.js'
import { clientApplyScript, runPython, startController } from '../support/ipp.js'
import { startKernel, type Kernel } from '../support/kernel.js'

const JUPYTER_EXECUTE = `
import sys
from jupyter_client import BlockingKernelClient
c = BlockingKernelClient(connection_file=sys.argv[1])
c.load_connection_file()
c.start_channels()
c.wait_for_ready(timeout=30)
reply = c.execute_interactive("print(6 * 7)", timeout=30, output_hook=lambda m: m["msg_type"] == "stream" and print(m["content"]["text"], end=""))
print(reply["content"]["status"])
c.stop_channels()
`

describe('a kernel started with --transport ipc behind sshd: forwarded with direct-streamlocal', () => {
  let ns: Netns
  let sshd: Sshd
  let refusing: Sshd
  let kernel: Kernel
  let dir: string

  before(async () => {
    ns = await createNetns()
    ;[sshd, refusing, kernel, dir] = await Promise.all([
      // SFTP lets a refused streamlocal channel be told apart from a missing socket
      startSshd({ netns: ns, extraConfig: 'Subsystem sftp internal-sftp' }),
      startSshd({ netns: ns, extraConfig: 'AllowStreamLocalForwarding no\nSubsystem sftp internal-sftp' }),
      startKernel({ netns: ns, transport: 'ipc' }),
      mkdtemp(join(tmpdir(), 'ippt-remote-unix-')),
    ])
  })
  after(async () => {
    await kernel.close()
    await Promise.all([sshd.close(), refusing.close()])
    await ns.close()
    await rm(dir, { recursive: true, force: true })
  })

  test('the file names unix sockets; a TCP loopback copy works for jupyter_client and KernelClient', async () => {
    const source = parseConnectionFile(await readFile(kernel.file, 'utf8'), kernel.file)
    assert.ok(source.kind === 'kernel' && source.transport === 'ipc')
    assert.ok(endpoints(source).every((e) => e.kind === 'unix'))
    const out = join(dir, 'tcp', 'kernel-test.json')
    await using tunnel = await openTunnel(kernel.file, {
      ...sshOptionsOf(sshd),
      ssh: `root@${sshd.host}:${sshd.port}`,
      out,
    })
    const local = parseConnectionFile(await readFile(out, 'utf8'), out)
    assert.ok(local.kind === 'kernel')
    assert.equal(local.transport, 'tcp')
    assert.equal(local.ip, '127.0.0.1')
    assert.deepEqual(
      tunnel.forwards.map((f) => (f.remote.kind === 'unix' ? f.remote.path : '')),
      endpoints(source).map((e) => (e.kind === 'unix' ? e.path : 'tcp?')),
    )
    const python = await runPython(JUPYTER_EXECUTE, { args: [out] })
    assert.equal(python.code, 0, python.stderr)
    assert.equal(python.stdout, '42\nok\n')
    await using client = await KernelClient.open(out, { handshakeTimeoutMs: 20_000 })
    assert.deepEqual((await client.execute('x = 6 * 7', { userExpressions: { x: 'x' } })).expressions.x, {
      status: 'ok',
      text: '42',
      data: { 'text/plain': '42' },
    })
    const shell = tunnel.stats().get('shell')
    assert.ok(
      shell !== undefined && shell.bytesIn > 0 && shell.bytesOut > 0,
      'shell traffic went through the tunnel',
    )
  })

  test('to unix listeners here: our client through ipc on both sides', async () => {
    const runtime = join(dir, 'run')
    await using client = await KernelClient.open(kernel.file, {
      ...sshOptionsOf(sshd),
      ssh: `root@${sshd.host}:${sshd.port}`,
      listen: 'unix',
      socketDir: runtime,
      handshakeTimeoutMs: 20_000,
    })
    const tunnel = client.connection.tunnel
    assert.ok(tunnel !== undefined)
    assert.ok(tunnel.forwards.every((f) => f.local.kind === 'unix' && f.remote.kind === 'unix'))
    assert.deepEqual((await client.execute('x = 6 * 7', { userExpressions: { x: 'x' } })).expressions.x, {
      status: 'ok',
      text: '42',
      data: { 'text/plain': '42' },
    })
  })

  test('a server with AllowStreamLocalForwarding no: up fails with E_FORWARD_DENIED naming the channel', async () => {
    const result = await runCli([
      'up',
      kernel.file,
      '--json',
      '--out',
      join(dir, 'denied', 'kernel-test.json'),
      '--ssh',
      `root@${refusing.host}:${refusing.port}`,
      ...sshArgsOf(refusing),
    ])
    assert.equal(result.code, 1, result.stderr)
    const error = JSON.parse(result.stdout.trim().split('\n').at(-1) ?? '{}') as {
      code: string
      message: string
    }
    assert.equal(error.code, 'E_FORWARD_DENIED')
    assert.match(
      error.message,
      /^channel "\w+": .* would not connect to unix socket \/.*: a socket is there, but/,
    )
    assert.match(error.message, /AllowStreamLocalForwarding/)
  })

  test('no socket at the remote path: E_FORWARD naming the channel and the path', async () => {
    const gone = join(dir, 'kernel-gone.json')
    const text = await readFile(kernel.file, 'utf8')
    await writeFile(gone, JSON.stringify({ ...(JSON.parse(text) as object), ip: join(dir, 'nothing-here') }))
    await assert.rejects(
      openTunnel(gone, { ...sshOptionsOf(sshd), ssh: `root@${sshd.host}:${sshd.port}` }),
      hasCode('E_FORWARD', 'Nothing accepts connections at unix socket', join(dir, 'nothing-here')),
    )
  })

  test('opensAfter: a connection made before the remote socket exists waits for it, instead of being refused', async (t) => {
    const link = new Link({ hops: [hopOf(sshd)] }, { agent: false })
    await link.connect()
    t.after(() => link.close())
    const prefix = join(dir, 'later')
    const info = parseConnectionFile(
      JSON.stringify({
        ...{ shell_port: 1, iopub_port: 2, stdin_port: 3, control_port: 4, hb_port: 5 },
        ...{ ip: prefix, transport: 'ipc', key: 'k', signature_scheme: 'hmac-sha256', kernel_name: '' },
      }),
      'later.json',
    )
    let open: () => void = () => undefined
    const tunnel = await Tunnel.over(info, link, {
      probe: false,
      opensAfter: new Promise<void>((resolve) => (open = resolve)),
    })
    t.after(() => tunnel.close())
    const loopback = tunnel.loopback
    assert.ok(loopback.kind === 'kernel')
    const client = connect(loopback.shell_port, '127.0.0.1')
    client.end('sent before the socket existed')
    const server = createServer()
    t.after(() => server.close())
    const received = new Promise<string>((resolve, reject) => {
      server.once('connection', (socket) => {
        let text = ''
        socket.setEncoding('utf8').on('data', (chunk: string) => (text += chunk))
        socket.once('end', () => {
          resolve(text)
          socket.end()
        })
      })
      client.once('close', () => reject(new Error('the early connection was closed: refused')))
    })
    for (let i = 0; tunnel.stats().get('shell')?.accepted !== 1; i++) {
      if (i > 400) assert.fail('the connection never reached the tunnel')
      await sleep(5)
    }
    // sshd answers channel opens in order: once this one is refused, an open the forward sent first has its answer
    await assert.rejects(link.forwardOutUnix(join(dir, 'nothing-here')))
    // the remote socket appears only now (a kernel still importing), then the gate opens
    await new Promise<void>((resolve) => server.listen(`${prefix}-1`, resolve))
    open()
    assert.equal(await received, 'sent before the socket existed')
  })

  test('an ipcontroller on unix sockets (--transport=ipc): engines register through ipp-tunnel engines, Clients run', async (t) => {
    const ssh = `root@${sshd.host}:${sshd.port}`
    const controller = await startController({ netns: ns, ssh, ipc: join(dir, 'ctl') })
    t.after(() => controller.close())
    const engine = parseConnectionFile(await readFile(controller.engineFile, 'utf8'), controller.engineFile)
    assert.ok(engine.kind === 'ipp-engine' && engine.interface === `ipc://${join(dir, 'ctl')}`)
    const engines = spawnCli([
      'engines',
      controller.engineFile,
      '-n',
      '1',
      '--json',
      '--ssh',
      ssh,
      ...sshArgsOf(sshd),
    ])
    t.after(() => engines.kill('SIGKILL'))
    const lines = new JsonLines(engines)
    await lines.next('engine-registered', 90_000)

    const out = join(dir, 'ctl-copy', 'ipcontroller-client.json')
    await using tunnel = await openTunnel(controller.clientFile, {
      ...sshOptionsOf(sshd),
      out,
      listen: 'unix',
      socketDir: join(dir, 'ctl-run'),
    })
    assert.ok(tunnel.forwards.every((f) => f.remote.kind === 'unix'))
    const python = await runPython(clientApplyScript(out, 1))
    assert.equal(python.code, 0, python.stderr)
    assert.deepEqual((JSON.parse(python.stdout) as { ids: number[] }).ids, [0])
    await using client = await IppClient.open(controller.clientFile, {
      ...sshOptionsOf(sshd),
      handshakeTimeoutMs: 20_000,
    })
    assert.deepEqual((await client.engines()).ids, [0])
    engines.kill('SIGINT')
    assert.equal((await exited(engines)).code, 0)
  })
})
