import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { readdir, readFile, stat } from 'node:fs/promises'
import { dirname } from 'node:path'
import { test } from 'node:test'
import { promisify } from 'node:util'

import { exited, JsonLines, spawnCli } from '../support/cli.js'
import { runPython } from '../support/ipp.js'
import { allocate, startSlurm } from '../support/slurm.js'
import { idsAndPidsScript, startRemote, stopCli } from './helpers.js'

const run = promisify(execFile)

async function processesWith(text: string): Promise<number[]> {
  const pids: number[] = []
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      if ((await readFile(`/proc/${entry}/cmdline`, 'latin1')).includes(text)) pids.push(Number(entry))
    } catch {
      // gone
    }
  }
  return pids
}

test('engines --slurm inside an allocation: a node tunnel per node (srun), engines through it; SIGTERM cleans up', async (t) => {
  const remote = await startRemote(t)
  const slurm = await startSlurm()
  t.after(() => slurm.close())
  const job = await allocate(slurm, 1, 2)
  t.after(() => run('scancel', [job], { env: { ...process.env, ...slurm.env } }).catch(() => undefined))
  const child = spawnCli(
    [
      'engines',
      remote.ctl.engineFile,
      '--json',
      '--identity',
      remote.sshd.clientKey,
      '--known-hosts',
      remote.sshd.knownHostsFile,
      '--ssh-config',
      '/dev/null',
      '-n',
      '2',
      '--slurm',
    ],
    { ...slurm.env, SLURM_JOB_ID: job, SLURM_JOB_NUM_NODES: '1' },
  )
  const lines = new JsonLines(child)
  t.after(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGTERM')
    await exited(child)
  })
  const registered = await lines.next('registered', 120_000)
  const ready = lines.events.filter((e) => e.event === 'node-ready')
  const [node] = ready
  assert.ok(node !== undefined && ready.length === 1, JSON.stringify(ready))
  assert.equal(node.host, slurm.node)
  assert.deepEqual(registered.nodes, { [slurm.node]: registered.ids }, JSON.stringify(registered))
  const jobDir = dirname(dirname(String(node.out)))

  const result = await runPython(idsAndPidsScript(remote.ctl.clientFile, 2), {
    netns: remote.ns,
    timeoutMs: 60_000,
  })
  assert.equal(result.code, 0, result.stderr)
  assert.deepEqual((JSON.parse(result.stdout) as { ids: number[] }).ids, [0, 1])
  // The node's tunnel, and the launching command's own (it asks the hub about registration).
  assert.equal(await remote.sshd.sessionCount(), 2)

  const status = await stopCli(child, 'SIGTERM')
  assert.equal(status.code, 0, lines.stderr.slice(-3000))
  assert.deepEqual(lines.events.find((e) => e.event === 'unregistered')?.remaining, [])
  assert.deepEqual(await processesWith(jobDir), [], 'no node tunnel or engine left')
  const left = await stat(jobDir).then(
    () => true,
    () => false,
  )
  assert.equal(
    left,
    false,
    `${jobDir} is left: ${JSON.stringify(lines.events.slice(-6))} ${lines.stderr.slice(-3000)}`,
  )
  const { stdout } = await run('squeue', ['-h', '-s', '-j', job], { env: { ...process.env, ...slurm.env } })
  assert.equal(stdout.trim(), '', 'no job step left running')
})
