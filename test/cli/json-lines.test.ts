import assert from 'node:assert/strict'
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer, connect as tcpConnect, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { exited, JsonLines, runCli, spawnCli } from '../support/cli.js'
import { appears, portOf, sshArgsOf, startSshd, type Sshd } from '../support/index.js'
import { startKernel, type Kernel } from '../support/kernel.js'
import { kernelFileText } from '../support/kernel.js'

type Event = Record<string, unknown>

/** Every non-empty line of `text` as JSON; fails the test on a line that is not JSON or has no `event`. */
function events(text: string, where: string): Event[] {
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((line) => {
      let parsed: unknown
      assert.doesNotThrow(() => (parsed = JSON.parse(line)), `${where}: not JSON: ${line}`)
      assert.ok(parsed !== null && typeof parsed === 'object', `${where}: not an object: ${line}`)
      assert.equal(typeof (parsed as Event).event, 'string', `${where}: no event field: ${line}`)
      return parsed as Event
    })
}

/** A TCP server on 127.0.0.1 that can be shut together with every connection it holds. */
async function listener(): Promise<{ server: Server; port: number; shut: () => Promise<void> }> {
  const sockets = new Set<Socket>()
  const server = createServer((s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
    s.on('error', () => undefined)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as { port: number }).port
  const shut = async () => {
    for (const s of sockets) s.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
  return { server, port, shut }
}

/** Opens a connection to a local port and resolves when the other side has closed it. */
function connectAndWaitClose(port: number): Promise<void> {
  return new Promise((resolve) => {
    const socket = tcpConnect(port, '127.0.0.1')
    socket.on('error', () => undefined)
    socket.resume()
    socket.once('close', () => resolve())
  })
}

describe('CLI output: JSON lines, stdout vs stderr, status, repeated errors (real sshd and ipykernel)', () => {
  let sshd: Sshd
  let kernel: Kernel
  let dir: string
  let ssh: string[]

  before(async () => {
    sshd = await startSshd()
    kernel = await startKernel()
    dir = await mkdtemp(join(tmpdir(), 'ippt-json-'))
    ssh = ['--ssh', `${sshd.user}@${sshd.host}:${sshd.port}`, ...sshArgsOf(sshd)]
  })
  after(async () => {
    // after() runs even when before() failed half-way
    await (kernel as Kernel | undefined)?.close()
    await (sshd as Sshd | undefined)?.close()
    await rm(dir, { recursive: true, force: true })
  })

  test('ping, px, install-service and errors: every stdout line is JSON with an event', async () => {
    const ping = await runCli(['ping', kernel.file, ...ssh, '--json'])
    assert.equal(ping.code, 0, ping.stderr)
    const [pong] = events(ping.stdout, 'ping')
    assert.equal(pong?.event, 'result')
    assert.equal(pong.kind, 'kernel')

    const px = await runCli(['px', kernel.file, 'print(6 * 7)', ...ssh, '--json'])
    assert.equal(px.code, 0, px.stderr)
    assert.equal(events(px.stdout, 'px').at(-1)?.event, 'result')

    const unit = await runCli(['install-service', '--print', '--json'])
    assert.equal(unit.code, 0, unit.stderr)
    assert.equal(events(unit.stdout, 'install-service')[0]?.event, 'unit')

    for (const argv of [
      ['up', join(dir, 'missing.json'), '--json'],
      ['bogus', '--json'],
      ['status', '--json'],
    ]) {
      const failed = await runCli(argv, { IPP_TUNNEL_RUNTIME_DIR: join(dir, 'no-service') })
      assert.notEqual(failed.code, 0)
      assert.equal(events(failed.stdout, argv.join(' ')).at(-1)?.event, 'error')
    }
  })

  test('human px: the result on stdout (so px … | grep works), nothing else there', async () => {
    const px = await runCli(['px', kernel.file, 'print("needle")', ...ssh])
    assert.equal(px.code, 0, px.stderr)
    assert.match(px.stdout, /needle/)
    assert.doesNotMatch(px.stderr, /needle/)
  })

  test('up: JSON events on stdout; human: the ready block on stdout, timestamped', async () => {
    const json = spawnCli(['up', kernel.file, '--json', '--out', join(dir, 'up.json'), ...ssh])
    const lines = new JsonLines(json)
    await lines.next('ready')
    json.kill('SIGTERM')
    assert.deepEqual(await exited(json), { code: 0, signal: null })
    await lines.next('closed')
    for (const e of lines.events) assert.equal(typeof e.event, 'string')

    const human = spawnCli(['up', kernel.file, '--out', join(dir, 'up-human.json'), ...ssh])
    let stdout = ''
    let stderr = ''
    human.stderr?.on('data', (d: Buffer) => (stderr += d.toString()))
    await new Promise<void>((resolve) =>
      human.stdout?.on('data', (d: Buffer) => {
        stdout += d.toString()
        if (/\bhb\b.*\n/.test(stdout)) resolve()
      }),
    )
    human.kill('SIGTERM')
    assert.deepEqual(await exited(human), { code: 0, signal: null })
    assert.match(stdout, /^\d{4}-\d\d-\d\dT[\d:.]+Z ready in \d+ ms: /)
    assert.match(stdout, /closed /)
    assert.equal(stderr, '')
  })

  test('up whose stdout reader has gone (up … | head) keeps carrying and stops cleanly: no EPIPE crash', async () => {
    const out = join(dir, 'up-no-reader.json')
    const child = spawnCli(['up', kernel.file, '--out', out, ...ssh])
    let stderr = ''
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()))
    // the reader goes before up writes its ready block, so that write fails with EPIPE
    child.stdout?.destroy()
    await appears(out)
    // through up's forwards: by now the ready block was written and failed
    const ping = await runCli(['ping', out, '--json'])
    assert.equal(ping.code, 0, ping.stderr)
    child.kill('SIGTERM')
    assert.deepEqual(await exited(child), { code: 0, signal: null })
    assert.doesNotMatch(stderr, /EPIPE|\n\s+at /)
  })

  test("exec --json: the command's stdout is its own; events go to stderr (or --events-fd)", async () => {
    const script = 'import os; print("child says hi", os.path.exists(os.environ["IPP_CONNECTION_FILE"]))'
    const result = await runCli([
      'exec',
      kernel.file,
      '--json',
      ...ssh,
      '--',
      '/usr/bin/python3',
      '-c',
      script,
    ])
    assert.equal(result.code, 0, result.stderr)
    assert.equal(result.stdout, 'child says hi True\n')
    const names = events(result.stderr, 'exec stderr').map((e) => e.event)
    assert.equal(names[0], 'ready')

    const missing = await runCli(['exec', kernel.file, '--events-fd', '99', '--', 'true'])
    assert.equal(missing.code, 2)
    assert.match(missing.stderr, /--events-fd 99 is not an open file descriptor/)

    const notFound = await runCli(['exec', kernel.file, '--json', ...ssh, '--', join(dir, 'no-such-program')])
    assert.equal(notFound.code, 127, notFound.stderr)
    assert.equal(notFound.stdout, '')
    assert.equal(events(notFound.stderr, 'exec 127').at(-1)?.code, 'E_SPAWN')
  })

  test('watch --json and status: JSON lines; status fits 100 columns, shows the copy, reconnects, last error', async () => {
    const watched = await mkdtemp(join(dir, 'watched-'))
    const outDir = await mkdtemp(join(dir, 'out-'))
    const runtime = await mkdtemp(join(dir, 'run-'))
    const env = { IPP_TUNNEL_RUNTIME_DIR: runtime }
    const child = spawnCli(['watch', '--json', '--dir', watched, '--out-dir', outDir, ...ssh], env)
    const lines = new JsonLines(child)
    try {
      await lines.next('watching')
      const file = join(watched, 'kernel-a.json')
      await copyFile(kernel.file, file)
      const ready = await lines.next((e) => e.event === 'ready' && e.file === file)
      const seen = lines.events.length
      await sshd.killConnections()
      await lines.next((e) => e.event === 'reconnected' && lines.events.indexOf(e) >= seen)

      const json = await runCli(['status', '--json'], env)
      assert.equal(json.code, 0, json.stderr)
      const [report] = events(json.stdout, 'status')
      assert.equal(report?.event, 'result')

      const human = await runCli(['status'], env)
      assert.equal(human.code, 0, human.stderr)
      for (const line of human.stdout.trimEnd().split('\n')) {
        assert.ok(line.length <= 100, `${line.length} columns: ${line}`)
      }
      assert.ok(human.stdout.includes(`copy  ${String(ready.out)}`), human.stdout)
      assert.match(human.stdout, /kernel-a\.json: ready via .*, link up, 1 reconnect\b/)
      assert.match(human.stdout, /FROM REMOTE +TO REMOTE/)
      assert.match(human.stdout, /^ {2}last error \d\d:\d\d:\d\d E_\w+: .*lost/m)
    } finally {
      child.kill('SIGTERM')
      assert.deepEqual(await exited(child), { code: 0, signal: null })
    }
    for (const e of lines.events) assert.equal(typeof e.event, 'string')
  })

  test('up on a dead kernel: the same forward error is printed once, then summarised with a count', async () => {
    const servers = await Promise.all(Array.from({ length: 5 }, () => listener()))
    const [shell = 0, iopub = 0, stdin = 0, control = 0, hb = 0] = servers.map((s) => s.port)
    const file = join(dir, 'kernel-dead.json')
    await writeFile(
      file,
      kernelFileText([shell, iopub, stdin, control, hb], {
        key: 'a0436f6c-1916-498b-8eb9-e81ab9368e84',
        kernel_name: 'python3',
      }),
    )
    const child = spawnCli(['up', file, '--json', '--out', join(dir, 'dead-out.json'), ...ssh])
    const lines = new JsonLines(child)
    try {
      const ready = await lines.next('ready')
      const localHb = (ready.forwards as { channel: string; local: string }[]).find((f) => f.channel === 'hb')
      await Promise.all(servers.map((s) => s.shut()))
      const attempts = 40
      for (let i = 0; i < attempts; i++) await connectAndWaitClose(portOf(localHb?.local ?? ''))
      const isHb = (e: Event) => e.channel === 'hb'
      const suppressedSum = () =>
        lines.events
          .filter((e) => e.event === 'suppressed' && isHb(e))
          .reduce((sum, e) => sum + Number(e.count), 0)
      // each window's count arrives when the window ends (5 s): wait for them, no sleeping
      await lines.next(() => suppressedSum() >= attempts - 1, 60_000)
      const printed = lines.events.filter((e) => e.event === 'forward-error' && isHb(e))
      assert.equal(printed.length, 1, JSON.stringify(printed))
      assert.equal(suppressedSum(), attempts - 1)
      const summary = lines.events.find((e) => e.event === 'suppressed')
      assert.equal(summary?.of, 'forward-error')
      assert.equal(summary.file, file)
      assert.equal(typeof summary.ms, 'number')
    } finally {
      child.kill('SIGTERM')
      assert.deepEqual(await exited(child), { code: 0, signal: null })
    }
  })
})
