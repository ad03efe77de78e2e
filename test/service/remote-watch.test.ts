import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { execFile } from 'node:child_process'
import { appendFile, mkdir, mkdtemp, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, dirname, join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'

import { exited, JsonLines, runCli, spawnCli } from '../support/cli.js'
import { createNetns, portOf, sshArgsOf, startSshd, type Netns, type Sshd, exists } from '../support/index.js'
import {
  clientApplyScript,
  PYTHON,
  runPython,
  startController,
  startEngines,
  stopProcess,
  type Controller,
  type Engines,
} from '../support/ipp.js'
import { startKernel, type Kernel } from '../support/kernel.js'
import { startFakeSftp } from '../support/sftp-server.js'

const run = promisify(execFile)

interface Forward {
  channel: string
  local: string
  remote: string
}
type Event = Record<string, unknown>

/** The real ipyparallel.Client on profile `default-tunnel` of `ipythonDir` runs apply_sync on every engine. */
async function applyOnEngines(ipythonDir: string, engines: number): Promise<number[]> {
  const code = `
import json, os, ipyparallel as ipp
c = ipp.Client(profile="default-tunnel", timeout=30)
c.wait_for_engines(${engines}, timeout=30)
r = c[:].apply_sync(os.getpid)
print(json.dumps(sorted(c.ids)))
c.close()
`
  const result = await runPython(code, { env: { IPYTHONDIR: ipythonDir } })
  assert.equal(result.code, 0, `ipyparallel.Client failed:\n${result.stderr}`)
  return JSON.parse(result.stdout) as number[]
}

describe('ipp-tunnel watch --remote: connection files pulled over SFTP from a server in its own network namespace', () => {
  let ns: Netns
  let sshd: Sshd
  /** A second server in the namespace, named by a pulled file's own "ssh" field. */
  let sshd2: Sshd
  let auth: string[]
  let keysDir: string
  let kernel: Kernel
  let controller: Controller | undefined
  let engines: Engines | undefined
  /** The "remote" IPYTHONDIR: the controller writes there, the service reads it only through sshd. */
  let remoteIpython: string
  /** A second remote profile, whose files would land on the same local copy. */
  let otherIpython: string
  let localIpython: string
  let localRuntime: string
  let runtimeDir: string
  let env: NodeJS.ProcessEnv
  let destination: string
  let watch: ChildProcess
  let events: JsonLines

  const remoteSecurity = () => join(remoteIpython, 'profile_default', 'security')
  const otherSecurity = () => join(otherIpython, 'profile_default', 'security')
  const localCopy = (name: string) => join(localIpython, 'profile_default-tunnel', 'security', name)
  const id = (path: string) => `${destination}:${path}`
  const on = (name: string, path: string) => (e: Event) => e.event === name && e.file === id(path)

  async function startCluster(): Promise<Controller> {
    // no --ssh: the file's "ssh" is empty, so the tunnel goes through the host it was pulled from
    const c = await startController({ netns: ns, ipythonDir: remoteIpython })
    controller = c
    engines = startEngines(c.engineFile, 2, { netns: ns })
    return c
  }

  async function stopCluster(): Promise<void> {
    await engines?.close()
    await controller?.close()
    engines = undefined
    controller = undefined
  }

  before(async () => {
    ns = await createNetns()
    sshd = await startSshd({ netns: ns, extraConfig: 'Subsystem sftp internal-sftp' })
    kernel = await startKernel({ netns: ns })
    sshd2 = await startSshd({ netns: ns })
    const temp = (name: string) => mkdtemp(join(tmpdir(), `ippt-rw-${name}-`))
    // one key and one known_hosts file for both servers
    await appendFile(join(sshd2.dir, 'authorized_keys'), await readFile(`${sshd.clientKey}.pub`))
    keysDir = await temp('keys')
    const knownHosts = join(keysDir, 'known_hosts')
    await writeFile(
      knownHosts,
      (await readFile(sshd.knownHostsFile, 'utf8')) + (await readFile(sshd2.knownHostsFile, 'utf8')),
    )
    auth = ['--identity', sshd.clientKey, '--known-hosts', knownHosts, '--ssh-config', '/dev/null']
    remoteIpython = await temp('remote')
    otherIpython = await temp('other')
    localIpython = await temp('local')
    localRuntime = await temp('jrt')
    runtimeDir = await temp('run')
    destination = `${sshd.user}@${sshd.host}:${sshd.port}`
    env = { IPYTHONDIR: localIpython, JUPYTER_RUNTIME_DIR: localRuntime, IPP_TUNNEL_RUNTIME_DIR: runtimeDir }
    watch = spawnCli(
      [
        'watch',
        '--json',
        '--remote',
        `${destination}:${remoteSecurity()}`,
        '--remote',
        `${destination}:${dirname(kernel.file)}`,
        '--remote',
        `${destination}:${otherSecurity()}`,
        '--poll',
        '200',
        ...auth,
      ],
      env,
    )
    events = new JsonLines(watch)
  })
  after(async () => {
    await stopProcess(watch, 'SIGKILL')
    if (up) await stopProcess(up, 'SIGKILL')
    await stopCluster()
    await kernel.close()
    await sshd2.close()
    await sshd.close()
    await ns.close()
    for (const dir of [remoteIpython, otherIpython, localIpython, localRuntime, runtimeDir, keysDir]) {
      await rm(dir, { recursive: true, force: true })
    }
  })

  test('a controller started after the service: the copy appears and ipyparallel.Client works through it', async () => {
    const waiting = await events.next(
      (e) => e.event === 'remote:watching' && e.dir === remoteSecurity() && e.present === false,
    )
    assert.equal(waiting.destination, destination)
    const c = await startCluster()
    const ready = await events.next(on('ready', c.clientFile))
    assert.equal(ready.source, 'remote')
    assert.equal(ready.destination, destination)
    assert.equal(ready.path, c.clientFile)
    assert.equal(ready.out, localCopy('ipcontroller-client.json'))
    await events.next(on('ready', c.engineFile))
    const copy = JSON.parse(await readFile(localCopy('ipcontroller-client.json'), 'utf8')) as Event
    assert.equal(copy.ssh, '')
    assert.deepEqual(await applyOnEngines(localIpython, 2), [0, 1])
    assert.equal(await sshd.sessionCount(), 1, 'SFTP and every forward ride one SSH connection')
    const ledger = JSON.parse(await readFile(join(runtimeDir, 'copies.json'), 'utf8')) as {
      path: string
      written: { dev: number; ino: number }[]
    }[]
    const { dev, ino } = await stat(localCopy('ipcontroller-client.json'))
    const record = ledger.find((r) => r.path === localCopy('ipcontroller-client.json'))
    assert.ok(
      record?.written.some((w) => w.dev === dev && w.ino === ino),
      'the ledger names the very file written',
    )
  })

  test('a remote ipykernel: its copy lands in the local Jupyter runtime dir and BlockingKernelClient runs code', async () => {
    const ready = await events.next(on('ready', kernel.file))
    const out = join(localRuntime, basename(kernel.file))
    assert.equal(ready.out, out)
    const code = `
import sys, jupyter_client
kc = jupyter_client.BlockingKernelClient(connection_file=sys.argv[1])
kc.load_connection_file()
kc.start_channels()
kc.wait_for_ready(timeout=30)
out = []
reply = kc.execute_interactive("print(6 * 7)", timeout=30, output_hook=lambda m: out.append(m['content'].get('text', '')))
print(reply['content']['status'], ''.join(out).strip())
kc.stop_channels()
`
    const result = await runPython(code, { args: [out] })
    assert.equal(result.code, 0, result.stderr)
    assert.equal(result.stdout.trim(), 'ok 42')
  })

  test('bad remote input: a FIFO, a 100 MB file, a symlink to /etc/shadow, a half-written file, a directory — an error each, the good file undisturbed', async () => {
    const dir = remoteSecurity()
    const text = await readFile(join(dir, 'ipcontroller-client.json'), 'utf8')
    const bad = {
      fifo: join(dir, 'ipcontroller-fifo-client.json'),
      big: join(dir, 'ipcontroller-big-client.json'),
      shadow: join(dir, 'ipcontroller-shadow-client.json'),
      half: join(dir, 'ipcontroller-half-client.json'),
      dir: join(dir, 'kernel-dir.json'),
    }
    await run('mkfifo', [bad.fifo])
    await run('truncate', ['-s', '100M', bad.big])
    await symlink('/etc/shadow', bad.shadow)
    await writeFile(bad.half, text.slice(0, Math.floor(text.length / 2)), { mode: 0o600 })
    await mkdir(bad.dir)
    const codes = await Promise.all(
      Object.values(bad).map(async (path) => (await events.next(on('error', path))).code),
    )
    assert.deepEqual(codes, [
      'E_REMOTE_FILE',
      'E_REMOTE_FILE',
      'E_REMOTE_FILE',
      'E_CONNFILE_JSON',
      'E_REMOTE_FILE',
    ])
    for (const path of Object.values(bad)) await rm(path, { recursive: true, force: true })
    const client = join(dir, 'ipcontroller-client.json')
    assert.equal(events.events.filter(on('closed', client)).length, 0)
    assert.equal(await exists(localCopy('ipcontroller-half-client.json')), false)
    assert.deepEqual(await applyOnEngines(localIpython, 2), [0, 1])
  })

  test('two remotes that would write the same local copy: a conflict error, never an overwrite', async () => {
    const text = await readFile(join(remoteSecurity(), 'ipcontroller-client.json'), 'utf8')
    const before = await readFile(localCopy('ipcontroller-client.json'), 'utf8')
    await mkdir(otherSecurity(), { recursive: true })
    const twin = join(otherSecurity(), 'ipcontroller-client.json')
    await writeFile(twin, text, { mode: 0o600 })
    const error = await events.next(on('error', twin))
    assert.equal(error.code, 'E_COPY_CONFLICT')
    assert.equal(await readFile(localCopy('ipcontroller-client.json'), 'utf8'), before)
    await rm(twin)

    // nor over a local file the service did not write (a local kernel of the same name)
    const clash = join(dirname(kernel.file), 'kernel-clash.json')
    await writeFile(join(localRuntime, 'kernel-clash.json'), 'mine')
    await writeFile(clash, await readFile(kernel.file, 'utf8'), { mode: 0o600 })
    const clashError = await events.next(on('error', clash))
    assert.equal(clashError.code, 'E_COPY_CONFLICT')
    assert.equal(await readFile(join(localRuntime, 'kernel-clash.json'), 'utf8'), 'mine')
    // moved away, as the error says: the copy is written without the remote file changing
    await rename(join(localRuntime, 'kernel-clash.json'), join(localRuntime, 'mine.txt'))
    await events.next(on('ready', clash))
    assert.equal(await readFile(join(localRuntime, 'mine.txt'), 'utf8'), 'mine')
    await rm(join(localRuntime, 'mine.txt'))
    await rm(clash)
    await events.next(on('closed', clash))
    assert.equal(await exists(join(localRuntime, 'kernel-clash.json')), false)
  })

  test('status shows each remote directory: destination, directory, last poll, files seen, errors', async () => {
    const result = await runCli(['status', '--json'], env)
    assert.equal(result.code, 0, result.stderr)
    const report = JSON.parse(result.stdout) as {
      links: number
      remotes: {
        destination: string
        dir: string
        present: boolean
        lastPoll: string
        files: number
        errors: number
      }[]
      files: { file: string; state: string; remote?: { destination: string; path: string } }[]
    }
    assert.equal(report.links, 1)
    const main = report.remotes.find((r) => r.dir === remoteSecurity())
    assert.ok(main, JSON.stringify(report.remotes))
    assert.equal(main.destination, destination)
    assert.equal(main.present, true)
    assert.equal(main.files, 2)
    assert.ok(main.errors >= 4)
    assert.ok(Date.parse(main.lastPoll) > 0)
    const client = report.files.find(
      (f) => f.remote?.path === join(remoteSecurity(), 'ipcontroller-client.json'),
    )
    assert.equal(client?.state, 'ready')
    const human = await runCli(['status'], env)
    assert.match(human.stdout, /REMOTE DIR\s+STATE\s+LAST POLL/)
    // at the default width a long directory loses its middle; --width 0 shows it whole
    const whole = await runCli(['status', '--width', '0'], env)
    assert.ok(whole.stdout.includes(`${destination}:${remoteSecurity()}`), whole.stdout)
  })

  test('a pulled file whose own "ssh" names another server is tunnelled through that server', async () => {
    const text = await readFile(join(remoteSecurity(), 'ipcontroller-client.json'), 'utf8')
    const via = join(remoteSecurity(), 'ipcontroller-via-client.json')
    const other = `${sshd2.user}@${sshd2.host}:${sshd2.port}`
    await writeFile(via, JSON.stringify({ ...(JSON.parse(text) as Event), ssh: other }), { mode: 0o600 })
    await events.next(on('ready', via))
    assert.equal(await sshd2.sessionCount(), 1)
    const status = JSON.parse((await runCli(['status', '--json'], env)).stdout) as {
      files: { file: string; destination: string }[]
    }
    assert.equal(status.files.find((f) => f.file === id(via))?.destination, other)
    await rm(via)
    await events.next(on('closed', via))
  })

  test('a pulled file naming a server whose host key is unknown: an error that does not suggest accept-new', async (t) => {
    const unknown = await startFakeSftp({ listing: () => 'eof' })
    t.after(() => unknown.close())
    const text = await readFile(join(remoteSecurity(), 'ipcontroller-client.json'), 'utf8')
    const odd = join(remoteSecurity(), 'ipcontroller-odd-client.json')
    const ssh = `root@127.0.0.1:${unknown.port}`
    await writeFile(odd, JSON.stringify({ ...(JSON.parse(text) as Event), ssh }), { mode: 0o600 })
    const error = await events.next(on('error', odd))
    assert.equal(error.code, 'E_HOSTKEY_UNKNOWN')
    assert.doesNotMatch(String(error.message), /accept-new/)
    assert.match(
      String(error.message),
      /names the ssh server: .*check the fingerprint out of band, then add it with ssh-keyscan/,
    )
    await rm(odd)
  })

  test('a pulled file whose "ssh" holds shell syntax: an error naming the file and the field, no tunnel, no copy', async () => {
    const text = await readFile(join(remoteSecurity(), 'ipcontroller-client.json'), 'utf8')
    const hostile = join(remoteSecurity(), 'ipcontroller-hostile-client.json')
    const ssh = 'root@$(>$HOME/ippt-PWNED)'
    await writeFile(hostile, JSON.stringify({ ...(JSON.parse(text) as Event), ssh }), { mode: 0o600 })
    const error = await events.next(on('error', hostile))
    assert.equal(error.code, 'E_CONNFILE_FIELD')
    assert.equal(
      error.message,
      `${id(hostile)}: field "ssh" must be an ssh destination [user@]host[:port], got "${ssh}": the host contains the forbidden character "$" (a host is a name of letters, digits, ".", "-", "_", or an IP address)`,
    )
    assert.equal(await exists(localCopy('ipcontroller-hostile-client.json')), false)
    await rm(hostile)
  })

  let up: ChildProcess | undefined
  let upEvents: JsonLines
  const upCopy = () => join(runtimeDir, 'up-copy.json')

  test('up HOST:PATH pulls the file once and tunnels it; exec HOST:PATH -- CMD runs against it', async () => {
    const c = controller
    assert.ok(c)
    up = spawnCli(
      [
        'up',
        '--json',
        `${destination}:${c.clientFile}`,
        '--out',
        upCopy(),
        '--poll',
        '200',
        ...sshArgsOf(sshd),
      ],
      env,
    )
    upEvents = new JsonLines(up)
    const ready = await upEvents.next('ready')
    assert.equal(ready.file, id(c.clientFile))
    assert.equal(ready.source, 'remote')
    assert.equal(ready.out, upCopy())
    const result = await runPython(clientApplyScript(upCopy(), 2))
    assert.equal(result.code, 0, result.stderr)

    const exec = await runCli(
      [
        'exec',
        `${destination}:${c.clientFile}`,
        ...sshArgsOf(sshd),
        '--',
        PYTHON,
        '-c',
        clientApplyScript('{}', 2),
      ],
      env,
    )
    assert.equal(exec.code, 0, exec.stderr)
    assert.deepEqual((JSON.parse(exec.stdout) as { ids: number[] }).ids, [0, 1])

    const missing = await runCli(
      [
        'up',
        '--json',
        `${destination}:${remoteSecurity()}/ipcontroller-nope-client.json`,
        ...sshArgsOf(sshd),
      ],
      env,
    )
    assert.equal(missing.code, 2, missing.stderr)
    assert.match(missing.stdout + missing.stderr, /E_CONNFILE_READ/)
  })

  test('ping, px and engines take HOST:PATH; engines runs on the service copy with no ssh', async () => {
    const c = controller
    assert.ok(c)
    const ping = await runCli(['ping', '--json', `${destination}:${c.clientFile}`, ...sshArgsOf(sshd)], env)
    assert.equal(ping.code, 0, ping.stderr)
    const pong = JSON.parse(ping.stdout) as Event
    assert.deepEqual(pong.engines, [0, 1])
    assert.equal(pong.tunnelled, true)
    assert.equal(pong.file, id(c.clientFile))
    const px = await runCli(
      ['px', '--json', `${destination}:${c.clientFile}`, 'x = 6 * 7', '--expr', 'x', ...sshArgsOf(sshd)],
      env,
    )
    assert.equal(px.code, 0, px.stderr)
    const ran = JSON.parse(px.stdout) as { results: { expressions: Record<string, string> }[] }
    assert.deepEqual(
      ran.results.map((r) => r.expressions.x),
      ['42', '42'],
    )

    const runEngines = async (file: string, auth: readonly string[]) => {
      const child = spawnCli(['engines', '--json', file, '-n', '1', ...auth], env)
      const lines = new JsonLines(child)
      const registered = await lines.next('registered', 60_000)
      child.kill('SIGINT')
      assert.deepEqual(await exited(child), { code: 0, signal: null }, lines.stderr)
      return { registered, lines }
    }
    const pulled = await runEngines(`${destination}:${c.engineFile}`, sshArgsOf(sshd))
    assert.equal(pulled.registered.file, id(c.engineFile))
    assert.equal((await pulled.lines.next('ready')).source, 'remote')

    // the copy the service wrote: "ssh" empty, every endpoint on loopback; as ipengine --profile default-tunnel
    const copy = localCopy('ipcontroller-engine.json')
    const direct = await runEngines(copy, [])
    assert.equal((await direct.lines.next('ready')).direct, true)
    assert.equal(direct.registered.file, copy)
  })

  test('the controller stopped and started again (new ports, new key): the copy follows and a new Client works', async () => {
    const old = controller
    assert.ok(old)
    const seen = events.events.length
    const upSeen = upEvents.events.length
    const upReady = await upEvents.next('ready')
    await stopCluster()
    // ipcontroller removes its files when it stops: the copies go with them
    await events.next((e) => on('closed', old.clientFile)(e) && events.events.indexOf(e) >= seen)
    assert.equal(await exists(localCopy('ipcontroller-client.json')), false)
    const c = await startCluster()
    const fresh = JSON.parse(await readFile(c.clientFile, 'utf8')) as { registration: number }
    await events.next(
      (e) =>
        (on('ready', c.clientFile)(e) || on('changed', c.clientFile)(e)) &&
        events.events.indexOf(e) >= seen &&
        (e.forwards as Forward[]).some(
          (f) => f.channel === 'registration' && portOf(f.remote) === fresh.registration,
        ),
    )
    assert.deepEqual(
      events.events.slice(seen).filter((e) => e.event === 'error'),
      [],
    )
    assert.deepEqual(await applyOnEngines(localIpython, 2), [0, 1])

    // the running `up` carried the restart over, on the same local ports
    await upEvents.next((e) => e.event === 'removed' && upEvents.events.indexOf(e) >= upSeen)
    const changed = await upEvents.next(
      (e) =>
        e.event === 'changed' &&
        upEvents.events.indexOf(e) >= upSeen &&
        (e.forwards as Forward[]).some(
          (f) => f.channel === 'registration' && portOf(f.remote) === fresh.registration,
        ),
    )
    assert.deepEqual(
      (changed.forwards as Forward[]).map((f) => f.local).sort(),
      (upReady.forwards as Forward[]).map((f) => f.local).sort(),
    )
    const result = await runPython(clientApplyScript(upCopy(), 2))
    assert.equal(result.code, 0, result.stderr)
    assert.ok(up)
    up.kill('SIGTERM')
    assert.equal((await exited(up)).code, 0)
    assert.equal(await exists(upCopy()), false)
  })

  test('remote files removed: closed, local copies gone', async () => {
    const c = controller
    assert.ok(c)
    const seen = events.events.length
    const later = (path: string) => (e: Event) => on('closed', path)(e) && events.events.indexOf(e) >= seen
    await rm(c.clientFile)
    await rm(c.engineFile)
    await events.next(later(c.clientFile))
    await events.next(later(c.engineFile))
    assert.equal(await exists(localCopy('ipcontroller-client.json')), false)
    assert.equal(await exists(localCopy('ipcontroller-engine.json')), false)
  })
})
