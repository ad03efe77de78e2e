import assert from 'node:assert/strict'
import { test } from 'node:test'

import { engineArgvs, mpiEnvironment, splitCommand } from '../../src/engines/index.js'
import { isIppTunnelError } from '../../src/errors/index.js'
import { FIXTURES, runCli } from '../support/cli.js'

test('splitCommand: words, quotes and escapes as a shell reads them', () => {
  assert.deepEqual(splitCommand(`python3 -c 'print("a b")'  x\\ y "q\\"z"`), [
    'python3',
    '-c',
    'print("a b")',
    'x y',
    'q"z',
  ])
  assert.deepEqual(splitCommand(`a '' b`), ['a', '', 'b'])
  assert.throws(
    () => splitCommand(`a 'b`),
    (e) => isIppTunnelError(e) && e.code === 'E_USAGE',
  )
  assert.throws(
    () => splitCommand('   '),
    (e) => isIppTunnelError(e) && e.code === 'E_USAGE',
  )
})

test('engineArgvs: N engine lines, or one mpiexec line with --mpi; {} names the file', () => {
  const file = '/tmp/d/ipcontroller-engine.json'
  assert.deepEqual(engineArgvs({ file, n: 2, extraArgs: ['--log-level=30'] }), [
    ['/usr/bin/python3', '-m', 'ipyparallel.engine', `--file=${file}`, '--log-level=30'],
    ['/usr/bin/python3', '-m', 'ipyparallel.engine', `--file=${file}`, '--log-level=30'],
  ])
  assert.deepEqual(engineArgvs({ file, n: 3, mpi: true, mpiexec: 'mpirun --bind-to none' }), [
    [
      'mpirun',
      '--bind-to',
      'none',
      '-n',
      '3',
      '/usr/bin/python3',
      '-m',
      'ipyparallel.engine',
      `--file=${file}`,
      '--mpi',
    ],
  ])
  assert.deepEqual(engineArgvs({ file, n: 1, engineCommand: 'ipengine --file {} --quiet' }), [
    ['ipengine', '--file', file, '--quiet'],
  ])
  for (const n of [0, -1, 1.5, Number.NaN]) {
    assert.throws(
      () => engineArgvs({ file, n }),
      (e) => isIppTunnelError(e) && e.code === 'E_USAGE',
    )
  }
})

test('mpiEnvironment: allow-root only for root, oversubscription, the user’s values win', () => {
  const env = mpiEnvironment({ OMPI_MCA_rmaps_base_oversubscribe: '0' }, true)
  assert.equal(env.OMPI_ALLOW_RUN_AS_ROOT, '1')
  assert.equal(env.OMPI_ALLOW_RUN_AS_ROOT_CONFIRM, '1')
  assert.equal(env.OMPI_MCA_rmaps_base_oversubscribe, '0')
  assert.equal(mpiEnvironment({}, false).OMPI_ALLOW_RUN_AS_ROOT, undefined)
})

const badInput = [
  [
    ['engines', `${FIXTURES}ipp/ipcontroller-client.json`, '-n', '2'],
    /ipcontroller-client\.json.*engine file/,
  ],
  [['engines', `${FIXTURES}ipp/ipcontroller-engine.json`, '-n', '0'], /-n must be/],
  [
    ['engines', `${FIXTURES}ipp/ipcontroller-engine.json`, '-n', '1', '--engine-cmd', `x 'y`],
    /--engine-cmd.*quote/,
  ],
  [['engines', `${FIXTURES}ipp/ipcontroller-engine.json`], /Missing required argument: n/],
] as const

for (const [args, pattern] of badInput) {
  test(`${args.slice(2).join(' ') || 'no -n'}: one line, exit 2, no connection`, async () => {
    const result = await runCli(args)
    assert.equal(result.code, 2, result.stderr)
    const lines = result.stderr.trimEnd().split('\n')
    assert.equal(lines.length, 1, result.stderr)
    assert.match(lines[0]!, pattern)
  })
}
