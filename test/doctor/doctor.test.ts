import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'

import { RemoteProcesses } from '../../src/remote/index.js'
import { Link } from '../../src/ssh/index.js'

import { exited, runCli, type CliResult } from '../support/cli.js'
import {
  createNetns,
  freePort,
  hopOf,
  sshArgsOf,
  startSshd,
  type Netns,
  type Sshd,
} from '../support/index.js'
import { startController } from '../support/ipp.js'
import { startKernel, type Kernel } from '../support/kernel.js'

const run = promisify(execFile)

interface Step {
  readonly event: 'step'
  readonly name: string
  readonly verdict: 'pass' | 'fail' | 'warn' | 'skip'
  readonly detail: string
  readonly fix?: string
}

/** Every stdout line parsed (each must be JSON), the steps by name, and the summary. */
function parse(result: CliResult): { steps: Map<string, Step>; summary: Record<string, unknown> } {
  const lines = result.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>)
  const steps = new Map<string, Step>()
  for (const l of lines) if (l['event'] === 'step') steps.set(String(l['name']), l as unknown as Step)
  const summary = lines.at(-1) ?? {}
  assert.equal(summary['event'], 'summary', result.stdout)
  return { steps, summary }
}

/** Where the remote processes of these tests are kept on the server (none but the test's own). */
const REMOTE_DIR = join(tmpdir(), `ippt-doctor-remote-${String(process.pid)}`)

/** The CLI's doctor, with no ssh-agent of the test runner's in the way (or the one given). */
function doctor(args: readonly string[], agent = ''): Promise<CliResult> {
  return runCli(['doctor', ...args, '--remote-dir', REMOTE_DIR, '--python', '/usr/bin/python3'], {
    SSH_AUTH_SOCK: agent,
  })
}

function failing(steps: Map<string, Step>): string[] {
  return [...steps.values()].filter((s) => s.verdict === 'fail').map((s) => s.name)
}

describe('ipp-tunnel doctor against real sshd', () => {
  let ns: Netns
  let sshd: Sshd
  let bare: Sshd
  let kernel: Kernel
  let dir: string
  let dest: string
  let expiredKey: string
  let shortKey: string

  before(async () => {
    ns = await createNetns()
    dir = await mkdtemp(join(tmpdir(), 'ippt-doctor-'))
    const ca = join(dir, 'ca')
    expiredKey = join(dir, 'id_old')
    shortKey = join(dir, 'id_short')
    await Promise.all([
      run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', ca]),
      run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', expiredKey]),
      run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', shortKey]),
    ])
    await run('ssh-keygen', [
      '-q',
      '-s',
      ca,
      '-I',
      'short',
      '-n',
      'root',
      '-V',
      '-5m:+30m',
      `${shortKey}.pub`,
    ])
    await run('ssh-keygen', [
      '-q',
      '-s',
      ca,
      '-I',
      'old',
      '-n',
      'root',
      '-V',
      '20200101:20200102',
      `${expiredKey}.pub`,
    ])
    ;[sshd, bare, kernel] = await Promise.all([
      startSshd({ netns: ns, extraConfig: `Subsystem sftp internal-sftp\nTrustedUserCAKeys ${ca}.pub\n` }),
      // the default test config has no Subsystem line: no SFTP
      startSshd({ netns: ns, extraConfig: 'AllowStreamLocalForwarding no\n' }),
      startKernel({ netns: ns }),
    ])
    dest = `${sshd.user}@${sshd.host}:${sshd.port}`
  })
  after(async () => {
    await kernel.close()
    await Promise.all([sshd.close(), bare.close()])
    await ns.close()
    await rm(dir, { recursive: true, force: true })
    await rm(REMOTE_DIR, { recursive: true, force: true })
  })

  test('a kernel file through a good server: every step passes, exit 0, the HMAC key is never printed', async () => {
    const result = await doctor([kernel.file, '--ssh', dest, ...sshArgsOf(sshd), '--json'])
    assert.equal(result.code, 0, result.stdout + result.stderr)
    const { steps, summary } = parse(result)
    assert.deepEqual(failing(steps), [])
    assert.equal(summary['ok'], true)
    for (const name of [
      'ssh config',
      'agent and keys',
      'connect',
      'login',
      'sftp',
      'streamlocal',
      'heartbeat',
    ]) {
      assert.equal(steps.get(name)?.verdict, 'pass', `${name}: ${JSON.stringify(steps.get(name))}`)
    }
    for (const channel of ['shell', 'iopub', 'stdin', 'control', 'hb']) {
      assert.match(steps.get(`channel ${channel}`)?.detail ?? '', /ZMTP greeting read/)
    }
    assert.match(steps.get('host key')?.detail ?? '', new RegExp(`${sshd.knownHostsFile}:1$`))
    assert.match(
      steps.get('login')?.detail ?? '',
      /^server offers publickey; tried publickey: .*; accepted publickey/,
    )
    const { key } = JSON.parse(await readFile(kernel.file, 'utf8')) as { key: string }
    assert.ok(key.length > 0)
    assert.ok(!(result.stdout + result.stderr).includes(key), 'the HMAC key is printed')
  })

  test('a destination with an encrypted key: human lines, exit 0, the passphrase is never printed', async () => {
    const pp = join(dir, 'pp')
    await writeFile(pp, `${sshd.passphrase}\n`, { mode: 0o600 })
    const result = await doctor([
      dest,
      ...sshArgsOf(sshd, { identity: sshd.encryptedClientKey }),
      '--passphrase-file',
      pp,
    ])
    assert.equal(result.code, 0, result.stdout + result.stderr)
    assert.match(result.stdout, /^PASS {2}login: /mu)
    assert.match(result.stdout, /^PASS {2}agent and keys: .*id_ed25519_enc: ssh-ed25519 SHA256:/mu)
    assert.match(result.stdout, /all checks passed/)
    assert.ok(!(result.stdout + result.stderr).includes(sshd.passphrase), 'the passphrase is printed')
    const secret = await readFile(sshd.encryptedClientKey, 'utf8')
    const body = secret.split('\n')[1] ?? ''
    assert.ok(body.length > 20 && !result.stdout.includes(body), 'key material is printed')
  })

  test('a wrong host key: the host-key step fails with the fix, exit 4', async () => {
    const other = join(dir, 'other_host')
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other])
    const knownHosts = join(dir, 'known_hosts_wrong')
    const pub = (await readFile(`${other}.pub`, 'utf8')).split(' ').slice(0, 2).join(' ')
    await writeFile(knownHosts, `[${sshd.host}]:${sshd.port} ${pub}\n`)
    const result = await doctor([dest, ...sshArgsOf(sshd, { knownHosts }), '--json'])
    assert.equal(result.code, 4, result.stdout + result.stderr)
    const { steps } = parse(result)
    assert.deepEqual(failing(steps), ['host key'])
    assert.match(steps.get('host key')?.detail ?? '', /CHANGED/)
    assert.match(steps.get('host key')?.fix ?? '', /ssh-keygen -R/)
    assert.equal(steps.get('login')?.verdict, 'skip')
  })

  test('a refused port: the connect step fails with the fix, exit 4', async () => {
    const port = await freePort()
    const result = await doctor([`root@${sshd.host}:${port}`, ...sshArgsOf(sshd), '--json'])
    assert.equal(result.code, 4, result.stdout + result.stderr)
    const { steps } = parse(result)
    assert.deepEqual(failing(steps), ['connect'])
    assert.match(steps.get('connect')?.fix ?? '', new RegExp(`port ${port}`))
  })

  test('a server without SFTP or unix-socket forwarding: those two steps fail, exit 4', async () => {
    const result = await doctor([`${bare.user}@${bare.host}:${bare.port}`, ...sshArgsOf(bare), '--json'])
    assert.equal(result.code, 4, result.stdout + result.stderr)
    const { steps } = parse(result)
    assert.deepEqual(failing(steps), ['sftp', 'streamlocal'])
    assert.match(steps.get('sftp')?.fix ?? '', /Subsystem sftp/)
    assert.match(steps.get('streamlocal')?.fix ?? '', /AllowStreamLocalForwarding/)
  })

  test('an expired certificate: the certificate and login steps fail with the fix, exit 4', async () => {
    const result = await doctor([dest, ...sshArgsOf(sshd, { identity: expiredKey }), '--json'])
    assert.equal(result.code, 4, result.stdout + result.stderr)
    const { steps } = parse(result)
    assert.deepEqual(failing(steps), ['certificates', 'login'])
    assert.match(steps.get('certificates')?.detail ?? '', /is expired: valid from 2020-01-01/)
    assert.match(steps.get('login')?.fix ?? '', /new certificate/)
  })

  test('an ssh_config alias: the Host block that applied is named by file:line', async () => {
    const config = join(dir, 'ssh_config')
    await writeFile(
      config,
      [
        'Host elsewhere',
        '  Port 1',
        'Host cluster',
        `  HostName ${sshd.host}`,
        `  Port ${sshd.port}`,
        '  User root',
        `  IdentityFile ${sshd.clientKey}`,
        `  UserKnownHostsFile ${sshd.knownHostsFile}`,
        'Host *',
        '  ServerAliveInterval 7',
        '',
      ].join('\n'),
    )
    const result = await doctor(['cluster', '--ssh-config', config, '--json'])
    assert.equal(result.code, 0, result.stdout + result.stderr)
    const { steps } = parse(result)
    const detail = steps.get('ssh config')?.detail ?? ''
    assert.match(detail, new RegExp(`^root@${sshd.host}:${sshd.port} \\(cluster\\); `))
    assert.match(detail, new RegExp(`blocks ${config}:3 Host cluster; ${config}:9 Host \\*;`))
  })

  test("a controller's client file (its ssh field names the server): the controller answers, no engine yet is a warning", async (t) => {
    const controller = await startController({ netns: ns, ssh: dest })
    t.after(() => controller.close())
    const result = await doctor([controller.clientFile, ...sshArgsOf(sshd), '--json'])
    assert.equal(result.code, 0, result.stdout + result.stderr)
    const { steps } = parse(result)
    assert.deepEqual(failing(steps), [])
    assert.match(
      steps.get('connection file')?.detail ?? '',
      new RegExp(`ipp-client, \\d+ endpoints, through ${dest}`),
    )
    assert.equal(steps.get('channel registration')?.verdict, 'pass')
    assert.deepEqual(
      { verdict: steps.get('engines')?.verdict, detail: steps.get('engines')?.detail },
      { verdict: 'warn', detail: 'the controller answers, with no engine registered' },
    )
  })

  test('an ipc kernel file: each channel is a unix socket reached by direct-streamlocal', async (t) => {
    const ipc = await startKernel({ netns: ns, transport: 'ipc' })
    t.after(() => ipc.close())
    const result = await doctor([ipc.file, '--ssh', dest, ...sshArgsOf(sshd), '--json'])
    assert.equal(result.code, 0, result.stdout + result.stderr)
    const { steps } = parse(result)
    assert.deepEqual(failing(steps), [])
    assert.match(steps.get('channel shell')?.detail ?? '', /kernel-test-ipc-\d+: opened, ZMTP greeting read$/)
    assert.equal(steps.get('heartbeat')?.verdict, 'pass')
  })

  test('a certificate that ends within the hour: a warning with the fix, the login passes, exit 0', async () => {
    const result = await doctor([dest, ...sshArgsOf(sshd, { identity: shortKey }), '--json'])
    assert.equal(result.code, 0, result.stdout + result.stderr)
    const { steps } = parse(result)
    assert.equal(steps.get('certificates')?.verdict, 'warn')
    assert.match(steps.get('certificates')?.detail ?? '', /key id "short".*\(expires in (29|30) min\)$/)
    assert.match(steps.get('certificates')?.fix ?? '', /new certificate/)
    assert.match(steps.get('login')?.detail ?? '', /accepted publickey: certificate .*id_short-cert\.pub$/)
  })

  test("an ssh-agent: its keys are listed by fingerprint, and the login names the agent's key", async (t) => {
    const sock = join(dir, 'agent.sock')
    const agent = spawn('ssh-agent', ['-D', '-a', sock], { stdio: ['ignore', 'pipe', 'ignore'] })
    t.after(async () => {
      agent.kill('SIGTERM')
      await exited(agent)
    })
    // it prints SSH_AUTH_SOCK=… once it listens
    await once(agent.stdout, 'data')
    await run('ssh-add', [sshd.clientKey], { env: { ...process.env, SSH_AUTH_SOCK: sock } })
    const result = await doctor(
      [dest, '--known-hosts', sshd.knownHostsFile, '--ssh-config', '/dev/null', '--json'],
      sock,
    )
    assert.equal(result.code, 0, result.stdout + result.stderr)
    const { steps } = parse(result)
    const pub = (await readFile(`${sshd.clientKey}.pub`, 'utf8')).split(' ')[1] ?? ''
    const { stdout } = await run('ssh-keygen', ['-lf', `${sshd.clientKey}.pub`])
    const fingerprint = stdout.split(' ')[1] ?? ''
    assert.match(
      steps.get('agent and keys')?.detail ?? '',
      new RegExp(`^ssh-agent ${sock}: ssh-ed25519 ${fingerprint.replace(/[+/]/g, '\\$&')}`),
    )
    assert.match(steps.get('login')?.detail ?? '', /accepted publickey: ssh-agent/)
    assert.ok(pub.length > 20 && !result.stdout.includes(pub), 'the public key blob is printed')
  })

  test('our processes there: one that something else killed is named with the way out, exit 4', async (t) => {
    const link = new Link({ hops: [hopOf(sshd)] }, { agent: false })
    t.after(() => link.close())
    await link.connect()
    const procs = new RemoteProcesses(link, { dir: REMOTE_DIR, python: '/usr/bin/python3' })
    const name = 'cluster-default-controller'
    const started = await procs.start({ name, argv: ['sleep', '300'] })
    t.after(() =>
      procs.stop(name).then(
        () => undefined,
        () => undefined,
      ),
    )
    const healthy = parse(await doctor([dest, ...sshArgsOf(sshd), '--json']))
    assert.equal(healthy.steps.get('remote processes')?.verdict, 'pass')
    assert.match(
      healthy.steps.get('remote processes')?.detail ?? '',
      /1 running \(cluster-default-controller\)/u,
    )

    // what a login node's reaper does: a SIGKILL from outside, not a stop of ours
    process.kill(started.pid ?? assert.fail('no pid'), 'SIGKILL')
    for (let i = 0; (await procs.status(name)).state === 'running'; i++) {
      assert.ok(i < 100, 'the supervisor did not see its process end')
      await sleep(50)
    }
    const result = await doctor([dest, ...sshArgsOf(sshd), '--json'])
    assert.equal(result.code, 4, result.stdout + result.stderr)
    const step = parse(result).steps.get('remote processes') ?? assert.fail('no remote processes step')
    assert.equal(step.verdict, 'fail')
    assert.match(
      step.detail,
      /^cluster-default-controller on \S+ \(pid \d+, started [^)]+\) killed by signal 9$/u,
    )
    assert.match(step.fix ?? '', /--controller slurm/u)
  })
})
