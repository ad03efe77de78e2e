import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { promisify } from 'node:util'

import {
  engineArgvs,
  hostArgs,
  NODE_FILE,
  nodeEngineWrapper,
  nodeNames,
  parseTagged,
  batchScript,
  sbatchArgs,
} from '../../src/engines/index.js'
import { FIXTURES, runCli } from '../support/cli.js'
import { hasCode } from '../support/index.js'

const run = promisify(execFile)

test('nodeNames: the distinct hosts of --host and of an OpenMPI hostfile, in order', async (t) => {
  assert.deepEqual(await nodeNames({ kind: 'host', value: 'a:4,b:4,a:1,c' }), ['a', 'b', 'c'])
  const dir = await mkdtemp(join(tmpdir(), 'ippt-hostfile-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const path = join(dir, 'hosts')
  await writeFile(path, '# nodes\nn1 slots=4\n\n  n2 slots=2 max_slots=4  # second\nn1\n')
  assert.deepEqual(await nodeNames({ kind: 'hostfile', path }), ['n1', 'n2'])
  assert.deepEqual(hostArgs({ kind: 'hostfile', path }), ['--hostfile', path])
  await writeFile(path, '# nothing\n')
  await assert.rejects(nodeNames({ kind: 'hostfile', path }), hasCode('E_USAGE', 'names no host'))
  await assert.rejects(nodeNames({ kind: 'hostfile', path: join(dir, 'none') }), hasCode('E_USAGE'))
})

test('nodeNames: a node name mpiexec would hand to ssh as an option or with shell syntax is refused', async (t) => {
  for (const value of ['a:2,-oProxyCommand=touch${IFS}x:2', 'a,$(id)', 'a;b:4', 'a,`id`']) {
    await assert.rejects(
      nodeNames({ kind: 'host', value }),
      hasCode('E_USAGE', '--host: node "', '" is not a host name or address: the host '),
    )
  }
  const dir = await mkdtemp(join(tmpdir(), 'ippt-hostfile-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const path = join(dir, 'hosts')
  await writeFile(path, 'n1 slots=2\n-oProxyCommand=x slots=2\n')
  await assert.rejects(
    nodeNames({ kind: 'hostfile', path }),
    hasCode('E_USAGE', `--hostfile ${path}: node "-oProxyCommand=x" is not a host name or address`),
  )
  assert.deepEqual(await nodeNames({ kind: 'host', value: 'node-1.lab:4,10.0.0.2,gpu_3' }), [
    'node-1.lab',
    '10.0.0.2',
    'gpu_3',
  ])
})

test('parseTagged: the rank and stream of an mpiexec --tag-output line', () => {
  assert.deepEqual(parseTagged('[1,3]<stderr>:hello [x]'), { rank: 3, stream: 'stderr', text: 'hello [x]' })
  assert.equal(parseTagged('plain line'), undefined)
})

test("the engines' wrapper runs the engine on this node's file, and says which node it is on", async () => {
  const argv =
    engineArgvs({
      file: NODE_FILE,
      n: 2,
      mpi: true,
      mpiArgs: ['--host', 'a:1,b:1'],
      engineCommand: `/bin/echo x{}y '{}'`,
      wrapper: nodeEngineWrapper('/job dir', 'engine.json'),
    })[0] ?? []
  assert.deepEqual(argv.slice(0, 5), ['mpiexec', '--host', 'a:1,b:1', '-n', '2'])
  const [sh, ...args] = argv.slice(5)
  const { stdout, stderr } = await run(sh ?? '', args)
  const file = `/job dir/${hostname()}/engine.json`
  assert.equal(stdout, `x${file}y ${file} --mpi\n`)
  assert.equal(stderr, `ipp-tunnel-node ${hostname()}\n`)
})

test('--host without --mpi is a usage error (exit 2) before anything starts', async () => {
  const result = await runCli([
    'engines',
    '/nonexistent/ipcontroller-engine.json',
    '-n',
    '2',
    '--host',
    'a:2',
    '--json',
  ])
  assert.equal(result.code, 2, result.stderr)
  const error = JSON.parse(result.stdout.trim().split('\n').at(-1) ?? '{}') as {
    code?: string
    message?: string
  }
  assert.equal(error.code, 'E_USAGE')
  assert.match(error.message ?? '', /add --mpi/)
})

test('--slurm outside an allocation, or with --host, is a usage error (exit 2)', async () => {
  const file = '/nonexistent/ipcontroller-engine.json'
  const outside = await runCli(['engines', file, '-n', '2', '--slurm', '--json'], { SLURM_JOB_ID: '' })
  assert.equal(outside.code, 2, outside.stderr)
  assert.match(outside.stdout, /E_USAGE.*SLURM_JOB_ID is not set/)
  const both = await runCli(['engines', file, '-n', '2', '--slurm', '--mpi', '--host', 'a', '--json'])
  assert.equal(both.code, 2, both.stderr)
  assert.match(both.stdout, /leave out --host/)
})

test("--sbatch's batch script execs ipp-tunnel with its words intact", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-sbatch-script-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const script = join(dir, 'job.sh')
  const words = ['/bin/echo', "it's", 'a b', '$HOME', '`x`', '%j', '']
  await writeFile(script, batchScript(words), { mode: 0o700 })
  const { stdout } = await run(script)
  assert.equal(stdout, "it's a b $HOME `x` %j \n")
  assert.deepEqual(sbatchArgs({ nodes: 2, tasks: 4, output: '/o/%j.out' }), [
    '--parsable',
    '--job-name=ipp-tunnel-engines',
    '--nodes=2',
    '--ntasks=4',
    '--output=/o/%j.out',
    '--open-mode=append',
  ])
})

test('--sbatch with --slurm, a bad -N, or -N without --sbatch is a usage error (exit 2) before any job', async () => {
  const file = `${FIXTURES}ipp/ipcontroller-engine.json`
  const slurm = await runCli(['engines', file, '-n', '2', '--sbatch', '--slurm', '--json'])
  assert.equal(slurm.code, 2, slurm.stderr)
  assert.match(slurm.stdout, /E_USAGE.*leave out --slurm/)
  const nodes = await runCli(['engines', file, '-n', '2', '--sbatch', '-N', 'two', '--json'])
  assert.equal(nodes.code, 2, nodes.stderr)
  assert.match(nodes.stdout, /E_USAGE.*-N needs a whole number/)
  const alone = await runCli(['engines', file, '-n', '2', '-N', '2', '--json'])
  assert.equal(alone.code, 2, alone.stderr)
  assert.match(alone.stdout, /E_USAGE.*--nodes goes with --sbatch/)
  const missing = await runCli(['engines', '/nonexistent/e.json', '-n', '2', '--sbatch', '--json'])
  assert.equal(missing.code, 2, missing.stderr)
  assert.match(missing.stdout, /E_CONNFILE_READ/)
})
