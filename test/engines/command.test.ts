import assert from 'node:assert/strict'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'

import {
  engineArgvs,
  findProgram,
  isRoutineLog,
  mpiEnvironment,
  redactLine,
  splitCommand,
} from '../../src/engines/index.js'
import { isIppTunnelError } from '../../src/errors/index.js'
import { FIXTURES, runCli } from '../support/cli.js'
import { hasCode } from '../support/index.js'

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
  [['engines', `${FIXTURES}ipp/ipcontroller-engine.json`, '-n', '0'], /-n needs a whole number.*got "0"/],
  [['engines', `${FIXTURES}ipp/ipcontroller-engine.json`, '-n', 'abc'], /-n needs a whole number.*got "abc"/],
  [
    ['engines', `${FIXTURES}ipp/ipcontroller-engine.json`, '-n', '2.5'],
    /-n needs a whole number.*got "2\.5"/,
  ],
  [
    ['engines', `${FIXTURES}ipp/ipcontroller-engine.json`, '-n', '1', '--engine-cmd', `x 'y`],
    /--engine-cmd.*quote/,
  ],
  [['engines', `${FIXTURES}ipp/ipcontroller-engine.json`], /Missing required argument: -n /],
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

for (const [what, cmd] of [
  ['a missing engine command', ['--engine-cmd', '/nonexistent/ipengine']],
  ['a missing program on PATH', ['--engine-cmd', 'no-such-ipengine-here --flag']],
  ['a missing MPI launcher', ['--mpi', '--mpiexec', '/nonexistent/mpiexec']],
] as const) {
  test(`engines with ${what}: one line, exit 127 as exec, no connection`, async () => {
    const result = await runCli(['engines', `${FIXTURES}ipp/ipcontroller-engine.json`, '-n', '2', ...cmd])
    assert.equal(result.code, 127, result.stderr)
    const lines = result.stderr.trimEnd().split('\n')
    assert.equal(lines.length, 1, result.stderr)
    assert.match(lines[0]!, /cannot run .*(no executable file there|not found on PATH)/)
  })
}

test('findProgram: a path is checked as it is, a bare name is looked up on PATH', async () => {
  assert.equal(await findProgram('/bin/sh'), '/bin/sh')
  assert.equal(await findProgram('sh', '/nonexistent:/bin'), '/bin/sh')
  await assert.rejects(findProgram('sh', '/nonexistent'), hasCode('E_SPAWN', 'not found on PATH'))
  const dir = await mkdtemp(join(tmpdir(), 'ippt-find-'))
  try {
    const plain = join(dir, 'not-executable')
    await writeFile(plain, '#!/bin/sh\n', { mode: 0o644 })
    await assert.rejects(findProgram(plain), hasCode('E_SPAWN', 'no executable file'))
    await assert.rejects(findProgram(dir), hasCode('E_SPAWN'), 'a directory is not a program')
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('isRoutineLog: INFO/DEBUG log lines are routine; warnings, tracebacks and prints are not', () => {
  assert.equal(
    isRoutineLog('2026-11-26 06:06:19.893 [IPEngine] Looking for ipython_config in /etc/ipython'),
    true,
  )
  assert.equal(isRoutineLog('2026-11-26 06:06:19.893 [KernelNanny.0] Nanny watching parent pid 1.'), true)
  assert.equal(
    isRoutineLog('2026-11-26 06:06:19.894 [IPEngine] WARNING | Not using CurveZMQ security'),
    false,
  )
  assert.equal(
    isRoutineLog('2026-11-26 06:04:17.612 [IPEngine] CRITICAL | received signal 15, stopping'),
    false,
  )
  assert.equal(isRoutineLog('2026-11-26 06:04:17.612 [IPEngine] ERROR | Registration Failed'), false)
  assert.equal(isRoutineLog('Traceback (most recent call last):'), false)
  assert.equal(isRoutineLog('hello from user code'), false)
})

test('redactLine: the HMAC key an engine logs never reaches our stderr', () => {
  const key = 'd8309c9c-d5713cd1e5e31b23958995e4'
  assert.equal(
    redactLine(`{'Session': {'key': b'${key}', 'signature_scheme': 'hmac-sha256'}}`, [key]),
    "{'Session': {'key': b'<redacted>', 'signature_scheme': 'hmac-sha256'}}",
  )
  assert.equal(redactLine('nothing here', [key, '']), 'nothing here')
})
