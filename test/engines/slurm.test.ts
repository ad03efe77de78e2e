import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { chmod, chown, mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { after, before, test, type TestContext } from 'node:test'
import { promisify } from 'node:util'

import { exited } from '../support/cli.js'
import { runPython } from '../support/ipp.js'
import { joinClusterNetwork, processesWith, sshPeers } from '../support/index.js'
import { holdAllocation, startSlurm, type Slurm } from '../support/slurm.js'
import { runPsum, startEnginesCli, startRemote, stopCli, type Remote } from './helpers.js'

const run = promisify(execFile)

const HOSTS = `
import json, ipyparallel as ipp
c = ipp.Client(%FILE%, timeout=30)
c.wait_for_engines(%N%, timeout=60)
def host():
    import socket
    return socket.gethostname()
print(json.dumps({"ids": sorted(c.ids), "hosts": c[:].apply_sync(host)}))
c.close()
`

/** Which engines the controller lists once `n` registered, and the host each runs on (asked in its namespace). */
async function enginesSeen(remote: Remote, n: number): Promise<{ ids: number[]; hosts: string[] }> {
  const script = HOSTS.replace('%FILE%', JSON.stringify(remote.ctl.clientFile)).replace('%N%', String(n))
  const result = await runPython(script, { netns: remote.ns, timeoutMs: 60_000 })
  assert.equal(result.code, 0, result.stderr)
  return JSON.parse(result.stdout) as { ids: number[]; hosts: string[] }
}

interface Fixture {
  readonly remote: Remote
  readonly slurm: Slurm
  /** OpenMPI reaches the ranks on the nodes' network (as a site's MCA settings would say). */
  readonly env: NodeJS.ProcessEnv
}

function startEngines(t: TestContext, f: Fixture, args: readonly string[], env: NodeJS.ProcessEnv) {
  return startEnginesCli(t, f.remote, ['--ssh-config', '/dev/null', ...args], { env: { ...f.env, ...env } })
}

/** After SIGTERM: nothing of ours on any node, and the allocation has no step left. */
async function assertNothingLeft(f: Fixture, jobDir: string, job: string): Promise<void> {
  assert.deepEqual(await processesWith(jobDir), [], 'no node tunnel or engine left on any node')
  await assert.rejects(
    stat(jobDir),
    `${jobDir}: the nodes removed their loopback files and the job directory`,
  )
  assert.deepEqual(await sshPeers(f.remote.ns, f.remote.sshd), [], 'no ssh connection left')
  const { stdout } = await run('squeue', ['-h', '-s', '-j', job], {
    env: { ...process.env, ...f.slurm.env },
    timeout: 10_000,
  })
  assert.equal(stdout.trim(), '', 'no job step left running')
}

/**
 * One cluster for the tests of this file (each test has its own time limit): a controller in a namespace of its
 * own reachable only through its sshd, and a Slurm cluster of two nodes, each slurmd in a network and UTS
 * namespace of its own, all on one cluster network.
 */
const cleanups: (() => Promise<void>)[] = []
let fixture: (Fixture & { names: string[]; addrs: string[] }) | undefined

before(async () => {
  // startRemote registers its cleanup with whatever has an after() (as lifecycle.test.ts does).
  const remote = await startRemote({
    after: (fn: () => Promise<void>) => cleanups.push(fn),
  } as unknown as TestContext)
  const slurm = await startSlurm({ nodes: 2 })
  cleanups.push(() => slurm.close())
  await joinClusterNetwork(remote.ns)
  fixture = {
    remote,
    slurm,
    env: {
      ...slurm.env,
      OMPI_MCA_oob_tcp_if_include: '10.231.0.0/16',
      OMPI_MCA_btl_tcp_if_include: '10.231.0.0/16',
      OMPI_MCA_btl: 'self,tcp',
    },
    names: slurm.nodes.map((n) => n.name).sort(),
    addrs: slurm.nodes.map((n) => n.ns.nsAddr),
  }
})

after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup()
})

function setUp() {
  if (fixture === undefined) throw new Error('the Slurm cluster did not start (see before)')
  return { ...fixture, f: fixture }
}

test('--slurm in salloc -N2: a node tunnel per node, 2 engines on each; SIGTERM cleans up', async (t) => {
  const { f, slurm, remote, names, addrs } = setUp()
  const alloc = await holdAllocation(slurm, 2, 4)
  t.after(() => alloc.close())
  const { child, lines } = startEngines(t, f, ['-n', '4', '--slurm'], alloc.env)
  const registered = await lines.next('registered', 120_000)
  const ready = lines.events.filter((e) => e.event === 'node-ready')
  assert.deepEqual(ready.map((e) => e.host).sort(), names, JSON.stringify(ready))
  const perNode = registered.nodes as Record<string, number[]>
  assert.deepEqual(Object.keys(perNode).sort(), names, JSON.stringify(registered))
  for (const name of names) assert.equal(perNode[name]?.length, 2, JSON.stringify(perNode))
  const jobDir = dirname(dirname(String(ready[0]?.out)))

  const seen = await enginesSeen(remote, 4)
  assert.deepEqual(
    seen.ids,
    [...(registered.ids as number[])].sort((a, b) => a - b),
  )
  assert.deepEqual([...new Set(seen.hosts)].sort(), names, 'engines run on both nodes')
  // One connection from each node, and the launching command's own (it asks the hub about registration).
  const peers = await sshPeers(remote.ns, remote.sshd)
  for (const addr of addrs) assert.equal(peers.filter((p) => p === addr).length, 1, peers.join(' '))
  assert.equal(peers.length, 3, peers.join(' '))

  const status = await stopCli(child, 'SIGTERM')
  assert.equal(status.code, 0, lines.stderr.slice(-3000))
  assert.deepEqual(lines.events.find((e) => e.event === 'unregistered')?.remaining, [])
  await assertNothingLeft(f, jobDir, alloc.job)
})

test('--slurm --mpi: one mpiexec across the allocation, Allreduce across both nodes', async (t) => {
  const { f, slurm, remote, names } = setUp()
  const alloc = await holdAllocation(slurm, 2, 4)
  t.after(() => alloc.close())
  const { child, lines } = startEngines(t, f, ['-n', '4', '--slurm', '--mpi'], alloc.env)
  const registered = await lines.next('registered', 120_000)
  const perNode = registered.nodes as Record<string, number[]>
  for (const name of names) assert.equal(perNode[name]?.length, 2, JSON.stringify(registered))
  const ready = lines.events.filter((e) => e.event === 'node-ready')
  const jobDir = dirname(dirname(String(ready[0]?.out)))

  const { ids, results } = await runPsum(remote, 4)
  // With --mpi each engine asks for its rank as its id.
  assert.deepEqual(ids, [0, 1, 2, 3])
  const n = 1000
  for (const r of results) {
    assert.equal(r.size, 4)
    assert.equal(r.total, ((4 * n - 1) * (4 * n)) / 2)
  }
  assert.deepEqual([...new Set(results.map((r) => r.node))].sort(), names, 'ranks on both nodes')

  const status = await stopCli(child, 'SIGTERM')
  assert.equal(status.code, 0, lines.stderr.slice(-3000))
  assert.deepEqual(lines.events.find((e) => e.event === 'unregistered')?.remaining, [])
  await assertNothingLeft(f, jobDir, alloc.job)
})

test('--sbatch -N2: submitted, an engine registered on each node, SIGTERM stops the job', async (t) => {
  const { f, slurm, remote, names } = setUp()
  const outDir = await mkdtemp(join(tmpdir(), 'ippt-sbatch-'))
  t.after(() => rm(outDir, { recursive: true, force: true }))
  const { child, lines } = startEngines(
    t,
    f,
    ['-n', '2', '--sbatch', '-N', '2', '--sbatch-output', join(outDir, 'job-%j.out'), '--', '--time=10'],
    {},
  )
  const submitted = await lines.next('submitted', 60_000)
  const job = String(submitted.job)
  assert.match(job, /^\d+$/)
  t.after(() =>
    run('scancel', [job], { env: { ...process.env, ...slurm.env }, timeout: 10_000 }).catch(() => undefined),
  )
  const registered = await lines.next('registered', 150_000)
  assert.equal(registered.job, job)
  const perNode = registered.nodes as Record<string, number[]>
  for (const name of names) assert.equal(perNode[name]?.length, 1, JSON.stringify(registered))
  const ready = lines.events.filter((e) => e.event === 'node-ready')
  assert.deepEqual(ready.map((e) => e.host).sort(), names)
  assert.ok(
    ready.every((e) => e.job === job),
    "the job's events come with its id",
  )
  const jobDir = dirname(dirname(String(ready[0]?.out)))

  const seen = await enginesSeen(remote, 2)
  // The controller is shared by the tests of this file: ids go on from the earlier tests' engines.
  assert.deepEqual(
    seen.ids,
    [...(registered.ids as number[])].sort((a, b) => a - b),
  )
  assert.deepEqual([...new Set(seen.hosts)].sort(), names, 'engines run on both nodes')

  const status = await stopCli(child, 'SIGTERM')
  assert.equal(status.code, 0, lines.stderr.slice(-3000))
  assert.deepEqual(lines.events.find((e) => e.event === 'unregistered')?.remaining, [])
  // ipp-tunnel in the batch step stopped everything in order: the job completed.
  const ended = lines.events.find((e) => e.event === 'job-ended')
  assert.equal(ended?.job, job, JSON.stringify(lines.events.slice(-5)))
  assert.equal(ended.state, 'COMPLETED', JSON.stringify(ended))
  const { stdout } = await run('squeue', ['-h', '-j', job], {
    env: { ...process.env, ...slurm.env },
    timeout: 10_000,
  })
  assert.equal(stdout.trim(), '', 'the job is gone')
  await assertNothingLeft(f, jobDir, job)
})

test('--sbatch --no-follow prints the job id and returns; following a held job, SIGTERM cancels it', async (t) => {
  const { f, slurm } = setUp()
  const squeue = async (job: string) =>
    (
      await run('squeue', ['-h', '-j', job, '-o', '%T'], {
        env: { ...process.env, ...slurm.env },
        timeout: 10_000,
      })
    ).stdout.trim()
  const jobs: string[] = []
  t.after(async () => {
    for (const job of jobs) {
      await run('scancel', [job], { env: { ...process.env, ...slurm.env }, timeout: 10_000 }).catch(
        () => undefined,
      )
    }
  })
  const outDir = await mkdtemp(join(tmpdir(), 'ippt-sbatch-'))
  t.after(() => rm(outDir, { recursive: true, force: true }))
  const output = join(outDir, 'job-%j.out')

  const submitOnly = startEngines(
    t,
    f,
    ['-n', '2', '--sbatch', '--no-follow', '--sbatch-output', output, '--', '--hold'],
    {},
  )
  const status = await exited(submitOnly.child)
  assert.equal(status.code, 0, submitOnly.lines.stderr)
  const submitted = submitOnly.lines.events.find((e) => e.event === 'submitted')
  const held = String(submitted?.job)
  jobs.push(held)
  assert.equal(submitted?.output, output.replace('%j', held))
  assert.equal(await squeue(held), 'PENDING')

  const following = startEngines(t, f, ['-n', '2', '--sbatch', '--sbatch-output', output, '--', '--hold'], {})
  const pending = await following.lines.next('job-state', 60_000)
  const job = String(pending.job)
  jobs.push(job)
  assert.equal(pending.state, 'PENDING')
  const stopped = await stopCli(following.child, 'SIGTERM')
  assert.equal(stopped.code, 0, following.lines.stderr)
  assert.equal(following.lines.events.find((e) => e.event === 'job-ended')?.state, 'CANCELLED')
  assert.equal(await squeue(job), '', 'the job left the queue')
  assert.equal(await squeue(held), 'PENDING', 'only the followed job was cancelled')
})

test('--sbatch follows only our own output file: one planted by another uid is refused and the job cancelled; a directory others can write without the sticky bit is refused before submitting', async (t) => {
  const { f, slurm } = setUp()
  const jobs: string[] = []
  t.after(async () => {
    for (const job of jobs) {
      await run('scancel', [job], { env: { ...process.env, ...slurm.env }, timeout: 10_000 }).catch(
        () => undefined,
      )
    }
  })
  // a shared directory like /tmp (sticky): another user was there first with the file the job will write
  const shared = await mkdtemp(join(tmpdir(), 'ippt-sbatch-shared-'))
  t.after(() => rm(shared, { recursive: true, force: true }))
  await chmod(shared, 0o1777)
  const planted = join(shared, 'engines.out')
  await writeFile(planted, '{"event":"registered","engines":2,"ids":[0,1]}\n\u001b]0;PWNED\u0007\n')
  await chown(planted, 65534, 65534)
  const refused = startEngines(t, f, ['-n', '2', '--sbatch', '--sbatch-output', planted, '--', '--hold'], {})
  const status = await exited(refused.child)
  assert.equal(status.code, 2, refused.lines.stderr)
  const submitted = refused.lines.events.find((e) => e.event === 'submitted')
  const job = String(submitted?.job)
  jobs.push(job)
  const error = refused.lines.events.find((e) => e.event === 'error')
  assert.ok(error, refused.lines.stderr)
  assert.equal(error.code, 'E_UNSAFE_PATH')
  assert.match(String(error.message), /owned by uid 65534, not you .*; job \d+ was cancelled/u)
  assert.equal(
    refused.lines.events.find((e) => e.event === 'registered'),
    undefined,
    'nothing of the planted file is passed on',
  )
  const { stdout } = await run('squeue', ['-h', '-j', job, '-o', '%T'], {
    env: { ...process.env, ...slurm.env },
    timeout: 10_000,
  })
  assert.ok(['', 'CANCELLED'].includes(stdout.trim()), `job ${job} is ${stdout.trim()}`)

  // writable by others, no sticky bit: anyone could swap the file; refused before anything is submitted
  const open = await mkdtemp(join(tmpdir(), 'ippt-sbatch-open-'))
  t.after(() => rm(open, { recursive: true, force: true }))
  await chmod(open, 0o777)
  const unsafe = startEngines(
    t,
    f,
    ['-n', '2', '--sbatch', '--sbatch-output', join(open, 'job-%j.out'), '--', '--hold'],
    {},
  )
  assert.equal((await exited(unsafe.child)).code, 2, unsafe.lines.stderr)
  assert.equal(
    unsafe.lines.events.find((e) => e.event === 'submitted'),
    undefined,
  )
  assert.match(
    String(unsafe.lines.events.find((e) => e.event === 'error')?.message),
    /job output directory is writable by group or others/u,
  )
})
