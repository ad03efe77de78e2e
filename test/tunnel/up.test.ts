import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { hostname, tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'

import { exited, JsonLines, runCli, spawnCli } from '../support/cli.js'
import {
  canConnect,
  portOf,
  sshArgsOf,
  startCluster,
  startSshd,
  type Cluster,
  type Netns,
  type Sshd,
  exists,
} from '../support/index.js'
import { clientApplyScript, runPython, type Controller } from '../support/ipp.js'

const run = promisify(execFile)

interface Forward {
  channel: string
  local: string
  remote: string
}

async function applyOnEngines(
  file: string,
  engines: number,
  env: NodeJS.ProcessEnv = {},
): Promise<{ ids: number[]; results: number[] }> {
  const result = await runPython(clientApplyScript(file, engines), { env })
  assert.equal(result.code, 0, `ipyparallel.Client failed:\n${result.stderr}`)
  return JSON.parse(result.stdout) as { ids: number[]; results: number[] }
}

describe('ipp-tunnel up against sshd + ipcontroller in their own network namespace', () => {
  let cluster: Cluster
  let ns: Netns
  let sshd: Sshd
  let controller: Controller
  let dir: string
  let auth: string[]

  before(async () => {
    cluster = await startCluster({ engines: 2 })
    ;({ ns, sshd, controller } = cluster)
    dir = await mkdtemp(join(tmpdir(), 'ippt-up-'))
    auth = sshArgsOf(sshd)
  })
  after(async () => {
    await cluster.close()
    await rm(dir, { recursive: true, force: true })
  })

  test('the controller is out of reach from the host except through ssh', async () => {
    const info = JSON.parse(await readFile(controller.clientFile, 'utf8')) as { registration: number }
    // the controller listens on the namespace's loopback: nothing answers on the host's
    assert.equal(await canConnect(info.registration), false)
  })

  test('the real ipyparallel.Client runs apply_sync on every engine through the tunnel; SIGINT cleans up', async () => {
    const out = join(dir, 'client.json')
    const child = spawnCli(['up', controller.clientFile, '--json', '--out', out, ...auth])
    const events = new JsonLines(child)
    const ready = await events.next('ready')
    assert.equal(ready.out, out)
    assert.equal(typeof ready.ms, 'number')
    const forwards = ready.forwards as Forward[]
    assert.deepEqual(forwards.map((f) => f.channel).sort(), [
      'broadcast',
      'control',
      'iopub',
      'mux',
      'notification',
      'registration',
      'task',
    ])
    for (const f of forwards) assert.match(f.local, /^127\.0\.0\.1:\d+$/)

    const copy = JSON.parse(await readFile(out, 'utf8')) as Record<string, unknown>
    assert.equal(copy.ssh, '')
    // as ipcontroller writes it: ipyparallel's Client compares it with socket.gethostname()
    assert.equal(copy.location, hostname())
    assert.equal(copy.registration, portOf(forwards.find((f) => f.channel === 'registration')?.local ?? ''))
    assert.equal((await stat(out)).mode & 0o777, 0o600)

    const { ids, results } = await applyOnEngines(out, 2, { PYTHONWARNINGS: 'error::RuntimeWarning' })
    assert.deepEqual(ids, [0, 1])
    assert.equal(new Set(results).size, 2)
    assert.equal(await sshd.sessionCount(), 1, 'every forward rides one SSH connection')

    child.kill('SIGINT')
    assert.deepEqual(await exited(child), { code: 0, signal: null })
    assert.equal((await events.next('closed')).file, controller.clientFile)
    assert.equal(await exists(out), false, 'the loopback file is removed')
    for (const f of forwards) assert.equal(await canConnect(portOf(f.local)), false, `${f.channel} closed`)
  })

  test('a dropped SSH connection is survived on the same local ports', async () => {
    const out = join(dir, 'drop.json')
    const child = spawnCli(['up', controller.clientFile, '--json', '--out', out, ...auth])
    const events = new JsonLines(child)
    const ready = await events.next('ready')
    const before = await readFile(out, 'utf8')
    await applyOnEngines(out, 2)

    await sshd.killConnections()
    const reconnecting = await events.next('reconnecting')
    assert.match(String(reconnecting.message), /lost/)
    await events.next('reconnected')

    assert.equal(await readFile(out, 'utf8'), before, 'the loopback file stays valid')
    for (const f of ready.forwards as Forward[]) assert.ok(await canConnect(portOf(f.local)), f.channel)
    assert.deepEqual((await applyOnEngines(out, 2)).ids, [0, 1])
    assert.equal(await sshd.sessionCount(), 1)
    child.kill('SIGTERM')
    assert.equal((await exited(child)).code, 0)
  })

  test('an unknown host key is refused with its SHA256 fingerprint, and nothing is forwarded', async () => {
    const empty = join(dir, 'known_hosts_empty')
    await writeFile(empty, '')
    const out = join(dir, 'unknown.json')
    const result = await runCli([
      'up',
      controller.clientFile,
      '--out',
      out,
      '--identity',
      sshd.clientKey,
      '--known-hosts',
      empty,
      '--ssh-config',
      '/dev/null',
    ])
    assert.equal(result.code, 1)
    const { stdout: fingerprint } = await run('ssh-keygen', ['-lf', sshd.knownHostsFile])
    const sha = /SHA256:\S+/.exec(fingerprint)?.[0] ?? 'no fingerprint'
    assert.ok(result.stderr.includes(sha), `stderr names ${sha}: ${result.stderr}`)
    assert.match(result.stderr, /host key for \[.*\]:\d+ not in .*known_hosts_empty/)
    assert.doesNotMatch(result.stderr, /\n\s+at /)
    assert.equal(await exists(out), false)
  })

  test('a changed host key is refused, naming both fingerprints', async () => {
    const other = join(dir, 'other_key')
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other])
    const pub = (await readFile(`${other}.pub`, 'utf8')).split(' ').slice(0, 2).join(' ')
    const wrong = join(dir, 'known_hosts_wrong')
    await writeFile(wrong, `[${sshd.host}]:${sshd.port} ${pub}\n`)
    const out = join(dir, 'mismatch.json')
    const result = await runCli([
      'up',
      controller.clientFile,
      '--json',
      '--out',
      out,
      '--identity',
      sshd.clientKey,
      '--known-hosts',
      wrong,
      '--ssh-config',
      '/dev/null',
    ])
    assert.equal(result.code, 1)
    const event = JSON.parse(result.stdout.trim().split('\n').at(-1) ?? '{}') as Record<string, string>
    assert.equal(event.event, 'error')
    assert.equal(event.code, 'E_HOSTKEY_MISMATCH')
    const { stdout: offered } = await run('ssh-keygen', ['-lf', sshd.knownHostsFile])
    assert.ok(event.message?.includes(/SHA256:\S+/.exec(offered)?.[0] ?? '?'), event.message)
    assert.equal(await exists(out), false)
  })

  test('accept-new records an unknown key, and the next strict run trusts it', async () => {
    const fresh = join(dir, 'known_hosts_fresh')
    const out = join(dir, 'accept.json')
    const args = [
      'up',
      controller.clientFile,
      '--json',
      '--out',
      out,
      '--identity',
      sshd.clientKey,
      '--ssh-config',
      '/dev/null',
      '--known-hosts',
      fresh,
    ]
    const first = spawnCli([...args, '--host-key-check', 'accept-new'])
    await new JsonLines(first).next('ready')
    first.kill('SIGINT')
    assert.equal((await exited(first)).code, 0)
    const { stdout } = await run('ssh-keygen', ['-F', `[${sshd.host}]:${sshd.port}`, '-f', fresh])
    assert.match(stdout, /ssh-ed25519/)
    const second = spawnCli(args)
    await new JsonLines(second).next('ready')
    second.kill('SIGINT')
    assert.equal((await exited(second)).code, 0)
  })

  test('a key the server does not accept is a clear authentication error', async () => {
    const stranger = join(dir, 'stranger')
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', stranger])
    const result = await runCli([
      'up',
      controller.clientFile,
      '--json',
      '--out',
      join(dir, 'auth.json'),
      '--identity',
      stranger,
      '--known-hosts',
      sshd.knownHostsFile,
      '--ssh-config',
      '/dev/null',
    ])
    assert.equal(result.code, 1)
    const event = JSON.parse(result.stdout.trim()) as Record<string, string>
    assert.equal(event.code, 'E_AUTH')
    assert.ok(event.message?.includes(stranger), event.message)
  })

  test('an encrypted key opens with --passphrase-file and, without a passphrase, fails at once', async () => {
    const secret = join(dir, 'passphrase')
    await writeFile(secret, `${sshd.passphrase}\n`, { mode: 0o600 })
    const base = [
      'up',
      controller.clientFile,
      '--json',
      '--identity',
      sshd.encryptedClientKey,
      '--known-hosts',
      sshd.knownHostsFile,
      '--ssh-config',
      '/dev/null',
    ]
    const unlocked = spawnCli([...base, '--out', join(dir, 'pp.json'), '--passphrase-file', secret])
    await new JsonLines(unlocked).next('ready')
    unlocked.kill('SIGINT')
    assert.equal((await exited(unlocked)).code, 0)

    const locked = await runCli([...base, '--out', join(dir, 'locked.json')])
    assert.equal(locked.code, 1)
    const event = JSON.parse(locked.stdout.trim()) as Record<string, string>
    assert.equal(event.code, 'E_PASSPHRASE')
    assert.match(event.message ?? '', /--passphrase-file/)
  })

  test('ProxyJump from ~/.ssh/config through a second sshd on the host', async () => {
    const jump = await startSshd()
    try {
      const config = join(dir, 'ssh_config')
      await writeFile(
        config,
        [
          'Host jumpbox',
          `  HostName ${jump.host}`,
          `  Port ${jump.port}`,
          '  User root',
          `  IdentityFile ${jump.clientKey}`,
          `  UserKnownHostsFile ${jump.knownHostsFile}`,
          'Host cluster',
          `  HostName ${sshd.host}`,
          `  Port ${sshd.port}`,
          '  User root',
          '  ProxyJump jumpbox',
          `  IdentityFile ${sshd.clientKey}`,
          `  UserKnownHostsFile ${sshd.knownHostsFile}`,
          '',
        ].join('\n'),
      )
      const out = join(dir, 'jump.json')
      const child = spawnCli([
        'up',
        controller.clientFile,
        '--json',
        '--out',
        out,
        '--ssh',
        'cluster',
        '--ssh-config',
        config,
      ])
      await new JsonLines(child).next('ready')
      assert.deepEqual((await applyOnEngines(out, 2)).ids, [0, 1])
      assert.equal(await jump.sessionCount(), 1)
      child.kill('SIGINT')
      assert.equal((await exited(child)).code, 0)
    } finally {
      await jump.close()
    }
  })

  test('AllowTcpForwarding no: a clear error naming the channel', async () => {
    const closed = await startSshd({ netns: ns, allowTcpForwarding: false })
    try {
      const result = await runCli([
        'up',
        controller.clientFile,
        '--json',
        '--out',
        join(dir, 'denied.json'),
        '--ssh',
        `root@${closed.host}:${closed.port}`,
        ...sshArgsOf(closed),
      ])
      assert.equal(result.code, 1)
      const event = JSON.parse(result.stdout.trim()) as Record<string, string>
      assert.equal(event.code, 'E_FORWARD_DENIED')
      assert.match(
        event.message ?? '',
        /channel "(registration|control|mux|task|iopub|notification|broadcast)"/,
      )
      assert.match(event.message ?? '', /AllowTcpForwarding/)
      assert.equal(await exists(join(dir, 'denied.json')), false)
    } finally {
      await closed.close()
    }
  })

  test('exec runs a command on the loopback file and exits with its status', async () => {
    const script = `${clientApplyScript('__FILE__', 2)}\nimport os, sys\nassert os.environ["IPP_CONNECTION_FILE"] == sys.argv[1]\nsys.exit(7)`
    const code = script
      .replace(JSON.stringify('__FILE__'), 'os.environ["IPP_CONNECTION_FILE"]')
      .replace('import json', 'import os, json')
    const result = await runCli([
      'exec',
      controller.clientFile,
      '--json',
      ...auth,
      '--',
      '/usr/bin/python3',
      '-c',
      code,
      '{}',
    ])
    assert.equal(result.code, 7, result.stderr)
    // exec's events go to stderr: stdout is the command's own
    const ready = JSON.parse(result.stderr.trim().split('\n')[0] ?? '{}') as { out: string }
    const applied = JSON.parse(result.stdout) as { ids: number[] }
    assert.deepEqual(applied.ids, [0, 1])
    assert.equal(await exists(ready.out), false, 'the private loopback file is gone after exec')
  })
})
