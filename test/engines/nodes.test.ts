import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { test, type TestContext } from 'node:test'
import { promisify } from 'node:util'

import { exited } from '../support/cli.js'
import {
  processesWith,
  sshPeers as sshPeersOf,
  startNodeCluster,
  type NodeCluster,
} from '../support/index.js'
import { runPsum, startEnginesCli, stopCli, type Remote } from './helpers.js'

const run = promisify(execFile)

async function startFixture(t: TestContext): Promise<NodeCluster> {
  // Logins (OpenMPI's orted over ssh) start in a home of their own: root's rc files are not what is tested, and
  // pyenv's rehash in them takes a machine-wide lock that a session killed at the wrong moment leaves behind.
  const home = await mkdtemp(join(tmpdir(), 'ippt-nodes-home-'))
  t.after(() => rm(home, { recursive: true, force: true }))
  // A fast heart (1 s pings, dead after 3 misses): heartbeats that did not ride a node's tunnel fail in ~4 s.
  const cluster = await startNodeCluster(
    ['--HeartMonitor.period=1000', '--HeartMonitor.max_heartmonitor_misses=3'],
    { sshdConfig: `SetEnv HOME=${home}` },
  )
  t.after(() => cluster.close())
  return cluster
}

function startAcross(t: TestContext, f: NodeCluster, args: readonly string[]) {
  return startEnginesCli(t, f.remote, ['--ssh-config', '/dev/null', ...args], { env: f.env })
}

/** Peer addresses of the ssh connections the controller's sshd holds, seen in its namespace. */
const sshPeers = (remote: Remote) => sshPeersOf(remote.ns, remote.sshd)

/** Kills the controller's sshd processes serving connections from `peer` only: that node's link drops. */
async function cutConnectionsFrom(remote: Remote, peer: string): Promise<number> {
  const { stdout } = await run('ip', [
    'netns',
    'exec',
    remote.ns.name,
    'ss',
    '-Htnp',
    'state',
    'established',
    `( sport = :${String(remote.sshd.port)} )`,
  ])
  let killed = 0
  for (const line of stdout.split('\n')) {
    if (!line.includes(` ${peer}:`)) continue
    for (const m of line.matchAll(/pid=(\d+)/g)) {
      process.kill(Number(m[1]), 'SIGKILL')
      killed++
    }
  }
  return killed
}

test('engines --mpi --host across two nodes: one ssh connection per node, one MPI world', async (t) => {
  const f = await startFixture(t)
  const [a, b] = f.nodes

  await t.test(
    '2 nodes x 2 engines: Allreduce across both nodes; a node link cut and back; SIGTERM leaves nothing',
    async (t) => {
      const { child, lines } = startAcross(t, f, ['-n', '4', '--mpi', '--host', `${a.name}:2,${b.name}:2`])
      await lines.next('ready', 60_000)
      const registered = await lines.next('registered', 120_000)
      const ready = lines.events.filter((e) => e.event === 'node-ready')
      assert.ok(lines.events.indexOf(ready[1] ?? {}) < lines.events.indexOf(registered), 'nodes ready first')
      assert.deepEqual(ready.map((e) => e.host).sort(), [a.name, b.name].sort())
      for (const e of ready) assert.equal((await stat(String(e.out))).mode & 0o777, 0o600)
      const jobDir = dirname(dirname(String(ready[0]?.out)))
      const perNode = registered.nodes as Record<string, number[]>
      assert.equal(perNode[a.name]?.length, 2, JSON.stringify(perNode))
      assert.equal(perNode[b.name]?.length, 2, JSON.stringify(perNode))

      const { ids, results } = await runPsum(f.remote, 4)
      assert.deepEqual(ids, [0, 1, 2, 3])
      const n = 1000
      for (const r of results) {
        assert.equal(r.size, 4)
        assert.equal(r.total, ((4 * n - 1) * (4 * n)) / 2)
      }
      assert.deepEqual(
        [...new Set(results.map((r) => r.node))].sort(),
        [a.name, b.name].sort(),
        'ranks on both',
      )

      const peers = await sshPeers(f.remote)
      assert.equal(
        peers.filter((p) => p === a.sshd.host).length,
        1,
        `one connection from ${a.name}: ${peers.join(' ')}`,
      )
      assert.equal(
        peers.filter((p) => p === b.sshd.host).length,
        1,
        `one connection from ${b.name}: ${peers.join(' ')}`,
      )

      // A's link drops and comes back on A; B's is not touched; all four engines stay registered.
      const reconnected = lines.waitNew((e) => e.event === 'node-reconnected', 60_000)
      assert.ok((await cutConnectionsFrom(f.remote, a.sshd.host)) > 0)
      const back = await reconnected
      assert.equal(back.host, a.name)
      const reconnecting = lines.events.filter((e) => e.event === 'node-reconnecting')
      assert.ok(
        reconnecting.length > 0 && reconnecting.every((e) => e.host === a.name),
        JSON.stringify(reconnecting),
      )
      assert.deepEqual((await runPsum(f.remote, 4)).ids, [0, 1, 2, 3], 'the same engines')
      assert.doesNotMatch(f.remote.ctl.log(), /hearts stopped|unregister_engine/)
      const after = await sshPeers(f.remote)
      assert.equal(after.filter((p) => p === a.sshd.host).length, 1, after.join(' '))
      assert.equal(after.filter((p) => p === b.sshd.host).length, 1, after.join(' '))

      const status = await stopCli(child, 'SIGTERM')
      assert.equal(status.code, 0, lines.stderr.slice(-3000))
      assert.deepEqual(lines.events.find((e) => e.event === 'unregistered')?.remaining, [])
      assert.deepEqual(await processesWith(jobDir), [], 'no node tunnel or engine left on any node')
      await assert.rejects(stat(jobDir), 'the nodes removed their loopback files and the job directory')
      assert.deepEqual(await sshPeers(f.remote), [])
    },
  )

  await t.test('--hostfile: a node whose tunnel cannot connect fails the launch, named', async (t) => {
    await run('ip', ['netns', 'exec', b.ns.name, 'ip', 'route', 'del', '10.231.0.0/16'])
    const hostfile = join(f.remote.sshd.dir, 'hostfile')
    await writeFile(hostfile, `# OpenMPI's syntax\n${a.name} slots=1\n\n${b.name} slots=1 # the broken one\n`)
    const { child, lines } = startAcross(t, f, ['-n', '2', '--mpi', '--hostfile', hostfile])
    const status = await exited(child)
    assert.equal(status.code, 1, lines.stderr.slice(-3000))
    const error = lines.events.find((e) => e.event === 'error')
    assert.equal(error?.code, 'E_NODE', JSON.stringify(error))
    assert.match(String(error.message), new RegExp(`node ${b.name}`))
    assert.deepEqual(await processesWith('ipp-tunnel-job-'), [])
  })
})
