import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'

import { CLI, JsonLines, exited, runCli, spawnCli } from '../support/cli.js'
import { startCaSshd } from '../support/ca.js'
import { kernelListeners, writeListenersFile } from '../support/index.js'
import { loginOnPty, runOnPty } from '../support/pty.js'

test('watch --credential-command: its question is answered through ipp-tunnel login, status shows the new certificate', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-watch-renew-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  // the key alone is refused: only a certificate gets in
  const { key, sshd, credentialCommand } = await startCaSshd(t, dir)
  const listeners = await kernelListeners()
  t.after(() => listeners.close())
  const files = join(dir, 'files')
  await mkdir(files, { mode: 0o700 })
  await writeListenersFile(join(files, 'kernel-renew.json'), listeners, `root@127.0.0.1:${sshd.port}`)
  const command = credentialCommand('renewed')
  const env = {
    IPP_TUNNEL_RUNTIME_DIR: join(dir, 'run'),
    JUPYTER_RUNTIME_DIR: join(dir, 'jrt'),
    SSH_AUTH_SOCK: '',
  }
  const auth = ['--identity', key, '--known-hosts', sshd.knownHostsFile, '--credential-command', command]
  const child = spawnCli(['watch', '--json', '--dir', files, '--out-dir', join(dir, 'out'), ...auth], env)
  t.after(async () => {
    child.kill('SIGTERM')
    await exited(child)
  })
  const events = new JsonLines(child)
  const needed = await events.next('auth-needed')
  assert.match(JSON.stringify(needed), /Code: /)
  const login = await loginOnPty('Code: ', '4242', env)
  assert.equal(login.code, 0, login.output)
  const next = await events.next(
    (e) => e.event === 'ready' || e.event === 'error' || e.event === 'file:error',
  )
  assert.equal(next.event, 'ready', JSON.stringify(events.events))
  assert.match(await readFile(`${key}-cert.pub`, 'utf8'), /^ssh-ed25519-cert-v01@openssh.com /)

  const status = await runCli(['status', '--json'], env)
  assert.equal(status.code, 0, status.stderr)
  const report = JSON.parse(status.stdout) as {
    files: { certificate?: { path: string; keyId: string; expires: string } }[]
  }
  const cert = report.files[0]?.certificate
  assert.equal(cert?.path, `${key}-cert.pub`)
  assert.equal(cert.keyId, 'renewed')
  assert.ok(Date.parse(cert.expires) > Date.now(), cert.expires)
  // valid 30 s: within the hour, so one warning names it
  const warning = await events.next('warning')
  assert.match(
    String(warning.message),
    /certificate \S+id_user-cert\.pub \(key id "renewed"\) for \S+ expires at /,
  )
})

test('up --credential-command: its question is asked on the terminal', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-up-renew-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const { key, sshd, credentialCommand } = await startCaSshd(t, dir)
  const listeners = await kernelListeners()
  t.after(() => listeners.close())
  const file = join(dir, 'kernel-up.json')
  await writeListenersFile(file, listeners, `root@127.0.0.1:${sshd.port}`)
  const command = credentialCommand('on-tty')
  const result = await runOnPty(
    [
      process.execPath,
      CLI,
      'up',
      file,
      '--out',
      join(dir, 'out.json'),
      '--identity',
      key,
      '--known-hosts',
      sshd.knownHostsFile,
      '--credential-command',
      command,
    ],
    [
      { expect: 'Code: ', send: '4242' },
      { expect: 'ready in', signal: 'INT' },
    ],
    { SSH_AUTH_SOCK: '' },
  )
  assert.equal(result.steps, 2, result.output)
  assert.match(await readFile(`${key}-cert.pub`, 'utf8'), /^ssh-ed25519-cert-v01@openssh.com /)
})
