import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { lstat, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'

import { endpoints, parseConnectionFile, type ConnectionInfo } from '../../src/connection-file/index.js'
import { IppClient, KernelClient } from '../../src/client/index.js'
import { Forward, openTunnel } from '../../src/tunnel/index.js'
import { renderReport } from '../../src/cli/status.js'
import { exited, JsonLines, runCli, spawnCli } from '../support/cli.js'
import { sshArgsOf, sshOptionsOf, startCluster, type Cluster } from '../support/index.js'
import { clientApplyScript, runPython } from '../support/ipp.js'
import { startKernel, type Kernel } from '../support/kernel.js'

const run = promisify(execFile)
const OTHER_USER = 'ipptunnel-other'

/** A second local user for the privacy checks; created once, idempotent. */
async function ensureOtherUser(): Promise<void> {
  try {
    await run('id', ['-u', OTHER_USER])
  } catch {
    await run('useradd', ['--system', '--no-create-home', OTHER_USER])
  }
}

/** What another local user gets connecting to `path`: `ok` or the errno name. */
async function connectAsOther(path: string): Promise<string> {
  const code = `
import errno, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1]); print("ok")
except OSError as e:
    print(errno.errorcode[e.errno])
`
  const { stdout } = await run('runuser', ['-u', OTHER_USER, '--', '/usr/bin/python3', '-c', code, path])
  return stdout.trim()
}

async function listAsOther(dir: string): Promise<string> {
  const code = `
import errno, os, sys
try:
    os.listdir(sys.argv[1]); print("ok")
except OSError as e:
    print(errno.errorcode[e.errno])
`
  const { stdout } = await run('runuser', ['-u', OTHER_USER, '--', '/usr/bin/python3', '-c', code, dir])
  return stdout.trim()
}

/** The unix sockets a loopback file names, each checked to be a 0600 socket of ours in a 0700 directory. */
async function checkPrivate(info: ConnectionInfo): Promise<{ dir: string; paths: string[] }> {
  const paths = endpoints(info).map((e) => {
    if (e.kind !== 'unix') assert.fail(`${e.channel} is not a unix socket`)
    return e.path
  })
  const dir = dirname(paths[0] ?? '')
  const d = await lstat(dir)
  assert.ok(d.isDirectory())
  assert.equal(d.mode & 0o777, 0o700, 'socket directory is 0700')
  for (const path of paths) {
    assert.equal(dirname(path), dir)
    assert.ok(Buffer.byteLength(path) <= 107, `${path} fits sun_path`)
    const s = await lstat(path)
    assert.ok(s.isSocket(), path)
    assert.equal(s.mode & 0o777, 0o600, `${path} is 0600`)
  }
  return { dir, paths }
}

describe('--listen unix: listeners are unix sockets in a private directory, the loopback file says ipc://', () => {
  let cluster: Cluster
  let dir: string
  let runtime: string
  let auth: string[]
  let ssh: string

  before(async () => {
    ;[cluster, dir] = await Promise.all([
      startCluster({ engines: 1 }),
      mkdtemp(join(tmpdir(), 'ippt-unix-')),
      ensureOtherUser(),
    ])
    runtime = join(dir, 'run')
    await mkdir(runtime, { mode: 0o700 })
    auth = sshArgsOf(cluster.sshd)
    ssh = `root@${cluster.sshd.host}:${cluster.sshd.port}`
  })
  after(async () => {
    await cluster.close()
    await rm(dir, { recursive: true, force: true })
  })

  test('up: ipyparallel.Client runs apply_sync, our client too; another user gets EACCES; status shows the paths; all removed at the end', async (t) => {
    const out = join(dir, 'up', 'ipcontroller-client.json')
    const child = spawnCli(
      ['up', cluster.controller.clientFile, '--listen', 'unix', '--out', out, '--json', ...auth],
      { IPP_TUNNEL_RUNTIME_DIR: runtime },
    )
    t.after(() => child.kill('SIGKILL'))
    const lines = new JsonLines(child)
    const ready = await lines.next('ready')
    const info = parseConnectionFile(await readFile(out, 'utf8'), out)
    assert.ok(info.kind === 'ipp-client')
    assert.match(info.interface, /^ipc:\/\//)
    assert.equal(info.ssh, '')
    const { dir: socketDir, paths } = await checkPrivate(info)
    assert.equal(dirname(socketDir), runtime, 'the socket directory is in the runtime directory')
    const prefix = info.interface.slice('ipc://'.length)
    assert.deepEqual(
      paths,
      endpoints(info).map((e) => `${prefix}-${e.port}`),
      'each socket is <interface>-<port>, where ipcontroller binds',
    )
    // ipyparallel's Client and ipengine connect to <interface>:<port>: the same socket, hard-linked
    const clientPaths = endpoints(info).map((e) => `${prefix}:${e.port}`)
    for (const [i, path] of clientPaths.entries()) {
      const [a, b] = await Promise.all([lstat(path), lstat(paths[i] ?? '')])
      assert.ok(a.isSocket() && a.ino === b.ino, `${path} is ${paths[i] ?? ''}`)
    }
    assert.equal(new Set(endpoints(info).map((e) => e.port)).size, paths.length, 'distinct ports')
    const forwards = ready.forwards as { channel: string; local: string; remote: string }[]
    assert.deepEqual(forwards.map((f) => f.local).sort(), [...paths].sort(), 'ready names the socket paths')

    const python = await runPython(clientApplyScript(out, 1))
    assert.equal(python.code, 0, `ipyparallel.Client on the ipc file:\n${python.stderr}`)
    const result = JSON.parse(python.stdout) as { ids: number[]; results: number[] }
    assert.deepEqual(result.ids, [0])

    await using client = await IppClient.open(out, { handshakeTimeoutMs: 20_000 })
    assert.equal(client.connection.tunnel, undefined, 'the loopback file names no ssh server')
    assert.deepEqual((await client.engines()).ids, [0])

    assert.equal(await listAsOther(socketDir), 'EACCES', 'another user cannot list the directory')
    for (const path of [...paths, ...clientPaths]) assert.equal(await connectAsOther(path), 'EACCES', path)

    child.kill('SIGINT')
    assert.equal((await exited(child)).code, 0)
    await assert.rejects(lstat(socketDir), { code: 'ENOENT' }, 'the socket directory is removed')
    // what stays is the secret that names copy claims, not a socket directory
    assert.deepEqual(await readdir(runtime), ['claims.key'])
  })

  test('watch --listen unix: copies name ipc sockets, status shows their paths; exec --listen unix too', async (t) => {
    const watchRun = join(dir, 'watch-run')
    await mkdir(watchRun, { mode: 0o700 })
    const env = { IPP_TUNNEL_RUNTIME_DIR: watchRun }
    const outDir = join(dir, 'watch-out')
    const args = ['--dir', cluster.controller.securityDir, '--out-dir', outDir, '--listen', 'unix', ...auth]
    const watch = spawnCli(['watch', '--json', ...args], env)
    t.after(() => watch.kill('SIGKILL'))
    const lines = new JsonLines(watch)
    const ready = await lines.next(
      (e) => e.event === 'ready' && e.file === cluster.controller.clientFile,
      60_000,
    )
    const out = String(ready.out)
    const info = parseConnectionFile(await readFile(out, 'utf8'), out)
    const { paths } = await checkPrivate(info)
    const status = await runCli(['status', '--width', '0'], env)
    assert.equal(status.code, 0, status.stderr)
    for (const path of paths)
      assert.ok(status.stdout.includes(path), `status shows ${path}:\n${status.stdout}`)

    const exec = await runCli(
      [
        'exec',
        cluster.controller.clientFile,
        '--listen',
        'unix',
        ...auth,
        '--',
        '/usr/bin/python3',
        '-c',
        'import json, sys; print(json.load(open(sys.argv[1]))["interface"])',
        '{}',
      ],
      env,
    )
    assert.equal(exec.code, 0, exec.stderr)
    assert.match(exec.stdout, new RegExp(`^ipc://${watchRun}/\\d+-[0-9a-f]{6}/client\n$`))

    watch.kill('SIGINT')
    assert.equal((await exited(watch)).code, 0)
    assert.deepEqual(
      (await readdir(watchRun)).filter((n) => n !== 'copies.json' && n !== 'claims.key'),
      [],
      'no socket directory left',
    )
  })

  test('engines --listen unix: ipengine registers through the unix sockets of an engine file', async (t) => {
    const child = spawnCli(
      ['engines', cluster.controller.engineFile, '-n', '1', '--listen', 'unix', '--json', ...auth],
      { IPP_TUNNEL_RUNTIME_DIR: runtime },
    )
    t.after(() => child.kill('SIGKILL'))
    const lines = new JsonLines(child)
    const ready = await lines.next('ready', 60_000)
    for (const f of ready.forwards as { local: string }[])
      assert.ok(f.local.startsWith(`${runtime}/`), f.local)
    const registered = await lines.next('engine-registered', 90_000)
    assert.equal(typeof registered.id, 'number')
    child.kill('SIGINT')
    assert.equal((await exited(child)).code, 0)
  })

  test('library: openTunnel({ listen: "unix" }) on a kernel behind sshd; jupyter_client and KernelClient use it', async (t) => {
    const kernel: Kernel = await startKernel({ netns: cluster.ns })
    t.after(() => kernel.close())
    const out = join(dir, 'kernel', 'kernel-test.json')
    await using tunnel = await openTunnel(kernel.file, {
      ...sshOptionsOf(cluster.sshd),
      ssh,
      out,
      listen: 'unix',
      socketDir: runtime,
    })
    assert.equal(tunnel.listen, 'unix')
    const info = parseConnectionFile(await readFile(out, 'utf8'), out)
    assert.ok(info.kind === 'kernel')
    assert.equal(info.transport, 'ipc')
    const { paths } = await checkPrivate(info)
    assert.deepEqual(
      paths,
      endpoints(info).map((e) => `${info.ip}-${e.port}`),
      "each socket is <ip>-<port>, as jupyter_client's ipc://{ip}-{port}",
    )
    const python = await runPython(
      `
import sys
from jupyter_client import BlockingKernelClient
c = BlockingKernelClient(connection_file=sys.argv[1])
c.load_connection_file()
c.start_channels()
c.wait_for_ready(timeout=30)
reply = c.execute_interactive("print(6 * 7)", timeout=30, output_hook=lambda m: m["msg_type"] == "stream" and print(m["content"]["text"], end=""))
print(reply["content"]["status"])
c.stop_channels()
`,
      { args: [out] },
    )
    assert.equal(python.code, 0, python.stderr)
    assert.equal(python.stdout, '42\nok\n')
    await using client = await KernelClient.open(out, { handshakeTimeoutMs: 20_000 })
    assert.deepEqual((await client.execute('x = 6 * 7', { userExpressions: { x: 'x' } })).expressions.x, {
      status: 'ok',
      text: '42',
      data: { 'text/plain': '42' },
    })
  })

  test('a stale socket of ours at a listener path is replaced; anything else there is refused', async (t) => {
    const base = await mkdtemp(join(tmpdir(), 'ippt-stale-'))
    t.after(() => rm(base, { recursive: true, force: true }))
    await writeFile(join(base, 'placeholder'), '')
    // a killed run: the socket file stays, nothing listens
    const stale = join(base, 'client:2')
    await run('/usr/bin/python3', [
      '-c',
      'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])',
      stale,
    ])
    const remote = { channel: 'x', host: '127.0.0.1', port: 9 }
    const never = () => Promise.reject(new Error('not used'))
    const forward = await Forward.listen(remote, never, () => undefined, {
      kind: 'unix',
      path: stale,
      port: 2,
    })
    t.after(() => forward.close())
    assert.ok((await lstat(stale)).isSocket())
    assert.equal(forward.local.kind, 'unix')
    await assert.rejects(
      Forward.listen(remote, never, () => undefined, {
        kind: 'unix',
        path: join(base, 'placeholder'),
        port: 3,
      }),
      { code: 'E_UNSAFE_PATH', message: /placeholder: is a regular file, not a socket of ours/ },
    )
  })

  test('a socket directory left by a run that was killed is removed at the next start', async () => {
    const parent = join(dir, 'stale-run')
    await mkdir(parent, { mode: 0o700 })
    const dead = join(parent, '4194303-abcdef')
    await mkdir(dead, { mode: 0o700 })
    await run('/usr/bin/python3', [
      '-c',
      'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])',
      join(dead, 'client:1'),
    ])
    const foreign = join(parent, 'not-ours')
    await mkdir(foreign)
    await using tunnel = await openTunnel(cluster.controller.clientFile, {
      ...sshOptionsOf(cluster.sshd),
      listen: 'unix',
      socketDir: parent,
      probe: false,
    })
    assert.deepEqual(
      (await readdir(parent)).sort(),
      [tunnel.socketDir?.slice(parent.length + 1), 'not-ours'].sort(),
    )
  })

  test('status shows the socket paths', () => {
    const text = renderReport(
      {
        pid: 1,
        since: '2026-01-01T00:00:00.000Z',
        dirs: ['/w'],
        links: 1,
        files: [
          {
            file: '/w/kernel-a.json',
            kind: 'kernel',
            out: '/w-tunnel/kernel-a.json',
            destination: 'me@login:22',
            state: 'ready',
            link: 'up',
            reconnects: 0,
            lastError: undefined,
            forwards: [
              {
                channel: 'shell',
                local: { kind: 'unix', path: '/run/user/1000/ipp-tunnel/42-abcdef/kernel-1', port: 1 },
                remote: { kind: 'unix', channel: 'shell', path: '/tmp/kernel-a-ipc-1', port: 1 },
                open: 0,
                accepted: 0,
                bytesIn: 0,
                bytesOut: 0,
              },
            ],
          },
        ],
      },
      { width: 0 },
    )
    assert.match(text, /shell\s+\/run\/user\/1000\/ipp-tunnel\/42-abcdef\/kernel-1\s+\/tmp\/kernel-a-ipc-1/)
  })
})
