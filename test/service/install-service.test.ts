import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { access, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { renderUnit } from '../../src/service/index.js'
import { CLI, REPO_ROOT, runCli } from '../support/cli.js'

/** systemd's own check of a unit file: exit status and everything it complained about. */
function verify(path: string): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile('systemd-analyze', ['verify', path], (err, _stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stderr })
    })
  })
}

function execStartOf(unit: string): string | undefined {
  return /^ExecStart=(.*)$/m.exec(unit)?.[1]
}

describe('ipp-tunnel install-service and the systemd user unit', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ippt-unit-'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  test('writes a unit systemd accepts, running this node and this ipp-tunnel, and says how to enable it', async () => {
    const config = join(dir, 'config')
    const result = await runCli(['install-service'], { XDG_CONFIG_HOME: config, IPYTHONDIR: '' })
    assert.equal(result.code, 0, result.stderr)
    const path = join(config, 'systemd', 'user', 'ipp-tunnel.service')
    assert.ok(result.stdout.includes(path), result.stdout)
    assert.ok(result.stdout.includes('systemctl --user enable --now ipp-tunnel'), result.stdout)
    const unit = await readFile(path, 'utf8')
    assert.equal(execStartOf(unit), `${process.execPath} ${CLI} watch`)
    assert.match(unit, /^Restart=on-failure$/m)
    assert.match(unit, /^KillSignal=SIGTERM$/m)
    assert.match(unit, /^WantedBy=default\.target$/m)
    assert.deepEqual(await verify(path), { code: 0, stderr: '' })
  })

  test('watch options and the environment that says where files are go into the unit', async () => {
    const config = join(dir, 'config2')
    const ipython = join(dir, 'ipython dir')
    const result = await runCli(['install-service', '--profile', 'big', '--dir', '/srv/kernels'], {
      XDG_CONFIG_HOME: config,
      IPYTHONDIR: ipython,
    })
    assert.equal(result.code, 0, result.stderr)
    const path = join(config, 'systemd', 'user', 'ipp-tunnel.service')
    const unit = await readFile(path, 'utf8')
    assert.equal(execStartOf(unit), `${process.execPath} ${CLI} watch --profile big --dir /srv/kernels`)
    assert.ok(unit.includes(`Environment="IPYTHONDIR=${ipython}"`), unit)
    assert.deepEqual(await verify(path), { code: 0, stderr: '' })
  })

  test('relative paths become absolute; ssh options and IPYTHONDIR travel into the unit', async () => {
    const config = join(dir, 'config-rel')
    const result = await runCli(
      [
        'install-service',
        '--dir',
        './rel',
        '--out-dir',
        'copies',
        '--ssh',
        'me@login.example.org:2222',
        '-i',
        'keys/id_ed25519',
        '--known-hosts',
        'kh',
        '--passphrase-file',
        'pass.txt',
        '--ssh-config',
        'cfg',
        '--host-key-check',
        'accept-new',
      ],
      { XDG_CONFIG_HOME: config, IPYTHONDIR: 'ipy', SSH_AUTH_SOCK: '/tmp/agent-of-this-shell' },
    )
    assert.equal(result.code, 0, result.stderr)
    const unit = await readFile(join(config, 'systemd', 'user', 'ipp-tunnel.service'), 'utf8')
    const want = [
      `${process.execPath} ${CLI} watch`,
      `--dir ${resolve('rel')} --out-dir ${resolve('copies')}`,
      `--ssh me@login.example.org:2222 --identity ${resolve('keys/id_ed25519')} --known-hosts ${resolve('kh')}`,
      `--host-key-check accept-new --passphrase-file ${resolve('pass.txt')} --ssh-config ${resolve('cfg')}`,
    ].join(' ')
    assert.equal(execStartOf(unit), want)
    assert.ok(unit.includes(`Environment=IPYTHONDIR=${resolve('ipy')}`), unit)
    assert.doesNotMatch(unit, /^Environment=SSH_AUTH_SOCK/m, 'the agent is passed only when asked')
    assert.match(result.stdout, /ssh-agent/)
    assert.deepEqual(await verify(join(config, 'systemd', 'user', 'ipp-tunnel.service')), {
      code: 0,
      stderr: '',
    })
  })

  test('every option watch takes goes into the unit; what watch would refuse is refused here', async () => {
    const env = { XDG_CONFIG_HOME: join(dir, 'unused-all'), IPYTHONDIR: '' }
    const given: Record<string, string[]> = {
      listen: ['--listen', 'unix'],
      profile: ['--profile', 'big'],
      dir: ['--dir', 'kernels'],
      'out-dir': ['--out-dir', 'copies'],
      remote: ['--remote', 'me@login.example.org:2222:~/.ipython/profile_x/security'],
      'remote-profile': ['--remote-profile', 'x'],
      poll: ['--poll', '250'],
      ssh: ['--ssh', 'me@login.example.org'],
      identity: ['--identity', 'id_ed25519'],
      'known-hosts': ['--known-hosts', 'kh'],
      'host-key-check': ['--host-key-check', 'off'],
      'passphrase-file': ['--passphrase-file', 'pass.txt'],
      'ssh-config': ['--ssh-config', 'cfg'],
      'proxy-command': ['--proxy-command', 'ssh -W %h:%p jump'],
      transport: ['--transport', 'ssh2'],
      'credential-command': ['--credential-command', 'sshproxy -u %r'],
      'renew-before': ['--renew-before', '900'],
      'renew-min-interval': ['--renew-min-interval', '7200'],
      verbose: ['--verbose', '--verbose'],
    }
    // the options watch's own help lists: a new one not given above fails here
    const help = await runCli(['watch', '--help'])
    const listed = [...help.stdout.matchAll(/--([\w-]+)/g)].map((m) => m[1] ?? '')
    const own = new Set(['json', 'debug', 'help', 'version'])
    assert.deepEqual([...new Set(listed.filter((o) => !own.has(o)))].sort(), Object.keys(given).sort())
    const result = await runCli(['install-service', '--print', ...Object.values(given).flat()], env)
    assert.equal(result.code, 0, result.stderr)
    const want = [
      `${process.execPath} ${CLI} watch --listen unix --profile big --dir ${resolve('kernels')}`,
      `--out-dir ${resolve('copies')} --remote me@login.example.org:2222:~/.ipython/profile_x/security`,
      '--remote-profile x --poll 250 --ssh me@login.example.org',
      `--identity ${resolve('id_ed25519')} --known-hosts ${resolve('kh')} --host-key-check off`,
      `--passphrase-file ${resolve('pass.txt')} --ssh-config ${resolve('cfg')}`,
      '--proxy-command "ssh -W %%h:%%p jump" --transport ssh2 --credential-command "sshproxy -u %%r"',
      '--renew-before 900 --renew-min-interval 7200 --verbose --verbose',
    ].join(' ')
    assert.equal(execStartOf(result.stdout), want)
    const path = join(dir, 'all-options.service')
    await writeFile(path, result.stdout)
    assert.deepEqual(await verify(path), { code: 0, stderr: '' })

    const lonely = await runCli(['install-service', '--print', '--remote-profile', 'x'], env)
    assert.equal(lonely.code, 2, lonely.stderr)
    assert.match(lonely.stderr, /--remote-profile needs --remote host/)
    const poll = await runCli(['install-service', '--print', '--remote', 'h', '--poll', '1.5'], env)
    assert.equal(poll.code, 2, poll.stderr)
    assert.match(poll.stderr, /--poll 1\.5/)
  })

  test('an existing unit is kept unless --force', async () => {
    const config = join(dir, 'config-force')
    const path = join(config, 'systemd', 'user', 'ipp-tunnel.service')
    const env = { XDG_CONFIG_HOME: config, IPYTHONDIR: '' }
    assert.equal((await runCli(['install-service'], env)).code, 0)
    await writeFile(path, '# my own edits\n')
    const again = await runCli(['install-service', '--profile', 'other'], env)
    assert.equal(again.code, 2, again.stderr)
    assert.equal(again.stderr.trimEnd().split('\n').length, 1, again.stderr)
    assert.ok(again.stderr.includes(path), again.stderr)
    assert.match(again.stderr, /--force/)
    assert.equal(await readFile(path, 'utf8'), '# my own edits\n')
    const forced = await runCli(['install-service', '--profile', 'other', '--force'], env)
    assert.equal(forced.code, 0, forced.stderr)
    assert.equal(
      execStartOf(await readFile(path, 'utf8')),
      `${process.execPath} ${CLI} watch --profile other`,
    )
  })

  test('the ssh-agent socket goes into the unit when asked: --ssh-auth-sock PATH or --pass-agent', async () => {
    const env = {
      XDG_CONFIG_HOME: join(dir, 'unused'),
      IPYTHONDIR: '',
      SSH_AUTH_SOCK: '/run/user/1000/agent.sock',
    }
    const given = await runCli(
      ['install-service', '--print', '--ssh-auth-sock', '/run/user/1000/ssh-agent.socket'],
      env,
    )
    assert.equal(given.code, 0, given.stderr)
    assert.match(given.stdout, /^Environment=SSH_AUTH_SOCK=\/run\/user\/1000\/ssh-agent\.socket$/m)
    const passed = await runCli(['install-service', '--print', '--pass-agent'], env)
    assert.equal(passed.code, 0, passed.stderr)
    assert.match(passed.stdout, /^Environment=SSH_AUTH_SOCK=\/run\/user\/1000\/agent\.sock$/m)
    const none = await runCli(['install-service', '--print', '--pass-agent'], { ...env, SSH_AUTH_SOCK: '' })
    assert.equal(none.code, 2)
    assert.match(none.stderr, /SSH_AUTH_SOCK is not set/)
    const path = join(dir, 'agent.service')
    await writeFile(path, passed.stdout)
    assert.deepEqual(await verify(path), { code: 0, stderr: '' })
  })

  test('--print only prints', async () => {
    const config = join(dir, 'config3')
    const result = await runCli(['install-service', '--print'], { XDG_CONFIG_HOME: config, IPYTHONDIR: '' })
    assert.equal(result.code, 0, result.stderr)
    assert.match(result.stdout, /^\[Service\]$/m)
    assert.equal(execStartOf(result.stdout), `${process.execPath} ${CLI} watch`)
    await assert.rejects(access(config))
  })

  test('paths with spaces and percent signs are quoted so systemd runs the right program', async () => {
    const odd = join(dir, 'node 100% here')
    await mkdir(odd)
    await symlink(process.execPath, join(odd, 'node'))
    const unit = renderUnit({ execStart: [join(odd, 'node'), CLI, 'watch'] })
    assert.equal(execStartOf(unit), `"${join(dir, 'node 100%% here', 'node')}" ${CLI} watch`)
    const path = join(dir, 'ipp-tunnel.service')
    await writeFile(path, unit)
    assert.deepEqual(await verify(path), { code: 0, stderr: '' })
  })

  test('systemd reads each word back as given: $ doubled in arguments, control characters escaped, no line injected', async () => {
    const odd = join(dir, 'a $dollar dir')
    await mkdir(odd)
    await symlink(process.execPath, join(odd, 'node'))
    const injected = '/tmp/x\nExecStartPre=/bin/touch /tmp/ippt-PWNED'
    const unit = renderUnit({
      execStart: [
        join(odd, 'node'),
        CLI,
        'watch',
        '--dir',
        '/srv/$HOME/${USER}',
        '--dir',
        injected,
        ';',
        "it's",
      ],
      environment: { IPYTHONDIR: '/srv/$HOME' },
    })
    assert.deepEqual(
      unit.split('\n').filter((l) => /^Exec/.test(l)),
      [
        `ExecStart="${join(dir, 'a $dollar dir', 'node')}" ${CLI} watch --dir /srv/$$HOME/$\${USER} --dir "/tmp/x\\u000aExecStartPre=/bin/touch /tmp/ippt-PWNED" ";" "it's"`,
      ],
    )
    // in Environment= "$" means nothing to systemd
    assert.ok(unit.includes('Environment=IPYTHONDIR=/srv/$HOME\n'), unit)
    const path = join(dir, 'odd.service')
    await writeFile(path, unit)
    assert.deepEqual(await verify(path), { code: 0, stderr: '' })
    // systemd cannot hold a control character in the program or an Environment= value: refused, not mangled
    assert.throws(() => renderUnit({ execStart: ['/usr/bin/node\n', 'watch'] }), { code: 'E_USAGE' })
    assert.throws(
      () => renderUnit({ execStart: ['/usr/bin/node'], environment: { IPYTHONDIR: 'a\nExecStartPre=x' } }),
      { code: 'E_USAGE', message: /Environment= value .* holds a control character/ },
    )
    const printed = await runCli(['install-service', '--print', '--dir', injected], {
      XDG_CONFIG_HOME: join(dir, 'config-inject'),
      IPYTHONDIR: '',
    })
    assert.equal(printed.code, 0, printed.stderr)
    assert.doesNotMatch(printed.stdout, /^ExecStartPre/m)
  })

  test('the unit in the repository is the same template, for copying by hand', async () => {
    const path = join(REPO_ROOT, 'scripts', 'systemd', 'ipp-tunnel.service')
    const text = await readFile(path, 'utf8')
    assert.equal(text, renderUnit({ execStart: ['/usr/bin/env', 'ipp-tunnel', 'watch'] }))
    assert.deepEqual(await verify(path), { code: 0, stderr: '' })
  })
})
