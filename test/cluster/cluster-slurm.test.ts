import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'

import { JsonLines, exited, runCli, spawnCli } from '../support/cli.js'
import {
  createNetns,
  joinClusterNetwork,
  pidsWhere,
  processesWith,
  remoteClusterArgs,
  spawnClusterStart,
  startSshd,
  type Netns,
  type Sshd,
} from '../support/index.js'
import { runPython } from '../support/ipp.js'
import { startSlurm, type Slurm } from '../support/slurm.js'

const run = promisify(execFile)

/** A Client on the copy: the host name of each of N engines (each in its node's UTS namespace). */
const HOSTS = String.raw`
import json, sys
import ipyparallel as ipp
rc = ipp.Client(profile='default-tunnel', timeout=60)
rc.wait_for_engines(int(sys.argv[1]), timeout=60)
def host():
    import socket
    return socket.gethostname()
print(json.dumps(rc[:].apply_sync(host)))
rc.close()
`

/** A Client on a file: says `refused` when it cannot get the controller to answer. */
const REFUSED = String.raw`
import sys
import ipyparallel as ipp
try:
    rc = ipp.Client(url_file=sys.argv[1], timeout=5)
    rc.wait_for_engines(1, timeout=5)
    print('connected')
except Exception as e:
    print('refused', type(e).__name__)
`

describe('cluster start --engines slurm: the engines as a batch job on the compute nodes, Curve on', () => {
  let ns: Netns
  let sshd: Sshd
  let slurm: Slurm
  let root: string
  let env: NodeJS.ProcessEnv
  let nodes: string[]

  before(async () => {
    ns = await createNetns()
    sshd = await startSshd({ netns: ns, extraConfig: 'Subsystem sftp internal-sftp' })
    // the login node reaches slurmctld and the nodes (and they it) on the cluster network
    await joinClusterNetwork(ns)
    slurm = await startSlurm({ nodes: 2 })
    nodes = slurm.nodes.map((n) => n.name).sort()
    root = await mkdtemp(join(tmpdir(), 'ippt-cslurm-'))
    env = { IPYTHONDIR: join(root, 'local-ipython'), SSH_AUTH_SOCK: '' }
  })
  after(async () => {
    await slurm.close()
    await sshd.close()
    await ns.close()
    await rm(root, { recursive: true, force: true })
  })

  function remoteArgs(): string[] {
    return [...remoteClusterArgs(sshd, root), '--setup', `export SLURM_CONF=${slurm.env.SLURM_CONF}`]
  }

  function startCluster(extra: readonly string[]) {
    return spawnClusterStart(remoteArgs(), extra, env)
  }

  async function squeue(): Promise<string> {
    const { stdout } = await run('squeue', ['-h', '-o', '%i %T'], {
      env: { ...process.env, ...slurm.env },
      timeout: 10_000,
    })
    return stdout.trim()
  }

  /** No job in squeue, no process of the cluster on any node or the login node, no file on either side. */
  async function assertNothingLeft(): Promise<void> {
    for (let i = 0; (await processesWith(root)).length > 0 || (await squeue()) !== ''; i++) {
      assert.ok(i < 300, `left: ${await squeue()} ${JSON.stringify(await processesWith(root))}`)
      await sleep(100)
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

  test('-n 4 on two nodes: job submitted → running, 4 engines on both nodes, Curve (a client without the key is refused); SIGINT cancels the job and leaves nothing', async () => {
    const { child, events } = startCluster(['-n', '4', '--engines', 'slurm', '--slurm-args=-N 2 --time=10'])
    const registered = await events.next(
      (e) => (e.event === 'registered' && e.count === 4) || e.event === 'error',
      150_000,
    )
    assert.equal(registered.event, 'registered', events.stderr + JSON.stringify(events.events))
    const jobs = events.events.filter((e) => e.event === 'job')
    const job = String(jobs[0]?.job)
    assert.match(job, /^\d+$/u)
    assert.equal(jobs[0]?.state, 'SUBMITTED')
    assert.ok(
      jobs.some((e) => e.state === 'RUNNING' && e.job === job),
      JSON.stringify(jobs),
    )

    const used = await runPython(HOSTS, { args: ['4'], env, timeoutMs: 120_000 })
    assert.equal(used.code, 0, used.stderr)
    const hosts = JSON.parse(used.stdout.trim().split('\n').at(-1) ?? '') as string[]
    assert.equal(hosts.length, 4)
    assert.deepEqual([...new Set(hosts)].sort(), nodes, 'engines on both nodes')

    const copy = String((await events.next('copy')).out)
    const info = JSON.parse(await readFile(copy, 'utf8')) as Record<string, unknown>
    assert.match(String(info.curve_serverkey), /^.{40}$/u, 'the copy carries the server key')
    const keyless = { ...info }
    delete keyless.curve_serverkey
    const without = join(root, 'keyless.json')
    await writeFile(without, JSON.stringify(keyless), { mode: 0o600 })
    const refused = await runPython(REFUSED, { args: [without], env, timeoutMs: 60_000 })
    assert.match(refused.stdout, /^refused/mu, refused.stdout + refused.stderr)
    await rm(without)

    const listed = await runCli(['cluster', 'list', ...remoteArgs(), '--json'], env)
    assert.equal(listed.code, 0, listed.stderr)
    const rows = (
      JSON.parse(listed.stdout) as {
        clusters: { profile: string; engines: number; enginesKind: string; job: string }[]
      }
    ).clusters
    assert.deepEqual(
      rows.map((r) => [r.profile, r.engines, r.enginesKind, r.job]),
      [['default', 4, 'slurm', job]],
    )

    child.kill('SIGINT')
    assert.deepEqual(await exited(child), { code: 0, signal: null })
    await assertNothingLeft()
  })

  test('--persist: the starting command SIGKILLed, attach finds the job; once detached the lease ends the job', async () => {
    const { child, events } = startCluster(['-n', '2', '--engines', 'slurm', '--persist', '10'])
    const running = await events.next(
      (e) => (e.event === 'registered' && e.count === 2) || e.event === 'error',
      150_000,
    )
    assert.equal(running.event, 'registered', JSON.stringify(events.events) + events.stderr)
    const job = String(events.events.find((e) => e.event === 'job')?.job)
    child.kill('SIGKILL')
    await exited(child)

    const attached = spawnCli(['cluster', 'attach', ...remoteArgs(), '--json'], env)
    const seen = new JsonLines(attached)
    const engines = await seen.next((e) => e.event === 'engines' || e.event === 'error', 60_000)
    assert.equal(engines.job, job, JSON.stringify(seen.events) + seen.stderr)
    assert.equal(engines.kind, 'slurm')
    await seen.next((e) => e.event === 'registered' && e.count === 2, 60_000)
    attached.kill('SIGINT')
    assert.deepEqual(await exited(attached), { code: 0, signal: null })

    // no one attached: the supervisor ends the keeper, which cancels the job
    for (let i = 0; (await squeue()) !== '' || (await processesWith(root)).length > 0; i++) {
      assert.ok(i < 600, `the job outlived its --persist: ${await squeue()}`)
      await sleep(100)
    }
    // what the lease left (the controller's exit state) goes with cluster stop
    await runCli(['cluster', 'stop', ...remoteArgs()], env)
    await assertNothingLeft()
  })

  test('--controller slurm -n 2: the controller in the job on its first node (the copy reaches it there), the engines beside it; SIGINT cancels the job and leaves nothing', async (t) => {
    const { child, events } = startCluster([
      '-n',
      '2',
      '--controller',
      'slurm',
      '--slurm-args=-N 2 --time=10',
    ])
    // a failed assertion does not leave the command running past the file's end
    t.after(() => child.kill('SIGKILL'))
    const registered = await events.next(
      (e) => (e.event === 'registered' && e.count === 2) || e.event === 'error',
      150_000,
    )
    assert.equal(registered.event, 'registered', events.stderr + JSON.stringify(events.events))
    const said = events.events.find((e) => e.event === 'controller')
    const node = slurm.nodes.find((n) => n.name === said?.node)
    assert.ok(node !== undefined, `the controller on a compute node: ${JSON.stringify(said)}`)
    assert.equal(said?.address, node.ns.nsAddr)
    const job = String(events.events.find((e) => e.event === 'engines')?.job)
    assert.match(job, /^\d+$/u)
    // the job's progress is said as it happens: submitted before the controller runs and its copy is written
    const at = (f: (e: Record<string, unknown>) => boolean): number => events.events.findIndex(f)
    const submitted = at((e) => e.event === 'job' && e.state === 'SUBMITTED')
    assert.ok(submitted >= 0 && submitted < at((e) => e.event === 'copy'), JSON.stringify(events.events))
    assert.deepEqual(
      ['SUBMITTED', 'RUNNING'].map((state) =>
        events.events.some((e) => e.event === 'job' && e.job === job && e.state === state),
      ),
      [true, true],
      JSON.stringify(events.events),
    )

    // the controller (and the schedulers it forks) in that node's network namespace; its file names that node
    const pids = await pidsWhere(
      (p) => p.argv.includes('ipyparallel.controller') && p.argv.join(' ').includes(root),
    )
    assert.ok(pids.length > 0, 'a controller')
    const nodeNet = String((await stat(`/run/netns/${node.ns.name}`)).ino)
    for (const pid of pids) {
      assert.equal((await readlink(`/proc/${String(pid)}/ns/net`)).replace(/\D/gu, ''), nodeNet)
    }
    const security = join(root, 'remote-ipython', 'profile_default', 'security')
    const file = (await readdir(security)).find((f) => f.endsWith('-client.json')) ?? ''
    const remote = JSON.parse(await readFile(join(security, file), 'utf8')) as Record<string, unknown>
    assert.equal(remote.location, node.ns.nsAddr)

    const used = await runPython(HOSTS, { args: ['2'], env, timeoutMs: 120_000 })
    assert.equal(used.code, 0, used.stderr)
    const hosts = JSON.parse(used.stdout.trim().split('\n').at(-1) ?? '') as string[]
    assert.deepEqual([...hosts].sort(), nodes, 'one engine on each node')

    const listed = await runCli(['cluster', 'list', ...remoteArgs(), '--json'], env)
    assert.equal(listed.code, 0, listed.stderr)
    const rows = (
      JSON.parse(listed.stdout) as {
        clusters: {
          controllerKind: string
          node: string
          engines: number
          enginesKind: string
          job: string
        }[]
      }
    ).clusters
    assert.deepEqual(
      rows.map((r) => [r.controllerKind, r.node, r.engines, r.enginesKind, r.job]),
      [['slurm', node.name, 2, 'slurm', job]],
    )
    // from elsewhere (the copy here is the start's own)
    const elsewhere = { ...env, IPYTHONDIR: join(root, 'elsewhere-ipython') }
    const attached = spawnCli(['cluster', 'attach', ...remoteArgs(), '--json'], elsewhere)
    const seen = new JsonLines(attached)
    const again = await seen.next((e) => e.event === 'engines' || e.event === 'error', 60_000)
    assert.equal(again.job, job, JSON.stringify(seen.events) + seen.stderr)
    assert.equal(seen.events.find((e) => e.event === 'controller')?.node, node.name)
    await seen.next((e) => e.event === 'registered' && e.count === 2, 60_000)
    attached.kill('SIGINT')
    assert.deepEqual(await exited(attached), { code: 0, signal: null })

    child.kill('SIGINT')
    assert.deepEqual(await exited(child), { code: 0, signal: null })
    await assertNothingLeft()
  })

  test('--slurm-args without --engines slurm, with an unclosed quote, or --controller slurm with other engines, is refused before anything starts', async () => {
    const alone = await runCli(['cluster', 'start', ...remoteArgs(), '--slurm-args=-N 2'], env)
    assert.equal(alone.code, 2, alone.stderr)
    assert.match(alone.stderr, /--slurm-args: only with --engines slurm/u)
    const unclosed = await runCli(
      ['cluster', 'start', ...remoteArgs(), '--engines', 'slurm', "--slurm-args=--comment='x"],
      env,
    )
    assert.equal(unclosed.code, 2, unclosed.stderr)
    assert.match(unclosed.stderr, /--slurm-args/u)
    const mixed = await runCli(
      ['cluster', 'start', ...remoteArgs(), '--controller', 'slurm', '--engines', 'login'],
      env,
    )
    assert.equal(mixed.code, 2, mixed.stderr)
    assert.match(mixed.stderr, /--controller slurm: the engines run in its job/u)
    assert.equal(await squeue(), '')
  })
})
