import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'

import { remoteDirs } from '../../src/cli/watch.js'
import { JsonLines, runCli, spawnCli } from '../support/cli.js'
import { hasCode } from '../support/index.js'
import { stopProcess } from '../support/ipp.js'

const run = promisify(execFile)

describe('--remote arguments', () => {
  let dir: string
  let env: NodeJS.ProcessEnv
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ippt-remote-usage-'))
    env = { IPP_TUNNEL_RUNTIME_DIR: join(dir, 'run'), IPYTHONDIR: join(dir, 'ipython') }
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  test('a bare host follows the remote profile and runtime dirs; repeats are followed once', () => {
    assert.deepEqual(remoteDirs(['me@h', 'me@h:~/x', 'me@h:~/x'], 'mpi'), [
      { destination: 'me@h', dir: '~/.ipython/profile_mpi/security' },
      { destination: 'me@h', dir: '~/.local/share/jupyter/runtime' },
      { destination: 'me@h', dir: '~/x' },
    ])
    assert.throws(() => remoteDirs([], 'mpi'), hasCode('E_USAGE'))
    assert.throws(() => remoteDirs(['h'], '../x'), hasCode('E_USAGE'))
  })

  test('bad --remote, --poll and up HOST: are refused with exit 2 and one line', async () => {
    for (const args of [
      ['watch', '--remote', 'me@:dir'],
      ['watch', '--remote', 'h:/d', '--poll', '0'],
      ['watch', '--remote-profile', 'x'],
      ['up', 'cluster:'],
    ]) {
      const result = await runCli(args, env)
      assert.equal(result.code, 2, `${args.join(' ')}: ${result.stderr}`)
      assert.doesNotMatch(result.stderr, /\n\s+at /)
    }
  })

  test('an unreachable remote is an error event; the service keeps running', async (t) => {
    const key = join(dir, 'id_ed25519')
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key])
    const watch = spawnCli(
      ['watch', '--json', '--remote', 'root@127.0.0.1:1:/x', '--identity', key, '--ssh-config', '/dev/null'],
      env,
    )
    t.after(() => stopProcess(watch, 'SIGKILL'))
    const events = new JsonLines(watch)
    const error = await events.next('error')
    assert.equal(error.code, 'E_CONNECT')
    assert.equal(error.file, 'root@127.0.0.1:1:/x')
    assert.equal(error.source, 'remote')
    const result = await runCli(['status', '--json'], env)
    assert.equal(result.code, 0, result.stderr)
    const report = JSON.parse(result.stdout) as { remotes: { errors: number; lastError: { code: string } }[] }
    assert.equal(report.remotes[0]?.lastError.code, 'E_CONNECT')
  })
})
