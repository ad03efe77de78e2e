import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'

import { createNetns, joinClusterNetwork, type Netns } from './netns.js'

const run = promisify(execFile)

/** A node of a {@link Slurm} cluster started with `nodes`: a network and UTS namespace of its own. */
export interface SlurmNode {
  /** Its host name inside its UTS namespace, and its Slurm NodeName. */
  readonly name: string
  /** Its network namespace (joined to the cluster network, see joinClusterNetwork). */
  readonly ns: Netns
}

/** A Slurm cluster on this host: slurmctld and one slurmd per node with a private config, state and ports. */
export interface Slurm {
  /** `SLURM_CONF` for srun, salloc, squeue… */
  readonly env: { readonly SLURM_CONF: string }
  /** The first node's name. */
  readonly node: string
  /** Every node; empty for the default one-node cluster, whose slurmd runs on this host as it is. */
  readonly nodes: readonly SlurmNode[]
  /** The directory of the config, state and logs. */
  readonly dir: string
  close(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

/** Options of {@link startSlurm}. */
export interface SlurmOptions {
  /** Run this many nodes, each slurmd in a network and UTS namespace of its own (see {@link SlurmNode}). */
  readonly nodes?: number
}

const munge = (): Promise<boolean> =>
  run('munge', ['-n'], { timeout: 5000 }).then(
    () => true,
    () => false,
  )

/**
 * munged is a system daemon (one socket for the host): started once if it does not answer, left running. A socket
 * file alone proves nothing: a munged killed with its session leaves it behind, and slurmd then retries for minutes.
 */
async function ensureMunge(): Promise<void> {
  if (await munge()) return
  await mkdir('/run/munge', { recursive: true })
  await run('chown', ['munge:munge', '/run/munge']).catch(() => undefined)
  // --force: start over a stale socket and pid file.
  await run('munged', ['--force'], { timeout: 10_000 })
  if (!(await munge())) throw new Error('munged was started but `munge -n` still fails')
}

async function logTails(dir: string): Promise<string> {
  const tails: string[] = []
  for (const name of (await readdir(dir)).filter((n) => n.endsWith('.log')).sort()) {
    const text = await readFile(join(dir, name), 'utf8').catch(() => '')
    tails.push(`${name}: ${text.trim().split('\n').slice(-5).join(' | ')}`)
  }
  return tails.join('; ')
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = once(child, 'exit')
  child.kill('SIGKILL')
  await exited
}

/**
 * Starts slurmctld and slurmd (`-D`, children of this process), 2 CPUs per node, one partition that lets job
 * steps share CPUs; waits until every node is idle.
 *
 * By default one node named as this host, its slurmd on this host as it is. With `nodes`, that many nodes:
 * Debian's build cannot run several slurmd on one host (no --enable-multiple-slurmd: a slurmd finds its node by
 * the host name), so each slurmd runs in a network namespace and a UTS namespace of its own (its own address and
 * host name, `NodeName=<name> NodeAddr=<its address>`), with its own spool, pid and log files; slurmctld runs on
 * this host, reached by the nodes through the cluster network (see joinClusterNetwork), and munged's socket is
 * shared through the file system. The tasks a slurmd starts run in its namespaces: real nodes.
 *
 * @example
 * const slurm = await startSlurm({ nodes: 2 })
 * t.after(() => slurm.close())
 * await run('salloc', ['--no-shell', '-N2'], { env: { ...process.env, ...slurm.env } })
 */
export async function startSlurm(options: SlurmOptions = {}): Promise<Slurm> {
  await ensureMunge()
  const dir = await mkdtemp(join(tmpdir(), 'ippt-slurm-'))
  const base = 20000 + Math.floor(Math.random() * 20000)
  const conf = join(dir, 'slurm.conf')
  const env = { SLURM_CONF: conf }
  const daemons: ChildProcess[] = []
  const nodes: SlurmNode[] = []
  const close = async (): Promise<void> => {
    for (const d of daemons) await stop(d)
    // Kills what is left in each node (job steps' processes) and removes it from the network.
    for (const n of nodes) await n.ns.close()
    await rm(dir, { recursive: true, force: true })
  }
  try {
    await mkdir(join(dir, 'state'))
    let controller = hostname()
    let nodeLines = [`NodeName=${controller} CPUs=2 State=UNKNOWN`]
    if (options.nodes !== undefined) {
      const id = randomBytes(3).toString('hex')
      for (let i = 0; i < options.nodes; i++) {
        const ns = await createNetns()
        nodes.push({ name: `ipps${id}n${String(i)}`, ns })
        await joinClusterNetwork(ns)
      }
      // slurmctld listens on every address of this host; the nodes reach it at the first node's host end.
      controller = `${hostname()}(${nodes[0]?.ns.hostAddr ?? ''})`
      nodeLines = nodes.map((n) => `NodeName=${n.name} NodeAddr=${n.ns.nsAddr} CPUs=2 State=UNKNOWN`)
    }
    const names = nodes.length > 0 ? nodes.map((n) => n.name) : [hostname()]
    await writeFile(
      conf,
      [
        'ClusterName=ippt',
        `SlurmctldHost=${controller}`,
        'SlurmUser=root',
        'SlurmdUser=root',
        `SlurmctldPort=${String(base)}`,
        `SlurmdPort=${String(base + 1)}`,
        `StateSaveLocation=${dir}/state`,
        // %n: the node's name, so that each slurmd has its own files.
        `SlurmdSpoolDir=${dir}/spool-%n`,
        `SlurmctldPidFile=${dir}/slurmctld.pid`,
        `SlurmdPidFile=${dir}/slurmd-%n.pid`,
        'AuthType=auth/munge',
        'ProctrackType=proctrack/linuxproc',
        'TaskPlugin=task/none',
        'MpiDefault=none',
        'ReturnToService=2',
        'SelectType=select/cons_tres',
        'SelectTypeParameters=CR_Core',
        'JobAcctGatherType=jobacct_gather/none',
        'AccountingStorageType=accounting_storage/none',
        `SlurmctldLogFile=${dir}/slurmctld.log`,
        `SlurmdLogFile=${dir}/slurmd-%n.log`,
        ...nodeLines,
        `PartitionName=debug Nodes=${names.join(',')} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8`,
        '',
      ].join('\n'),
    )
    const daemonEnv = { ...process.env, ...env }
    // setpriv --pdeathsig: a test process killed at its time limit takes its daemons with it.
    const dying = ['--pdeathsig', 'KILL']
    daemons.push(
      spawn('setpriv', [...dying, 'slurmctld', '-D', '-f', conf], {
        stdio: 'ignore',
        env: daemonEnv,
      }),
    )
    if (nodes.length === 0) {
      daemons.push(
        spawn('setpriv', [...dying, 'slurmd', '-D', '-f', conf], {
          stdio: 'ignore',
          env: daemonEnv,
        }),
      )
    }
    for (const n of nodes) {
      // nsenter, not `ip netns exec`: that mounts a /sys of its own, without the cgroup file system slurmd
      // needs. nsenter, unshare (no --fork), sh and setpriv all exec in place: the child is slurmd itself.
      const argv = ['setpriv', ...dying, 'slurmd', '-D', '-N', n.name, '-f', conf]
      const uts = ['unshare', '--uts', '/bin/sh', '-c', 'hostname "$0" && exec "$@"', n.name, ...argv]
      daemons.push(
        spawn('nsenter', [`--net=/run/netns/${n.ns.name}`, ...uts], { stdio: 'ignore', env: daemonEnv }),
      )
    }
    // Waiting for the daemons to come up (a peer), not retrying a check.
    for (let i = 0; ; i++) {
      const states = await run('sinfo', ['-h', '-N', '-o', '%t'], { env: daemonEnv, timeout: 5000 }).then(
        (r) => r.stdout.trim().split('\n'),
        () => [],
      )
      if (states.length === names.length && states.every((s) => s === 'idle')) break
      if (i > 150) {
        throw new Error(`slurm did not come up (node states "${states.join(' ')}"): ${await logTails(dir)}`)
      }
      await sleep(200)
    }
  } catch (err) {
    await close()
    throw err
  }
  return { env, node: nodes[0]?.name ?? hostname(), nodes, dir, close, [Symbol.asyncDispose]: close }
}

/** `salloc --no-shell` of `nodes` nodes and `tasks` tasks: the job id of the allocation. */
export async function allocate(slurm: Slurm, nodes: number, tasks: number): Promise<string> {
  // --immediate: fail instead of queueing behind resources that will never come.
  const { stderr } = await run(
    'salloc',
    ['--no-shell', '--immediate=30', `-N${String(nodes)}`, `-n${String(tasks)}`],
    {
      env: { ...process.env, ...slurm.env },
      timeout: 60_000,
    },
  )
  const id = /Granted job allocation (\d+)/.exec(stderr)?.[1]
  if (id === undefined) throw new Error(`salloc: ${stderr}`)
  return id
}

/** An allocation held by a running `salloc`, with the environment a program started in it sees. */
export interface Allocation {
  readonly job: string
  /** `SLURM_JOB_ID`, `SLURM_JOB_NODELIST`, `SLURM_TASKS_PER_NODE`… as salloc sets them (plus `SLURM_CONF`). */
  readonly env: NodeJS.ProcessEnv
  /** Ends salloc: the allocation is released. Safe to call twice. */
  close(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

/**
 * `salloc -N nodes -n tasks` running a shell that prints its environment and waits for its stdin to close, as a
 * user's `salloc` session would: what runs with {@link Allocation.env} is inside the allocation.
 *
 * @example
 * const alloc = await holdAllocation(slurm, 2, 4)
 * t.after(() => alloc.close())
 * spawnCli(['engines', file, '-n', '4', '--slurm'], alloc.env)
 */
export async function holdAllocation(slurm: Slurm, nodes: number, tasks: number): Promise<Allocation> {
  const child = spawn(
    'salloc',
    [
      '--immediate=30',
      `-N${String(nodes)}`,
      `-n${String(tasks)}`,
      '/bin/sh',
      '-c',
      'env -0; printf "\\0--end--\\0"; exec cat >/dev/null',
    ],
    { env: { ...process.env, ...slurm.env }, stdio: ['pipe', 'pipe', 'pipe'] },
  )
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk))
  const exited = once(child, 'exit')
  let closing: Promise<void> | undefined
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.stdin.end()
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000)
      await exited
      clearTimeout(timer)
    })())
  const printed = await new Promise<string>((resolve, reject) => {
    let out = ''
    child.stdout.setEncoding('latin1').on('data', (chunk: string) => {
      out += chunk
      if (out.includes('\0--end--\0')) resolve(out)
    })
    child.once('error', reject)
    void exited.then(() => reject(new Error(`salloc ended: ${stderr}`)))
    setTimeout(() => reject(new Error(`salloc: no allocation within 60 s: ${stderr}`)), 60_000).unref()
  }).catch(async (err: unknown) => {
    await close()
    throw err
  })
  const env: NodeJS.ProcessEnv = {}
  for (const entry of printed.split('\0')) {
    const eq = entry.indexOf('=')
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1)
  }
  const job = env.SLURM_JOB_ID ?? ''
  return { job, env, close, [Symbol.asyncDispose]: close }
}
