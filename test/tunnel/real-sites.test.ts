import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'

import { exited, JsonLines, runCli, spawnCli } from '../support/cli.js'
import { startCluster, startSshd, type Cluster } from '../support/index.js'
import { clientApplyScript, runPython } from '../support/ipp.js'

const run = promisify(execFile)

async function applyOnEngines(file: string, engines: number): Promise<number[]> {
  const result = await runPython(clientApplyScript(file, engines))
  assert.equal(result.code, 0, `ipyparallel.Client failed:\n${result.stderr}`)
  return (JSON.parse(result.stdout) as { ids: number[] }).ids
}

function accepted(log: string): number {
  return log.match(/Accepted publickey/g)?.length ?? 0
}

describe('up at a site that ipp-tunnel cannot log in to by itself', () => {
  let cluster: Cluster
  let dir: string
  let config: string
  let askpass: string

  before(async () => {
    cluster = await startCluster({ engines: 2 })
    dir = await mkdtemp(join(tmpdir(), 'ippt-sites-'))
    const { sshd } = cluster
    askpass = join(dir, 'askpass')
    await writeFile(askpass, `#!/bin/sh\necho '${sshd.passphrase}'\n`)
    await chmod(askpass, 0o700)
    config = join(dir, 'ssh_config')
    // the only credential is an encrypted key whose passphrase only ssh gets (SSH_ASKPASS); ipp-tunnel has none
    await writeFile(
      config,
      [
        'Host cluster',
        `  HostName ${sshd.host}`,
        `  Port ${sshd.port}`,
        '  User root',
        `  IdentityFile ${join(dir, 'no-such-key')}`,
        '  IdentitiesOnly yes',
        `  UserKnownHostsFile ${sshd.knownHostsFile}`,
        '  ControlMaster auto',
        `  ControlPath ${dir}/cm-%C`,
        '',
      ].join('\n'),
    )
  })
  after(async () => {
    await run('ssh', ['-F', config, '-O', 'exit', 'cluster']).catch(() => undefined)
    await cluster.close()
    await rm(dir, { recursive: true, force: true })
  })

  test('through the user’s ControlMaster: ipyparallel.Client works, with no new login on the server', async () => {
    const { sshd, controller } = cluster
    const env = { SSH_AUTH_SOCK: '' }
    // without a master, ipp-tunnel has no way in (and `ControlMaster auto` does not make it start one)
    const none = await runCli(
      [
        'up',
        controller.clientFile,
        '--json',
        '--out',
        join(dir, 'none.json'),
        '--ssh',
        'cluster',
        '--ssh-config',
        config,
      ],
      env,
    )
    assert.equal(none.code, 1)
    assert.match(none.stdout, /E_IDENTITY/)

    await run(
      'ssh',
      ['-F', config, '-i', sshd.encryptedClientKey, '-fN', '-o', 'ControlPersist=yes', 'cluster'],
      {
        env: { ...process.env, SSH_ASKPASS: askpass, SSH_ASKPASS_REQUIRE: 'force', DISPLAY: ':0' },
      },
    )
    const logins = accepted(sshd.log())
    const out = join(dir, 'master.json')
    const child = spawnCli(
      ['up', controller.clientFile, '--json', '--out', out, '--ssh', 'cluster', '--ssh-config', config],
      env,
    )
    await new JsonLines(child).next('ready')
    assert.deepEqual(await applyOnEngines(out, 2), [0, 1])
    assert.equal(accepted(sshd.log()), logins)
    child.kill('SIGINT')
    assert.equal((await exited(child)).code, 0)
  })

  test('--proxy-command ssh -W through a jump host', async () => {
    const { sshd, controller } = cluster
    const jump = await startSshd()
    try {
      const out = join(dir, 'proxied.json')
      const proxy = `ssh -W %h:%p -F /dev/null -i ${jump.clientKey} -o UserKnownHostsFile=${jump.knownHostsFile} -o BatchMode=yes -p ${jump.port} root@${jump.host}`
      const child = spawnCli([
        'up',
        controller.clientFile,
        '--json',
        '--out',
        out,
        '--ssh',
        `root@${sshd.host}:${sshd.port}`,
        '--identity',
        sshd.clientKey,
        '--known-hosts',
        sshd.knownHostsFile,
        '--ssh-config',
        '/dev/null',
        '--transport',
        'ssh2',
        '--proxy-command',
        proxy,
      ])
      await new JsonLines(child).next('ready')
      assert.deepEqual(await applyOnEngines(out, 2), [0, 1])
      assert.equal(await jump.sessionCount(), 1)
      child.kill('SIGINT')
      assert.equal((await exited(child)).code, 0)
    } finally {
      await jump.close()
    }
  })
})
