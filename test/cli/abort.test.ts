import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'

import { exited, FIXTURES, JsonLines, spawnCli } from '../support/cli.js'

const run = promisify(execFile)

/**
 * A port that accepts TCP and never says a word of SSH: an ssh connect to it hangs until its handshake timeout.
 * Each accepted connection is handed out once, with a promise of its close.
 */
class SilentListener {
  readonly server: Server = createServer()
  port = 0
  readonly #waiting: ((s: { socket: Socket; closed: Promise<unknown> }) => void)[] = []

  async listen(): Promise<void> {
    this.server.on('connection', (socket) => {
      socket.on('error', () => undefined)
      socket.resume() // read (and ignore) the client's SSH banner, so that its FIN is seen
      const closed = once(socket, 'close')
      this.#waiting.shift()?.({ socket, closed })
    })
    this.server.listen(0, '127.0.0.1')
    await once(this.server, 'listening')
    const address = this.server.address()
    if (address === null || typeof address === 'string') throw new Error('no port')
    this.port = address.port
  }

  next(): Promise<{ socket: Socket; closed: Promise<unknown> }> {
    return new Promise((resolve) => this.#waiting.push(resolve))
  }
}

describe('the first SIGINT/SIGTERM aborts a start-up stuck in the SSH connect', () => {
  const silent = new SilentListener()
  let dir: string
  let kernelFile: string
  let ssh: string[]

  before(async () => {
    await silent.listen()
    dir = await mkdtemp(join(tmpdir(), 'ippt-abort-'))
    kernelFile = join(dir, 'kernel-abort.json')
    await writeFile(kernelFile, JSON.stringify(kernelFields()), { mode: 0o600 })
    const key = join(dir, 'id_ed25519')
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key])
    const knownHosts = join(dir, 'known_hosts')
    await writeFile(knownHosts, '', { mode: 0o600 })
    ssh = [
      '--ssh',
      `root@127.0.0.1:${silent.port}`,
      '--identity',
      key,
      '--known-hosts',
      knownHosts,
      '--ssh-config',
      '/dev/null',
    ]
  })
  after(async () => {
    await new Promise((resolve) => silent.server.close(resolve))
    await rm(dir, { recursive: true, force: true })
  })

  /** Starts the CLI with its own temp dir, waits until it has connected, signals it, and waits for its exit. */
  async function interrupt(
    name: string,
    args: (tmp: string) => string[],
    signal: NodeJS.Signals,
    env: NodeJS.ProcessEnv = {},
  ): Promise<{ code: number | null; events: JsonLines; tmp: string }> {
    const tmp = join(dir, `${name}-tmp`)
    await mkdir(tmp, { mode: 0o700 })
    const connected = silent.next()
    const argv = args(tmp)
    const dashes = argv.includes('--') ? argv.indexOf('--') : argv.length
    argv.splice(dashes, 0, '--json', ...ssh)
    // the runtime directory (where copy claims are keyed) lives on; it is not what these tests look for
    const runtime = { IPP_TUNNEL_RUNTIME_DIR: join(dir, `${name}-run`) }
    const child = spawnCli(argv, { TMPDIR: tmp, ...runtime, ...env })
    const events = new JsonLines(child)
    const { closed } = await connected
    child.kill(signal)
    const { code } = await exited(child)
    await closed // the half-made ssh connection is closed, not left to time out
    return { code, events, tmp }
  }

  test('up: SIGTERM exits 143, writes no loopback copy', async () => {
    const out = join(dir, 'up-out.json')
    const { code, events, tmp } = await interrupt('up', () => ['up', kernelFile, '--out', out], 'SIGTERM')
    assert.equal(code, 143, events.stderr)
    assert.deepEqual(events.events, [{ event: 'interrupted', file: kernelFile, signal: 'SIGTERM' }])
    assert.deepEqual(await readdir(dir).then((names) => names.filter((n) => n.startsWith('up-out'))), [])
    assert.deepEqual(await readdir(tmp), [])
  })

  test('up: SIGINT exits 130', async () => {
    const out = join(dir, 'up-int-out.json')
    const { code, events } = await interrupt('up-int', () => ['up', kernelFile, '--out', out], 'SIGINT')
    assert.equal(code, 130, events.stderr)
    assert.equal(events.events.at(-1)?.event, 'interrupted')
  })

  test('exec: SIGINT exits 130, runs nothing, removes its private directory', async () => {
    const marker = join(dir, 'exec-ran')
    const { code, events, tmp } = await interrupt(
      'exec',
      () => ['exec', kernelFile, '--', 'touch', marker],
      'SIGINT',
    )
    assert.equal(code, 130, events.stderr)
    // exec keeps stdout for the command: its events, JSON too, go to stderr
    const stderrEvents = events.stderr
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { event?: string })
    assert.equal(stderrEvents.at(-1)?.event, 'interrupted', events.stderr)
    assert.deepEqual(await readdir(tmp), [], 'no private directory left')
    assert.deepEqual(
      (await readdir(dir)).filter((n) => n === 'exec-ran'),
      [],
    )
  })

  test('engines: SIGTERM exits 143, starts no engine, removes its private directory', async () => {
    const { code, events, tmp } = await interrupt(
      'engines',
      () => ['engines', `${FIXTURES}ipp/ipcontroller-engine.json`, '-n', '1', '--engine-cmd', 'false'],
      'SIGTERM',
    )
    assert.equal(code, 143, events.stderr)
    assert.equal(events.events.at(-1)?.event, 'interrupted')
    assert.equal(
      events.events.some((e) => e.event === 'engine-started'),
      false,
    )
    assert.deepEqual(await readdir(tmp), [])
  })

  test('watch: SIGINT while a file is connecting stops the service at once (a clean stop: 0)', async () => {
    const watched = join(dir, 'watched')
    const runtime = join(dir, 'watch-run')
    await mkdir(watched, { mode: 0o700 })
    await mkdir(runtime, { mode: 0o700 })
    await writeFile(join(watched, 'kernel-w.json'), JSON.stringify(kernelFields()), { mode: 0o600 })
    const { code, events } = await interrupt('watch', () => ['watch', '--dir', watched], 'SIGINT', {
      IPP_TUNNEL_RUNTIME_DIR: runtime,
    })
    assert.equal(code, 0, events.stderr)
    assert.equal(
      events.events.some((e) => e.event === 'ready' || e.event === 'error'),
      false,
    )
    const copies = await readdir(`${watched}-tunnel`).catch(() => [])
    assert.deepEqual(copies, [], 'no loopback copy')
    assert.deepEqual(
      await readdir(runtime).then((n) => n.filter((f) => f !== 'copies.json' && f !== 'claims.key')),
      [],
    )
  })
})

function kernelFields(): Record<string, unknown> {
  return {
    shell_port: 1001,
    iopub_port: 1002,
    stdin_port: 1003,
    control_port: 1004,
    hb_port: 1005,
    ip: '127.0.0.1',
    key: '',
    transport: 'tcp',
    signature_scheme: 'hmac-sha256',
  }
}
