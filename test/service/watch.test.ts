import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { copyFile, mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { exited, JsonLines, runCli, spawnCli } from '../support/cli.js'
import {
  canConnect,
  createNetns,
  portOf,
  sshArgsOf,
  startSshd,
  type Netns,
  type Sshd,
  exists,
} from '../support/index.js'
import {
  runPython,
  startController,
  startEngines,
  stopProcess,
  type Controller,
  type Engines,
} from '../support/ipp.js'

interface Forward {
  channel: string
  local: string
  remote: string
}
type Event = Record<string, unknown>

/** The real ipyparallel.Client, by file or by profile name, runs apply_sync on every engine. */
async function applyOnEngines(
  how: { file: string } | { profile: string; ipythonDir: string },
  engines: number,
): Promise<number[]> {
  const open =
    'file' in how
      ? `ipp.Client(${JSON.stringify(how.file)}, timeout=30)`
      : `ipp.Client(profile=${JSON.stringify(how.profile)}, timeout=30)`
  const code = `
import json, os, ipyparallel as ipp
c = ${open}
c.wait_for_engines(${engines}, timeout=30)
r = c[:].apply_sync(os.getpid)
print(json.dumps(sorted(c.ids)))
c.close()
`
  const env = 'ipythonDir' in how ? { IPYTHONDIR: how.ipythonDir } : {}
  const result = await runPython(code, { env })
  assert.equal(result.code, 0, `ipyparallel.Client failed:\n${result.stderr}`)
  return JSON.parse(result.stdout) as number[]
}

const forFile = (name: string, file: string) => (e: Event) => e.event === name && e.file === file

describe('ipp-tunnel watch against sshd + ipcontroller in their own network namespace', () => {
  let ns: Netns
  let sshd: Sshd
  let controller: Controller
  let engines: Engines
  let ipythonDir: string
  /** A second watched directory, where the tests drop copies of client files. */
  let dropDir: string
  let runtimeDir: string
  let env: NodeJS.ProcessEnv
  let args: string[]
  let watch: ChildProcess
  let events: JsonLines

  const tunnelDir = () => join(ipythonDir, 'profile_default-tunnel', 'security')
  const profileCopy = () => join(tunnelDir(), 'ipcontroller-client.json')

  before(async () => {
    ns = await createNetns()
    sshd = await startSshd({ netns: ns })
    ipythonDir = await mkdtemp(join(tmpdir(), 'ippt-watch-ipython-'))
    dropDir = await mkdtemp(join(tmpdir(), 'ippt-watch-drop-'))
    runtimeDir = await mkdtemp(join(tmpdir(), 'ippt-watch-run-'))
    const ssh = `${sshd.user}@${sshd.host}:${sshd.port}`
    controller = await startController({ netns: ns, ssh, ipythonDir })
    engines = startEngines(controller.engineFile, 2, { netns: ns })
    env = { IPYTHONDIR: ipythonDir, IPP_TUNNEL_RUNTIME_DIR: runtimeDir }
    // engines run beside the controller, so the engine file names no ssh server: --ssh covers it
    args = ['--ssh', ssh, ...sshArgsOf(sshd)]
    // the `default` profile of $IPYTHONDIR (what a bare `watch` follows), plus one more directory
    watch = spawnCli(['watch', '--json', '--profile', 'default', '--dir', dropDir, ...args], env)
    events = new JsonLines(watch)
  })
  after(async () => {
    await stopProcess(watch, 'SIGKILL')
    await engines.close()
    await controller.close()
    await sshd.close()
    await ns.close()
    for (const dir of [ipythonDir, dropDir, `${dropDir}-tunnel`, runtimeDir]) {
      await rm(dir, { recursive: true, force: true })
    }
  })

  test('the controller’s files are taken at start; ipyparallel.Client(profile="default-tunnel") works', async () => {
    const watching = await events.next('watching')
    assert.deepEqual(watching.dirs, [join(ipythonDir, 'profile_default', 'security'), dropDir])
    const ready = await events.next(forFile('ready', controller.clientFile))
    assert.equal(ready.out, profileCopy())
    await events.next(forFile('ready', controller.engineFile))
    const copy = JSON.parse(await readFile(profileCopy(), 'utf8')) as Record<string, unknown>
    assert.equal(copy.ssh, '')
    assert.equal(copy.location, hostname())
    const forwards = ready.forwards as Forward[]
    assert.equal(copy.registration, portOf(forwards.find((f) => f.channel === 'registration')?.local ?? ''))
    assert.equal((await stat(profileCopy())).mode & 0o777, 0o600)
    assert.deepEqual(await applyOnEngines({ profile: 'default-tunnel', ipythonDir }, 2), [0, 1])
    assert.equal(await sshd.sessionCount(), 1, 'both files ride one SSH connection')
  })

  test('a truncated file and a garbage file get error events; a good file beside them keeps working', async () => {
    const text = await readFile(controller.clientFile, 'utf8')
    const good = join(dropDir, 'ipcontroller-good-client.json')
    const truncated = join(dropDir, 'ipcontroller-cut-client.json')
    const garbage = join(dropDir, 'ipcontroller-junk-client.json')
    await writeFile(join(dropDir, 'notes.txt'), 'not a connection file')
    await writeFile(truncated, text.slice(0, Math.floor(text.length / 2)))
    await writeFile(garbage, '\u0000\u0001 this is not json {{{')
    await writeFile(good, text)
    const cutError = await events.next(forFile('error', truncated))
    assert.equal(cutError.code, 'E_CONNFILE_JSON')
    assert.ok(String(cutError.message).includes(truncated), String(cutError.message))
    const junkError = await events.next(forFile('error', garbage))
    assert.equal(junkError.code, 'E_CONNFILE_JSON')
    const ready = await events.next(forFile('ready', good))
    assert.equal(ready.out, join(`${dropDir}-tunnel`, 'ipcontroller-good-client.json'))
    assert.deepEqual(await applyOnEngines({ file: ready.out }, 2), [0, 1])
    assert.equal(events.events.filter((e) => e.file === join(dropDir, 'notes.txt')).length, 0)
    assert.equal(await exists(join(`${dropDir}-tunnel`, 'ipcontroller-cut-client.json')), false)

    const status = await runCli(['status', '--json'], env)
    const files = (
      JSON.parse(status.stdout) as { files: { file: string; state: string; lastError?: { code: string } }[] }
    ).files
    const junk = files.find((f) => f.file === garbage)
    assert.equal(junk?.state, 'error')
    assert.equal(junk.lastError?.code, 'E_CONNFILE_JSON')
    assert.equal(files.find((f) => f.file === good)?.state, 'ready')
    const human = await runCli(['status'], env)
    assert.match(human.stdout, /^ipcontroller-junk-client\.json: error, no link, 0 reconnects$/m)
    assert.match(human.stdout, /^ {2}last error \d\d:\d\d:\d\d E_CONNFILE_JSON: /m)

    // a bad file is retried when it changes: completing it makes it ready
    await writeFile(truncated, text)
    await events.next(forFile('ready', truncated))
    await rm(truncated)
    await rm(garbage)
    await events.next(forFile('closed', truncated))
  })

  test('status shows each file, its destination, link, forwards, connections, bytes and last error', async () => {
    const result = await runCli(['status', '--json'], env)
    assert.equal(result.code, 0, result.stderr)
    const report = JSON.parse(result.stdout) as {
      links: number
      files: {
        file: string
        state: string
        destination: string
        link: string
        forwards: { local: { port: number }; bytesIn: number; bytesOut: number; accepted: number }[]
      }[]
    }
    assert.equal(report.links, 1)
    const client = report.files.find((f) => f.file === controller.clientFile)
    assert.ok(client, JSON.stringify(report))
    assert.equal(client.state, 'ready')
    assert.equal(client.link, 'up')
    assert.equal(client.destination, `${sshd.user}@${sshd.host}:${sshd.port}`)
    assert.equal(client.forwards.length, 7)
    assert.ok(
      client.forwards.reduce((n, f) => n + f.bytesIn + f.bytesOut, 0) > 0,
      'the Client’s bytes counted',
    )
    assert.doesNotMatch(
      result.stdout,
      new RegExp((JSON.parse(await readFile(controller.clientFile, 'utf8')) as { key: string }).key),
    )

    const human = await runCli(['status'], env)
    assert.equal(human.code, 0)
    assert.match(
      human.stdout,
      /CHANNEL\s+LOCAL\s+REMOTE \(from ssh server\)\s+OPEN\s+FROM REMOTE\s+TO REMOTE/,
    )
    assert.ok(human.stdout.includes(`file  ${controller.clientFile}`), human.stdout)
    assert.match(human.stdout, /registration\s+127\.0\.0\.1:\d+\s+127\.0\.0\.1:\d+\s+\d+/)
  })

  test('a restarted controller (new ports, new key): the copy follows and a new Client works', async () => {
    const good = join(dropDir, 'ipcontroller-good-client.json')
    const goodReady = await events.next(forFile('ready', good))
    const oldKey = (JSON.parse(await readFile(controller.clientFile, 'utf8')) as { key: string }).key
    const seen = events.events.length
    await engines.close()
    await controller.close()
    const ssh = `${sshd.user}@${sshd.host}:${sshd.port}`
    controller = await startController({ netns: ns, ssh, ipythonDir })
    engines = startEngines(controller.engineFile, 2, { netns: ns })
    const newText = await readFile(controller.clientFile, 'utf8')
    const fresh = JSON.parse(newText) as { key: string; registration: number }
    assert.notEqual(fresh.key, oldKey)
    const isNew = (e: Event) =>
      (e.event === 'ready' || e.event === 'changed') &&
      e.file === controller.clientFile &&
      events.events.indexOf(e) >= seen &&
      (e.forwards as Forward[]).some(
        (f) => f.channel === 'registration' && portOf(f.remote) === fresh.registration,
      )
    await events.next(isNew)
    // ipcontroller writes in place and before its sockets listen: waited for, not reported
    assert.deepEqual(
      events.events.slice(seen).filter((e) => e.event === 'error'),
      [],
    )
    const copy = JSON.parse(await readFile(profileCopy(), 'utf8')) as { key: string }
    assert.equal(copy.key, fresh.key)
    assert.deepEqual(await applyOnEngines({ profile: 'default-tunnel', ipythonDir }, 2), [0, 1])

    // a file rewritten in place, as ipcontroller writes: the tunnel follows on the same local ports
    await writeFile(good, newText)
    const changed = await events.next(forFile('changed', good))
    assert.deepEqual(
      (changed.forwards as Forward[]).map((f) => f.local).sort(),
      (goodReady.forwards as Forward[]).map((f) => f.local).sort(),
    )
    const goodCopy = JSON.parse(await readFile(String(changed.out), 'utf8')) as { key: string }
    assert.equal(goodCopy.key, fresh.key)
    assert.deepEqual(await applyOnEngines({ file: String(changed.out) }, 2), [0, 1])
  })

  test('50 files dropped at once all become ready over one SSH connection, and status shows them', async () => {
    const text = await readFile(controller.clientFile, 'utf8')
    const staging = await mkdtemp(join(tmpdir(), 'ippt-watch-stage-'))
    const names = Array.from({ length: 50 }, (_, i) => `ipcontroller-many${i}-client.json`)
    await Promise.all(names.map((n) => writeFile(join(staging, n), text)))
    await Promise.all(names.map((n) => rename(join(staging, n), join(dropDir, n))))
    await rm(staging, { recursive: true })
    await Promise.all(names.map((n) => events.next(forFile('ready', join(dropDir, n)), 60_000)))
    assert.equal(await sshd.sessionCount(), 1, 'one SSH connection for every file')
    const result = await runCli(['status', '--json'], env)
    const report = JSON.parse(result.stdout) as { links: number; files: { file: string; state: string }[] }
    assert.equal(report.links, 1)
    for (const n of names) {
      assert.equal(report.files.find((f) => f.file === join(dropDir, n))?.state, 'ready', n)
    }
    await Promise.all(names.map((n) => rm(join(dropDir, n))))
    await Promise.all(names.map((n) => events.next(forFile('closed', join(dropDir, n)))))
  })

  test('a dropped ssh connection: one reconnecting and one reconnected event for the link, copies unchanged', async () => {
    const seen = events.events.length
    const before = await readFile(profileCopy(), 'utf8')
    await sshd.killConnections()
    const reconnecting = await events.next(
      (e) => e.event === 'reconnecting' && events.events.indexOf(e) >= seen,
    )
    assert.equal(reconnecting.destination, `${sshd.user}@${sshd.host}:${sshd.port}`)
    assert.ok((reconnecting.files as string[]).includes(controller.clientFile))
    await events.next((e) => e.event === 'reconnected' && events.events.indexOf(e) >= seen)
    const linkEvents = events.events.slice(seen).filter((e) => e.event === 'reconnected')
    assert.equal(linkEvents.length, 1, 'one event per link, not per file')
    assert.equal(await readFile(profileCopy(), 'utf8'), before)
    assert.deepEqual(await applyOnEngines({ profile: 'default-tunnel', ipythonDir }, 2), [0, 1])
    assert.equal(await sshd.sessionCount(), 1)
  })

  test('a deleted file: copy removed, ports closed; others keep going', async () => {
    const good = join(dropDir, 'ipcontroller-good-client.json')
    const ready = [...events.events].reverse().find((e) => e.file === good && e.event === 'changed')
    assert.ok(ready)
    const ports = (ready.forwards as Forward[]).map((f) => portOf(f.local))
    for (const port of ports) assert.equal(await canConnect(port), true)
    await rm(good)
    await events.next(forFile('closed', good))
    assert.equal(await exists(String(ready.out)), false, 'the copy is removed')
    for (const port of ports) assert.equal(await canConnect(port), false, `port ${port} closed`)
    assert.equal(await exists(profileCopy()), true, 'the other copies stay')
  })

  test('SIGTERM closes everything, removes every copy, exit 0', async () => {
    const closing = events.events.length
    watch.kill('SIGTERM')
    assert.deepEqual(await exited(watch), { code: 0, signal: null })
    const closed = events.events.slice(closing).filter((e) => e.event === 'closed')
    assert.ok(closed.some((e) => e.file === controller.clientFile))
    assert.equal(await exists(profileCopy()), false)
    assert.equal(await exists(join(tunnelDir(), 'ipcontroller-engine.json')), false)
    assert.equal(await exists(join(runtimeDir, 'service.sock')), false)
    const status = await runCli(['status'], env)
    assert.equal(status.code, 3)
    assert.match(status.stderr, /no ipp-tunnel service is running/)
  })

  test('after a crash: the stale socket does not block a new service, and leftover copies are removed', async () => {
    const crashed = spawnCli(['watch', '--json', ...args], env)
    const crashedEvents = new JsonLines(crashed)
    await crashedEvents.next(forFile('ready', controller.clientFile))
    // a second service on the same runtime dir is refused while the first lives
    const second = await runCli(['watch', ...args], env)
    assert.equal(second.code, 2)
    assert.match(second.stderr, /already runs/)
    crashed.kill('SIGKILL')
    await exited(crashed)
    assert.equal(await exists(profileCopy()), true, 'a crash leaves the copy')
    assert.equal(await exists(join(runtimeDir, 'service.sock')), true, 'and the socket file')
    assert.equal((await runCli(['status'], env)).code, 3, 'nothing answers on a stale socket')

    // the source goes away while no service runs: the next start removes the orphaned copy
    const keep = join(dropDir, 'kept.json')
    await copyFile(controller.clientFile, keep)
    await rm(controller.clientFile)
    watch = spawnCli(['watch', '--json', ...args], env)
    events = new JsonLines(watch)
    await events.next(forFile('ready', controller.engineFile))
    assert.equal(await exists(profileCopy()), false, 'the leftover copy is gone')
    const status = await runCli(['status', '--json'], env)
    assert.equal(status.code, 0, status.stderr)
    await mkdir(join(ipythonDir, 'profile_default', 'security'), { recursive: true })
    await copyFile(keep, controller.clientFile)
    await events.next(forFile('ready', controller.clientFile))
    watch.kill('SIGINT')
    assert.equal((await exited(watch)).code, 0)
  })
})
