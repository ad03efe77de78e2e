import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'

const run = promisify(execFile)

/** A one-node Slurm cluster on this host: slurmctld and slurmd with a private config, state and ports. */
export interface Slurm {
  /** `SLURM_CONF` for srun, salloc, squeue… */
  readonly env: { readonly SLURM_CONF: string }
  readonly node: string
  close(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
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
  for (const name of ['slurmctld.log', 'slurmd.log']) {
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
 * Starts slurmctld and slurmd (`-D`, children of this process) for one node named as this host, 2 CPUs, one
 * partition that lets job steps share CPUs. Debian's build cannot run several slurmd on one host, so there is
 * one node. Waits until the node is idle.
 *
 * @example
 * const slurm = await startSlurm()
 * t.after(() => slurm.close())
 * await run('salloc', ['--no-shell', '-N1'], { env: { ...process.env, ...slurm.env } })
 */
export async function startSlurm(): Promise<Slurm> {
  await ensureMunge()
  const dir = await mkdtemp(join(tmpdir(), 'ippt-slurm-'))
  const node = hostname()
  const base = 20000 + Math.floor(Math.random() * 20000)
  const conf = join(dir, 'slurm.conf')
  await mkdir(join(dir, 'state'))
  await mkdir(join(dir, 'spool'))
  await writeFile(
    conf,
    [
      'ClusterName=ippt',
      `SlurmctldHost=${node}`,
      'SlurmUser=root',
      'SlurmdUser=root',
      `SlurmctldPort=${String(base)}`,
      `SlurmdPort=${String(base + 1)}`,
      `StateSaveLocation=${dir}/state`,
      `SlurmdSpoolDir=${dir}/spool`,
      `SlurmctldPidFile=${dir}/slurmctld.pid`,
      `SlurmdPidFile=${dir}/slurmd.pid`,
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
      `SlurmdLogFile=${dir}/slurmd.log`,
      `NodeName=${node} CPUs=2 State=UNKNOWN`,
      `PartitionName=debug Nodes=${node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8`,
      '',
    ].join('\n'),
  )
  const env = { SLURM_CONF: conf }
  const daemons: ChildProcess[] = []
  const close = async (): Promise<void> => {
    for (const d of daemons) await stop(d)
    await rm(dir, { recursive: true, force: true })
  }
  try {
    for (const daemon of ['slurmctld', 'slurmd']) {
      daemons.push(spawn(daemon, ['-D', '-f', conf], { stdio: 'ignore', env: { ...process.env, ...env } }))
    }
    // Waiting for the daemons to come up (a peer), not retrying a check.
    for (let i = 0; ; i++) {
      const state = await run('sinfo', ['-h', '-o', '%t'], {
        env: { ...process.env, ...env },
        timeout: 5000,
      }).then(
        (r) => r.stdout.trim(),
        () => '',
      )
      if (state === 'idle') break
      if (i > 100) throw new Error(`slurm did not come up (node state "${state}"): ${await logTails(dir)}`)
      await sleep(200)
    }
  } catch (err) {
    await close()
    throw err
  }
  return { env, node, close, [Symbol.asyncDispose]: close }
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
