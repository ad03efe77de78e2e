import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'

import { Link, resolveTarget, type LinkEvents } from '../../src/ssh/index.js'
import { exited, JsonLines, runCli, spawnCli, type CliResult } from '../support/cli.js'
import {
  createNetns,
  hasCode,
  startEchoServer,
  startSshd,
  type EchoServer,
  type Netns,
  type Sshd,
  freePort,
  silence,
} from '../support/index.js'
import { kernelFileText } from '../support/kernel.js'

const run = promisify(execFile)

/** A TCP listener that accepts connections and never says a word: an SSH server that hangs before its banner. */
async function silentListener(): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>()
  const server: Server = createServer((s) => {
    sockets.add(s)
    s.on('error', () => undefined)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return {
    port: address.port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      }),
  }
}

function lastEvent(result: CliResult): Record<string, unknown> {
  const lines = result.stdout.trim().split('\n')
  return JSON.parse(lines.at(-1) ?? '{}') as Record<string, unknown>
}

describe('~/.ssh/config settings reach the connection (real sshd in its own namespace)', () => {
  let ns: Netns
  let sshd: Sshd
  let echo: EchoServer
  let silent: { port: number; close(): Promise<void> }
  let dir: string
  /** A kernel file whose every port is the echo server inside the namespace. */
  let kernelFile: string

  /** A config naming the sshd as `target`, plus `extra` lines for that block. */
  async function config(name: string, extra: string): Promise<string> {
    const file = join(dir, name)
    await writeFile(
      file,
      `Host target
  HostName ${sshd.host}
  Port ${sshd.port}
  User ${sshd.user}
  IdentityFile ${sshd.clientKey}
  IdentitiesOnly yes
${extra}
Host silent
  HostName 127.0.0.1
  Port ${silent.port}
  IdentityFile ${sshd.clientKey}
  ConnectTimeout 1
`,
    )
    return file
  }

  before(async () => {
    ns = await createNetns()
    sshd = await startSshd({ netns: ns })
    echo = await startEchoServer(ns)
    silent = await silentListener()
    dir = await mkdtemp(join(tmpdir(), 'ippt-config-applied-'))
    kernelFile = join(dir, 'kernel-cfg.json')
    const port = echo.port
    await writeFile(kernelFile, kernelFileText(port, { key: '', kernel_name: 'python3' }), { mode: 0o600 })
  })
  after(async () => {
    await silent.close()
    await echo.close()
    await sshd.close()
    await ns.close()
    await rm(dir, { recursive: true, force: true })
  })

  /** Runs `up` until ready, then interrupts it; returns the JSON events. */
  async function upUntilReady(args: readonly string[]): Promise<Record<string, unknown>[]> {
    const child = spawnCli(['up', kernelFile, '--json', '--out', join(dir, 'copy.json'), ...args], {
      SSH_AUTH_SOCK: '',
    })
    const lines = new JsonLines(child)
    await lines.next('ready')
    child.kill('SIGINT')
    assert.equal((await exited(child)).code, 0, lines.stderr)
    return lines.events
  }

  test('StrictHostKeyChecking accept-new in the config records into the first UserKnownHostsFile (%k expanded)', async () => {
    const other = join(dir, 'other_known_hosts')
    await writeFile(other, '')
    const cfg = await config(
      'accept-new.conf',
      `  StrictHostKeyChecking accept-new\n  UserKnownHostsFile ${dir}/recorded-%k ${other}`,
    )
    const events = await upUntilReady(['--ssh', 'target', '--ssh-config', cfg])
    const recorded = join(dir, 'recorded-target')
    const note = events.find((e) => e.event === 'hostkey')
    assert.ok(note !== undefined, JSON.stringify(events))
    assert.equal(note.kind, 'recorded')
    assert.equal(note.file, recorded)
    assert.equal(note.name, `[${sshd.host}]:${sshd.port}`)
    assert.match(String(note.fingerprint), /^SHA256:/)
    assert.equal(
      note.message,
      `recorded the host key of [${sshd.host}]:${sshd.port} (ssh-ed25519 ${String(note.fingerprint)}) in ${recorded}`,
    )
    assert.ok(events.findIndex((e) => e.event === 'hostkey') < events.findIndex((e) => e.event === 'ready'))
    const { stdout } = await run('ssh-keygen', ['-F', `[${sshd.host}]:${sshd.port}`, '-f', recorded])
    assert.match(stdout, /ssh-ed25519/)
    assert.equal(await readFile(other, 'utf8'), '', 'only the first file is written')

    // the next run finds the key in that file and says nothing about it
    const again = await upUntilReady(['--ssh', 'target', '--ssh-config', cfg])
    assert.equal(
      again.some((e) => e.event === 'hostkey'),
      false,
    )
  })

  test('--host-key-check on the command line wins over the config', async () => {
    const cfg = await config(
      'cli-wins.conf',
      `  StrictHostKeyChecking accept-new\n  UserKnownHostsFile ${dir}/never-written`,
    )
    const result = await runCli(
      ['up', kernelFile, '--json', '--ssh', 'target', '--ssh-config', cfg, '--host-key-check', 'strict'],
      { SSH_AUTH_SOCK: '' },
    )
    assert.equal(result.code, 1, result.stderr)
    const error = lastEvent(result)
    assert.equal(error.code, 'E_HOSTKEY_UNKNOWN')
    assert.match(String(error.message), new RegExp(`not in ${dir}/never-written`))
  })

  test('--host-key-check off warns, as an event, when the key differs from the one on record', async () => {
    const wrong = join(dir, 'wrong_known_hosts')
    const { stdout } = await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'impostor')])
    assert.equal(stdout, '')
    const impostor = (await readFile(join(dir, 'impostor.pub'), 'utf8')).split(' ').slice(0, 2).join(' ')
    await writeFile(wrong, `[${sshd.host}]:${sshd.port} ${impostor}\n`)
    const cfg = await config('off.conf', `  UserKnownHostsFile ${wrong}`)
    const events = await upUntilReady(['--ssh', 'target', '--ssh-config', cfg, '--host-key-check', 'off'])
    const note = events.find((e) => e.event === 'hostkey')
    assert.ok(note !== undefined, JSON.stringify(events))
    assert.equal(note.kind, 'mismatch-ignored')
    assert.deepEqual((note.known as { file: string; line: number }).file, wrong)
    assert.match(String(note.message), /^warning: the host key of .* differs from the one on record at .*:1/)
    assert.match(String(note.message), /host key checking is off/)
  })

  test('ConnectTimeout bounds connect plus handshake: a host that never answers fails with E_CONNECT naming it', async () => {
    const cfg = await config('timeout.conf', '')
    const result = await runCli(['up', kernelFile, '--json', '--ssh', 'silent', '--ssh-config', cfg], {
      SSH_AUTH_SOCK: '',
    })
    assert.equal(result.code, 1, result.stderr)
    const error = lastEvent(result)
    assert.equal(error.code, 'E_CONNECT')
    assert.match(
      String(error.message),
      new RegExp(
        `^Cannot connect to .*@127\\.0\\.0\\.1:${silent.port} \\(silent\\): timed out after 1 s \\(ConnectTimeout\\)`,
      ),
    )
  })

  test('ServerAliveInterval and ServerAliveCountMax from the config decide when a silent wire counts as dead', async (t) => {
    const cfg = await config('alive.conf', `  ServerAliveInterval 1\n  ServerAliveCountMax 2`)
    const target = await resolveTarget('target', {
      configFile: cfg,
      knownHosts: sshd.knownHostsFile,
    })
    assert.deepEqual([target.hops[0]?.keepaliveIntervalMs, target.hops[0]?.keepaliveCountMax], [1000, 2])
    const link = new Link(target, { agent: false, backoff: { initialMs: 100, maxMs: 400 } })
    t.after(() => link.close())
    const setWire = (up: boolean) => silence(ns, !up)
    t.after(() => setWire(true))
    await link.connect()
    const reconnecting = once(link, 'reconnecting') as Promise<LinkEvents['reconnecting']>
    await setWire(false)
    const [{ error }] = await reconnecting
    assert.equal(error.code, 'E_LINK_DOWN')
    assert.match(
      error.message,
      /no answer to 2 keepalives sent 1 s apart \(ServerAliveInterval 1, ServerAliveCountMax 2\)/,
    )
    const back = once(link, 'reconnected')
    await setWire(true)
    await back
  })

  test('an unreachable host is named with the reason: connection refused, name not resolved', async () => {
    const port = await freePort()
    const refused = new Link(
      await resolveTarget(`root@127.0.0.1:${port}`, { configFile: false, identity: sshd.clientKey }),
      {
        agent: false,
      },
    )
    await assert.rejects(
      refused.connect(),
      hasCode('E_CONNECT', `Cannot connect to root@127.0.0.1:${port}: connection refused`),
    )
    await refused.close()
    const nowhere = new Link(
      await resolveTarget('root@no-such-host.invalid:22', { configFile: false, identity: sshd.clientKey }),
      { agent: false },
    )
    await assert.rejects(
      nowhere.connect(),
      hasCode('E_CONNECT', 'Cannot connect to root@no-such-host.invalid:22: name not resolved'),
    )
    await nowhere.close()
  })

  test('typos fail at start with what to do: missing --ssh-config, missing --passphrase-file, -i KEY.pub', async () => {
    const common = ['up', kernelFile, '--json', '--ssh', `root@127.0.0.1:${silent.port}`]
    const env = { SSH_AUTH_SOCK: '' }
    const pub = join(dir, 'key.pub')
    await copyFile(`${sshd.clientKey}.pub`, pub)
    // each its own copy: run at once on one file, they would otherwise race for the same copy's claim
    const out = (name: string) => ['--out', join(dir, `${name}.json`)]
    const [noConfig, noPassphrase, publicKey] = await Promise.all([
      runCli([...common, ...out('no-config'), '--ssh-config', join(dir, 'no-such-config')], env),
      runCli(
        [
          ...common,
          ...out('no-passphrase'),
          '--ssh-config',
          '/dev/null',
          '--passphrase-file',
          join(dir, 'no-such-file'),
        ],
        env,
      ),
      runCli([...common, ...out('public-key'), '--ssh-config', '/dev/null', '-i', pub], env),
    ])
    assert.equal(noConfig.code, 2, noConfig.stderr)
    assert.equal(lastEvent(noConfig).code, 'E_SSH_CONFIG')
    assert.equal(
      lastEvent(noConfig).message,
      `cannot read ssh config ${join(dir, 'no-such-config')}: no such file`,
    )

    // E_USAGE and not E_CONNECT: the file is read before any connection is tried
    assert.equal(noPassphrase.code, 2, noPassphrase.stderr)
    assert.equal(lastEvent(noPassphrase).code, 'E_USAGE')
    assert.equal(
      lastEvent(noPassphrase).message,
      `cannot read --passphrase-file ${join(dir, 'no-such-file')}: no such file`,
    )

    assert.equal(publicKey.code, 1, publicKey.stderr)
    assert.equal(lastEvent(publicKey).code, 'E_IDENTITY')
    assert.match(
      String(lastEvent(publicKey).message),
      new RegExp(`${pub} is a public key; pass the private key \\(${join(dir, 'key')}, without \\.pub\\)`),
    )
  })
})
