import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'

import { JsonLines, exited, spawnCli } from '../support/cli.js'
import { kernelListeners, writeListenersFile } from '../support/index.js'
import { startOtpSshd } from '../support/otp.js'
import { literal, loginOnPty } from '../support/pty.js'

test('watch --remote ALIAS:DIR, a pulled file naming the same server by its address: one link, one code', async (t) => {
  const { otp, sshd } = await startOtpSshd(t, { extraConfig: 'Subsystem sftp internal-sftp' })
  const dir = await mkdtemp(join(tmpdir(), 'ippt-rw-otp-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const listeners = await kernelListeners()
  t.after(() => listeners.close())
  const remote = join(dir, 'remote')
  await mkdir(remote, { mode: 0o700 })
  // the alias names the server as "localhost"; the file names it by address
  const config = join(dir, 'ssh_config')
  await writeFile(config, `Host otpalias\n  HostName localhost\n  Port ${sshd.port}\n  User root\n`)
  const knownHosts = join(dir, 'known_hosts')
  const key = (await readFile(sshd.knownHostsFile, 'utf8')).trim().split(/\s+/u).slice(1).join(' ')
  await writeFile(knownHosts, `[localhost]:${sshd.port} ${key}\n[127.0.0.1]:${sshd.port} ${key}\n`)
  await writeListenersFile(join(remote, 'kernel-otp.json'), listeners, `root@127.0.0.1:${sshd.port}`)
  const env = {
    IPP_TUNNEL_RUNTIME_DIR: join(dir, 'run'),
    JUPYTER_RUNTIME_DIR: join(dir, 'jrt'),
    SSH_AUTH_SOCK: '',
  }
  const auth = ['--identity', sshd.clientKey, '--known-hosts', knownHosts, '--ssh-config', config]
  const child = spawnCli(['watch', '--json', '--remote', `otpalias:${remote}`, '--poll', '200', ...auth], env)
  t.after(async () => {
    child.kill('SIGTERM')
    await exited(child)
  })
  const events = new JsonLines(child)
  await events.next('auth-needed')
  const code = await otp.code(await otp.counter())
  const login = await loginOnPty(literal(otp.prompt), code, env)
  assert.equal(login.code, 0, login.output)
  const next = await events.next(
    (e) =>
      e.event === 'ready' ||
      e.event === 'error' ||
      (e.event === 'auth-needed' && events.events.filter((x) => x.event === 'auth-needed').length > 1),
  )
  assert.equal(next.event, 'ready', JSON.stringify(events.events))
  assert.equal(sshd.log().match(/Accepted keyboard-interactive/gu)?.length, 1, sshd.log())
  assert.equal(await sshd.sessionCount(), 1)
})
