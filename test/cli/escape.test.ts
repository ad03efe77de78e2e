import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { CLI, exited, JsonLines, runCli, spawnCli } from '../support/cli.js'
import { kernelListeners, sshArgsOf, startSshd, type KernelListeners, type Sshd } from '../support/index.js'
import { setUpOtpPam, type OtpPam } from '../support/otp.js'
import { runOnPty } from '../support/pty.js'

/** What a hostile server puts in front of its prompt: retitle the window, wipe the line, paint it, a C1 CSI. */
const HOSTILE = '\u001b]0;PWNED\u0007\u001b[2K\r\u001b[31mFAKE\u009b1m'
/** The same, as it must reach the terminal. */
const SHOWN = '\\x1b]0;PWNED\\x07\\x1b[2K\\x0d\\x1b[31mFAKE\\x9b1m'
/** The same in a one-line message (a log line, status): the carriage return is a space there, as a newline is. */
const SHOWN_ONE_LINE = '\\x1b]0;PWNED\\x07\\x1b[2K \\x1b[31mFAKE\\x9b1m One-time password'

/** Raw pieces of {@link HOSTILE} that no output of ours (readline's own line editing included) ever contains. */
function assertNoRawEscapes(text: string): void {
  for (const raw of ['\u001b]0;', '\u0007', '\u001b[31m', '\u009b', 'FAKE\u001b']) {
    assert.ok(!text.includes(raw), `raw ${JSON.stringify(raw)} reached the terminal: ${JSON.stringify(text)}`)
  }
}

function pattern(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/gu, '\\$&')
}

describe('what a server chooses reaches the terminal escaped; Ctrl-C at its prompt interrupts', () => {
  let otp: OtpPam
  let sshd: Sshd
  let dir: string
  let file: string
  let config: string
  let listeners: KernelListeners | undefined

  before(async () => {
    otp = await setUpOtpPam({ message: HOSTILE })
    sshd = await startSshd({
      pamService: otp.service,
      extraConfig: 'AuthenticationMethods keyboard-interactive',
    })
    dir = await mkdtemp(join(tmpdir(), 'ippt-escape-'))
    listeners = await kernelListeners()
    file = join(dir, 'kernel-esc.json')
    await writeFile(
      file,
      JSON.stringify({
        ...listeners.ports,
        ip: '127.0.0.1',
        key: 'k',
        transport: 'tcp',
        signature_scheme: 'hmac-sha256',
      }),
      { mode: 0o600 },
    )
    // `otp` is an alias: the server is root@127.0.0.1:PORT, which is what messages show
    config = join(dir, 'ssh_config')
    await writeFile(
      config,
      `Host otp\n  HostName ${sshd.host}\n  Port ${sshd.port}\n  User root\n  IdentityFile ${sshd.clientKey}\n  UserKnownHostsFile ${sshd.knownHostsFile}\n`,
    )
  })
  after(async () => {
    listeners?.close()
    await sshd.close()
    await otp.close()
    await rm(dir, { recursive: true, force: true })
  })

  test('up on a terminal: the prompt shown escaped; Ctrl-C at it → interrupted, exit 130', async () => {
    const result = await runOnPty(
      [
        process.execPath,
        CLI,
        'up',
        file,
        '--ssh',
        'otp',
        '--ssh-config',
        config,
        '--out',
        join(dir, 'up.json'),
      ],
      [
        { expect: pattern(SHOWN) },
        { expect: pattern("One-time password (OATH) for `root': "), keys: '\u0003' },
      ],
      { SSH_AUTH_SOCK: '' },
    )
    assert.equal(result.timedOut, false, result.output)
    assert.equal(result.steps, 2, result.output)
    assertNoRawEscapes(result.output)
    assert.match(result.output, /SIGINT: stopped while starting/u)
    assert.doesNotMatch(result.output, /nothing here can answer/u)
    assert.equal(result.code, 130, result.output)
  })

  test('watch waits for a login: its line and status show the prompt escaped and a command that pastes; login on a terminal shows it escaped, Ctrl-C → 130', async (t) => {
    const watched = join(dir, 'watched')
    await mkdir(watched, { mode: 0o700 })
    await writeFile(
      join(watched, 'kernel-w.json'),
      JSON.stringify({
        ...listeners?.ports,
        ip: '127.0.0.1',
        key: 'k',
        transport: 'tcp',
        signature_scheme: 'hmac-sha256',
      }),
      { mode: 0o600 },
    )
    const env = { IPP_TUNNEL_RUNTIME_DIR: join(dir, 'runtime'), SSH_AUTH_SOCK: '' }
    // human lines: what a service log (journal) gets
    const child = spawnCli(['watch', '--dir', watched, '--ssh', 'otp', '--ssh-config', config], env)
    t.after(async () => {
      child.kill('SIGTERM')
      await exited(child)
    })
    let stderr = ''
    const needed = await new Promise<string>((resolve) => {
      child.stderr?.on('data', (d: Buffer) => {
        stderr += d.toString()
        const line = stderr.split('\n').find((l) => l.includes('needs a login'))
        if (line !== undefined) resolve(line)
      })
    })
    assertNoRawEscapes(stderr)
    assert.ok(needed.includes(SHOWN_ONE_LINE), needed)
    assert.match(needed, /Answer in a terminal with: ipp-tunnel login otp$/u)

    const status = await runCli(['status', '--width', '0'], env)
    assert.equal(status.code, 0, status.stderr)
    assertNoRawEscapes(status.stdout)
    assert.ok(status.stdout.includes(SHOWN_ONE_LINE), status.stdout)
    assert.match(status.stdout, /answer with: ipp-tunnel login otp$/mu)

    const login = await runOnPty(
      [process.execPath, CLI, 'login', 'otp'],
      [{ expect: pattern(SHOWN) }, { expect: pattern("for `root': "), keys: '\u0003' }],
      env,
    )
    assert.equal(login.timedOut, false, login.output)
    assertNoRawEscapes(login.output)
    assert.match(login.output, /SIGINT: stopped/u)
    assert.equal(login.code, 130, login.output)

    // a name that matches no waiting link is an error, not a success
    const none = await runOnPty([process.execPath, CLI, 'login', 'nosuchhost'], [], env)
    assert.equal(none.code, 2, none.output)
    assert.match(none.output, /no link waiting for a login matches "nosuchhost"/u)
  })
})

describe('status: a remote file name that carries escapes', () => {
  let sshd: Sshd
  let dir: string
  let listeners: KernelListeners | undefined
  before(async () => {
    sshd = await startSshd({ extraConfig: 'Subsystem sftp internal-sftp' })
    dir = await mkdtemp(join(tmpdir(), 'ippt-escape-status-'))
    listeners = await kernelListeners()
  })
  after(async () => {
    listeners?.close()
    await sshd.close()
    await rm(dir, { recursive: true, force: true })
  })

  test('is shown escaped, and the remote-directory header stays whole', async (t) => {
    // a long directory: the REMOTE DIR column gets what the others leave, the header is not cut
    const remote = join(dir, 'a-rather-long-remote-directory-name', 'profile_default', 'security')
    await mkdir(remote, { recursive: true, mode: 0o700 })
    // `.` in the name patterns matches no line break: the rest of the hostile text
    const name = `kernel-${HOSTILE.replace('\r', '')}.json`
    await writeFile(
      join(remote, name),
      JSON.stringify({
        ...listeners?.ports,
        ip: '127.0.0.1',
        key: 'k',
        transport: 'tcp',
        signature_scheme: 'hmac-sha256',
      }),
      { mode: 0o600 },
    )
    const env = {
      IPP_TUNNEL_RUNTIME_DIR: join(dir, 'runtime'),
      JUPYTER_RUNTIME_DIR: join(dir, 'jupyter'),
      IPYTHONDIR: join(dir, 'ipython'),
    }
    const destination = `${sshd.user}@${sshd.host}:${sshd.port}`
    const child = spawnCli(
      ['watch', '--json', '--remote', `${destination}:${remote}`, '--poll', '200', ...sshArgsOf(sshd)],
      env,
    )
    t.after(async () => {
      child.kill('SIGTERM')
      await exited(child)
    })
    const events = new JsonLines(child)
    await events.next((e) => e.event === 'ready' && String(e.file).includes('PWNED'))

    const status = await runCli(['status'], env)
    assert.equal(status.code, 0, status.stderr)
    assertNoRawEscapes(status.stdout)
    assert.ok(status.stdout.includes(`kernel-${SHOWN.replace('\\x0d', '')}.json`), status.stdout)
    assert.match(status.stdout, /^REMOTE DIR +STATE +LAST POLL +FILES +ERRORS +LAST ERROR$/mu)
    for (const line of status.stdout.split('\n')) assert.ok(line.length <= 100, line)
  })
})
