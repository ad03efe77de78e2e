import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { checkHostKey, fingerprintSha256 } from '../../src/ssh/index.js'
import { CLI, exited, JsonLines, runCli, spawnCli } from '../support/cli.js'
import { hasCode, kernelListeners, startSshd, type Sshd, type KernelListeners } from '../support/index.js'
import { runOnPty } from '../support/pty.js'

const QUESTION = String.raw`Are you sure you want to continue connecting \(yes/no/\[fingerprint\]\)\? `

describe('StrictHostKeyChecking ask (the default): an unknown host key is asked about on the terminal, as ssh asks', () => {
  let sshd: Sshd
  let dir: string
  let file: string
  let fingerprint: string
  let listeners: KernelListeners | undefined

  before(async () => {
    sshd = await startSshd()
    dir = await mkdtemp(join(tmpdir(), 'ippt-hostkey-ask-'))
    file = join(dir, 'kernel-ask.json')
    listeners = await kernelListeners()
    const kernel = {
      ...listeners.ports,
      ip: '127.0.0.1',
      key: 'k',
      transport: 'tcp',
      signature_scheme: 'hmac-sha256',
    }
    await writeFile(file, JSON.stringify(kernel), { mode: 0o600 })
    // the sshd's known_hosts line: `[host]:port type base64`
    const line = (await readFile(sshd.knownHostsFile, 'utf8')).trim().split('\n')[0] ?? ''
    fingerprint = fingerprintSha256(Buffer.from(line.split(' ')[2] ?? '', 'base64'))
  })
  after(async () => {
    listeners?.close()
    await sshd.close()
    await rm(dir, { recursive: true, force: true })
  })

  /** `up` with an empty known_hosts of its own and no ssh config (so the default policy applies). */
  function upArgs(knownHosts: string, out: string): string[] {
    return [
      'up',
      file,
      '--ssh',
      `root@${sshd.host}:${sshd.port}`,
      '--out',
      out,
      '--identity',
      sshd.clientKey,
      '--known-hosts',
      knownHosts,
      '--ssh-config',
      '/dev/null',
    ]
  }

  test('yes (after an answer that is neither) records the key; the next run does not ask', async () => {
    const knownHosts = join(dir, 'known_hosts_yes')
    const out = join(dir, 'yes.json')
    const result = await runOnPty(
      [process.execPath, CLI, ...upArgs(knownHosts, out)],
      [
        { expect: `The authenticity of host '\\[${sshd.host}\\]:${sshd.port}' can't be established` },
        { expect: `ED25519 key fingerprint is ${fingerprint.replace(/[+/]/gu, '\\$&')}\\.` },
        { expect: QUESTION, send: 'maybe' },
        { expect: "Please type 'yes', 'no' or the fingerprint: ", send: 'yes' },
        { expect: 'recorded the host key' },
        { expect: out, signal: 'INT' },
      ],
      { SSH_AUTH_SOCK: '' },
    )
    assert.equal(result.steps, 6, result.output)
    assert.match(await readFile(knownHosts, 'utf8'), /^\|1\|.* ssh-ed25519 /mu)
    // known now: no terminal needed
    const again = spawnCli([...upArgs(knownHosts, join(dir, 'again.json')), '--json'], { SSH_AUTH_SOCK: '' })
    const lines = new JsonLines(again)
    await lines.next('ready')
    again.kill('SIGTERM')
    await exited(again)
  })

  test('no refuses and records nothing; without a terminal nothing is asked and the key is refused at once', async () => {
    const knownHosts = join(dir, 'known_hosts_no')
    const result = await runOnPty(
      [process.execPath, CLI, ...upArgs(knownHosts, join(dir, 'no.json'))],
      [{ expect: QUESTION, send: 'no' }, { expect: 'not trusted: the answer was no' }],
      { SSH_AUTH_SOCK: '' },
    )
    assert.equal(result.steps, 2, result.output)
    assert.notEqual(result.code, 0)
    assert.equal(await readFile(knownHosts, 'utf8').catch(() => ''), '')

    const batch = await runCli(upArgs(knownHosts, join(dir, 'batch.json')), { SSH_AUTH_SOCK: '' })
    assert.notEqual(batch.code, 0)
    assert.match(batch.stderr, /host key for .* not in .*--host-key-check accept-new/)
  })
})

test('checkHostKey under ask: yes records, no refuses, no answer is strict', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-hostkey-ask-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const key = Buffer.concat([
    Buffer.from([0, 0, 0, 11]),
    Buffer.from('ssh-ed25519'),
    Buffer.from([0, 0, 0, 32]),
    Buffer.alloc(32, 7),
  ])
  const files = [join(dir, 'known_hosts')]
  const base = { files, host: 'cluster', port: 22, key, policy: 'ask' as const }
  await assert.rejects(
    checkHostKey({ ...base, ask: () => Promise.resolve(false) }),
    hasCode('E_HOSTKEY_UNKNOWN', 'the answer was no'),
  )
  await assert.rejects(
    checkHostKey({ ...base, ask: () => Promise.resolve(undefined) }),
    hasCode('E_HOSTKEY_UNKNOWN', 'not in'),
  )
  await assert.rejects(checkHostKey(base), hasCode('E_HOSTKEY_UNKNOWN', 'not in'))
  const asked: string[] = []
  const answer = await checkHostKey({
    ...base,
    ask: (q) => {
      asked.push(`${q.name} ${q.keyType} ${q.fingerprint}`)
      return Promise.resolve(true)
    },
  })
  assert.equal(answer, 'recorded')
  assert.deepEqual(asked, [`cluster ssh-ed25519 ${fingerprintSha256(key)}`])
  assert.equal(await checkHostKey(base), 'known')
})
