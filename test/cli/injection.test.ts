import assert from 'node:assert/strict'
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { FIXTURES, runCli, type CliResult } from '../support/cli.js'
import { exists, startSshd, type Sshd } from '../support/index.js'

/**
 * A connection file names the ssh server; its host and user are pasted into a ProxyCommand that `sh -c` runs. Here
 * the ProxyCommand is a real `ssh -W %h:%p -l %r` through a real sshd, and the file is hostile: each attempt would run
 * `>$mark` (create a file) on this machine if a host or user with shell syntax got through.
 */
describe('a host or user with shell syntax, from a file, host:PATH or --ssh, never reaches the ProxyCommand', () => {
  let sshd: Sshd
  let dir: string
  let mark: string
  let config: string
  let proxy: string
  let client: Record<string, unknown>

  before(async () => {
    sshd = await startSshd()
    dir = await mkdtemp(join(tmpdir(), 'ippt-inject-'))
    mark = join(dir, 'PWNED')
    proxy = `ssh -W %h:%p -l %r -F /dev/null -i ${sshd.clientKey} -o UserKnownHostsFile=${sshd.knownHostsFile} -o BatchMode=yes -p ${sshd.port} ${sshd.host}`
    config = join(dir, 'ssh_config')
    await writeFile(config, `Host *\n  ProxyCommand ${proxy}\n`)
    client = JSON.parse(await readFile(`${FIXTURES}ipp/ipcontroller-client.json`, 'utf8')) as Record<
      string,
      unknown
    >
  })
  after(async () => {
    await sshd.close()
    await rm(dir, { recursive: true, force: true })
  })

  /** `ipp-tunnel up ARGS` with `$mark` set: the file an injected command would create. */
  const up = async (args: readonly string[]): Promise<CliResult> => {
    await rm(mark, { force: true })
    return runCli(
      ['up', ...args, '--out', join(dir, 'out.json'), '--host-key-check', 'strict', '--json'],
      { mark },
      30_000,
    )
  }

  // `>$mark` alone creates the file; lower case, as ssh_config lookups lower-case the host (%h)
  const hostile = [
    '$(>$mark)',
    'root@$(>$mark)',
    '`>$mark`@127.0.0.1',
    '$(>$mark)@127.0.0.1:2222',
    'a;>$mark;b@127.0.0.1',
    '127.0.0.1;>$mark;x',
    'x|>$mark@127.0.0.1',
  ]

  for (const [how, extra] of [
    ['a ProxyCommand in the ssh config', () => ['--ssh-config', config]],
    ['--proxy-command', () => ['--ssh-config', '/dev/null', '--proxy-command', proxy]],
  ] as const) {
    test(`up FILE, ${how}: exit 2, one line naming the file and field "ssh", nothing run`, async () => {
      for (const ssh of hostile) {
        const file = join(dir, 'ipcontroller-client.json')
        await writeFile(file, JSON.stringify({ ...client, ssh }), { mode: 0o600 })
        const result = await up([file, ...extra()])
        assert.equal(await exists(mark), false, `${ssh} ran a command`)
        assert.equal(result.code, 2, `${ssh}: ${result.stdout}${result.stderr}`)
        const lines = result.stdout.trimEnd().split('\n')
        assert.equal(lines.length, 1, result.stdout)
        const event = JSON.parse(lines[0] ?? '') as { code: string; message: string }
        assert.equal(event.code, 'E_CONNFILE_FIELD')
        assert.ok(event.message.startsWith(`${file}: field "ssh" must be an ssh destination`), event.message)
        assert.match(event.message, /forbidden character/)
      }
    })
  }

  test('a kernel file whose "ssh" has shell syntax: exit 2 naming the file and field', async () => {
    const kernel = JSON.parse(await readFile(`${FIXTURES}kernel/kernel-test.json`, 'utf8')) as object
    const file = join(dir, 'kernel-hostile.json')
    await writeFile(file, JSON.stringify({ ...kernel, ssh: hostile[0] }), { mode: 0o600 })
    const result = await up([file, '--ssh-config', config])
    assert.equal(await exists(mark), false, 'the kernel file ran a command')
    assert.equal(result.code, 2, result.stdout)
    assert.match(result.stdout, /kernel-hostile\.json: field \\"ssh\\" must be an ssh destination/)
  })

  test('up host:PATH and --ssh with shell syntax: exit 2 naming the text or the option, nothing run', async () => {
    for (const ssh of hostile) {
      const remote = await up([
        `${ssh.replace(/:2222$/, '')}:/tmp/ipcontroller-client.json`,
        '--ssh-config',
        config,
      ])
      assert.equal(await exists(mark), false, `${ssh} as host:PATH ran a command`)
      assert.equal(remote.code, 2, `${ssh}: ${remote.stdout}${remote.stderr}`)
      assert.match(remote.stdout, /"code":"E_DESTINATION"/)
    }
    const file = join(dir, 'ipcontroller-client.json')
    await writeFile(file, JSON.stringify(client), { mode: 0o600 })
    for (const ssh of hostile) {
      const result = await up([file, '--ssh', ssh, '--ssh-config', config])
      assert.equal(await exists(mark), false, `--ssh ${ssh} ran a command`)
      assert.equal(result.code, 2, `${ssh}: ${result.stdout}${result.stderr}`)
      const event = JSON.parse(result.stdout) as { code: string; message: string }
      assert.equal(event.code, 'E_DESTINATION')
      assert.ok(event.message.startsWith('--ssh: bad ssh destination'), event.message)
    }
    assert.deepEqual((await readdir(dir)).sort(), [
      'ipcontroller-client.json',
      'kernel-hostile.json',
      'ssh_config',
    ])
  })
})
