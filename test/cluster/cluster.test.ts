import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test, type TestContext } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'

import { JsonLines, exited, runCli, spawnCli } from '../support/cli.js'
import {
  createNetns,
  processesWith,
  remoteClusterArgs,
  spawnClusterStart,
  startSshd,
  type Netns,
  type Sshd,
} from '../support/index.js'
import { runPython } from '../support/ipp.js'

/** A Client on the copy: where each engine runs (its network namespace) and, with mpi, its rank and world. */
const USE = String.raw`
import json, sys
import ipyparallel as ipp
rc = ipp.Client(profile='default-tunnel', timeout=60)
rc.wait_for_engines(int(sys.argv[1]), timeout=60)
def where():
    import os
    return os.readlink('/proc/self/ns/net')
seen = {'where': sorted(set(rc[:].apply_sync(where)))}
if sys.argv[2] == 'mpi':
    def world():
        from mpi4py import MPI
        return MPI.COMM_WORLD.allreduce(MPI.COMM_WORLD.rank + 1)
    seen['psum'] = rc[:].apply_sync(world)
print(json.dumps(seen))
rc.close()
`

describe('cluster start/attach/stop/list: a whole ipyparallel cluster on the ssh server over one link', () => {
  let ns: Netns
  let sshd: Sshd
  let root: string
  let env: NodeJS.ProcessEnv
  let nsNet: string

  before(async () => {
    ns = await createNetns()
    sshd = await startSshd({ netns: ns, extraConfig: 'Subsystem sftp internal-sftp' })
    root = await mkdtemp(join(tmpdir(), 'ippt-cluster-'))
    env = { IPYTHONDIR: join(root, 'local-ipython'), SSH_AUTH_SOCK: '' }
    nsNet = `net:[${(await stat(`/run/netns/${ns.name}`)).ino}]`
  })
  after(async () => {
    await sshd.close()
    await ns.close()
    await rm(root, { recursive: true, force: true })
  })

  /** The destination, its ssh options, the remote python and directories of every command here. */
  function remoteArgs(): string[] {
    return remoteClusterArgs(sshd, root)
  }

  function startCluster(t: TestContext, extra: readonly string[] = []) {
    const started = spawnClusterStart(remoteArgs(), extra, env)
    const { child } = started
    // a test that fails midway stops its cluster all the same (the next test starts one of the same profile)
    t.after(async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGINT')
      await exited(child)
    })
    return started
  }

  /** Nothing of the cluster left: no process, no state, no connection file there, no copy here. */
  async function assertNothingLeft(): Promise<void> {
    for (let i = 0; (await processesWith(join(root, 'remote'))).length > 0; i++) {
      assert.ok(i < 200, 'a remote process outlived the cluster')
      await sleep(50)
    }
    assert.deepEqual(await readdir(join(root, 'remote')).catch(() => []), [])
    const security = join(root, 'remote-ipython', 'profile_default', 'security')
    assert.deepEqual(
      (await readdir(security).catch(() => [])).filter((f) => f.startsWith('ipcontroller-')),
      [],
    )
    const copies = join(root, 'local-ipython', 'profile_default-tunnel', 'security')
    assert.deepEqual(await readdir(copies).catch(() => []), [])
  }

  test('start -n 2 --listen unix: a Client on the copy runs work on engines in the namespace; list shows it; SIGINT leaves nothing', async (t) => {
    const { child, events } = startCluster(t, ['-n', '2', '--listen', 'unix'])
    const registered = await events.next(
      (e) => (e.event === 'registered' && e.count === 2) || e.event === 'error',
      120_000,
    )
    assert.equal(registered.event, 'registered', JSON.stringify(events.events) + events.stderr)
    // one heartbeat a second: the hub lists an engine only at its first beat after the engine's first answer
    const beating = await processesWith('--HeartMonitor.period=1000')
    assert.ok(beating.length > 0, 'the controller beats once a second')
    const copy = await events.next('copy')
    assert.equal(
      copy.out,
      join(root, 'local-ipython', 'profile_default-tunnel', 'security', 'ipcontroller-client.json'),
    )

    // private unix sockets here, not loopback ports any local user could reach
    const written = await readFile(copy.out, 'utf8')
    assert.match(written, /ipc:\/\//u)
    assert.doesNotMatch(written, /tcp:\/\//u)
    const used = await runPython(USE, { args: ['2', 'login'], env, timeoutMs: 120_000 })
    assert.equal(used.code, 0, used.stderr)
    assert.deepEqual(JSON.parse(used.stdout.trim().split('\n').at(-1) ?? ''), { where: [nsNet] })

    const listed = await runCli(['cluster', 'list', ...remoteArgs(), '--json'], env)
    assert.equal(listed.code, 0, listed.stderr)
    const rows = (
      JSON.parse(listed.stdout) as { clusters: { profile: string; engines: number; state: string }[] }
    ).clusters
    assert.deepEqual(
      rows.map((r) => [r.profile, r.state, r.engines]),
      [['default', 'running', 2]],
    )

    child.kill('SIGINT')
    assert.deepEqual(await exited(child), { code: 0, signal: null })
    await assertNothingLeft()
  })

  test('attach after the starting command was SIGKILLed follows the same controller; detach leaves it; stop ends it', async (t) => {
    const { child, events } = startCluster(t, ['-n', '2'])
    await events.next((e) => e.event === 'registered' && e.count === 2, 120_000)
    const controller = await events.next('controller')
    child.kill('SIGKILL')
    await exited(child)

    const attached = spawnCli(['cluster', 'attach', ...remoteArgs(), '--json'], env)
    const seen = new JsonLines(attached)
    const again = await seen.next((e) => e.event === 'controller' || e.event === 'error', 60_000)
    assert.equal(again.pid, controller.pid, JSON.stringify(seen.events) + seen.stderr)
    await seen.next((e) => e.event === 'registered' && e.count === 2, 60_000)
    const used = await runPython(USE, { args: ['2', 'login'], env, timeoutMs: 120_000 })
    assert.equal(used.code, 0, used.stderr)
    attached.kill('SIGINT')
    assert.deepEqual(await exited(attached), { code: 0, signal: null })

    const listed = await runCli(['cluster', 'list', ...remoteArgs(), '--json'], env)
    const rows = (JSON.parse(listed.stdout) as { clusters: { controllerPid: number; state: string }[] })
      .clusters
    assert.deepEqual(
      rows.map((r) => [r.controllerPid, r.state]),
      [[controller.pid, 'running']],
      'detaching left the cluster running',
    )
    const stopped = await runCli(['cluster', 'stop', ...remoteArgs()], env)
    assert.equal(stopped.code, 0, stopped.stderr)
    await assertNothingLeft()
    const none = await runCli(['cluster', 'stop', ...remoteArgs()], env)
    assert.equal(none.code, 1, none.stderr)
    assert.match(none.stderr, /no cluster of profile default/u)
  })

  test('--engines mpi: one mpiexec world of 2 ranks (psum through mpi4py)', async (t) => {
    const { child, events } = startCluster(t, ['-n', '2', '--engines', 'mpi'])
    const registered = await events.next(
      (e) => (e.event === 'registered' && e.count === 2) || e.event === 'error',
      120_000,
    )
    assert.equal(registered.event, 'registered', JSON.stringify(events.events) + events.stderr)
    const used = await runPython(USE, { args: ['2', 'mpi'], env, timeoutMs: 120_000 })
    assert.equal(used.code, 0, used.stderr)
    assert.deepEqual(JSON.parse(used.stdout.trim().split('\n').at(-1) ?? ''), {
      where: [nsNet],
      psum: [3, 3],
    })
    child.kill('SIGTERM')
    assert.deepEqual(await exited(child), { code: 0, signal: null })
    await assertNothingLeft()
  })

  test('--persist: with the starting command SIGKILLed, the cluster ends on the server alone', async (t) => {
    const { child, events } = startCluster(t, ['-n', '1', '--persist', '5'])
    await events.next((e) => e.event === 'registered' && e.count === 1, 120_000)
    child.kill('SIGKILL')
    await exited(child)
    for (let i = 0; (await processesWith(join(root, 'remote'))).length > 0; i++) {
      assert.ok(i < 600, 'the cluster outlived its --persist')
      await sleep(100)
    }
    const listed = await runCli(['cluster', 'list', ...remoteArgs(), '--json'], env)
    const rows = (JSON.parse(listed.stdout) as { clusters: { state: string }[] }).clusters
    assert.ok(
      rows.every((r) => r.state !== 'running'),
      listed.stdout,
    )
    // what the lease left (its state, the controller's files) goes with the next stop or start; the copy the
    // killed command could not remove is the next start's to replace
    await runCli(['cluster', 'stop', ...remoteArgs()], env)
    await rm(join(root, 'local-ipython', 'profile_default-tunnel'), { recursive: true, force: true })
  })

  test('a local python with another ipyparallel is refused before anything starts, naming both versions', async () => {
    // a real python whose import finds an older ipyparallel first on PYTHONPATH (no metadata beside it: imported)
    const shadow = join(root, 'old-ipyparallel')
    await mkdir(join(shadow, 'ipyparallel'), { recursive: true })
    await writeFile(join(shadow, 'ipyparallel', '__init__.py'), "__version__ = '6.3.0'\n")
    const old = join(root, 'old-python')
    await writeFile(old, `#!/bin/sh\nPYTHONPATH=${shadow} exec /usr/bin/python3 "$@"\n`, {
      mode: 0o755,
    })
    const result = await runCli(['cluster', 'start', ...remoteArgs(), '--local-python', old, '-n', '1'], env)
    assert.equal(result.code, 1, result.stderr)
    assert.match(result.stderr, /ipyparallel 7\.1\.\d+ there, 6\.3\.0 here/u)
    assert.equal(result.stderr.trim().split('\n').length, 1, result.stderr)
    await assertNothingLeft()
  })

  test('a profile name that is not a plain word is refused before anything starts (exit 2)', async () => {
    const result = await runCli(['cluster', 'start', ...remoteArgs(), '--profile', '../x'], env)
    assert.equal(result.code, 2, result.stderr)
    assert.match(result.stderr, /--profile "\.\.\/x"/u)
  })
})
