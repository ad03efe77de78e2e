import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, beforeEach, describe, test } from 'node:test'
import { promisify } from 'node:util'
import {
  CredentialRenewer,
  expandCredentialCommand,
  hopCertificate,
  Link,
  resetCredentialRuns,
  type LinkEvents,
  type PromptRequest,
} from '../../src/ssh/index.js'
import { hasCode, hopOf, startSshd, type Sshd } from '../support/index.js'

const run = promisify(execFile)

/** Signs `key.pub` into `key-cert.pub` for root, valid `validity` (ssh-keygen -V). */
async function certify(ca: string, key: string, validity: string, id = validity): Promise<void> {
  await run('ssh-keygen', ['-q', '-s', ca, '-I', id, '-n', 'root', '-V', validity, `${key}.pub`])
}

async function runs(counter: string): Promise<number> {
  try {
    return (await readFile(counter, 'utf8')).split('\n').filter((l) => l !== '').length
  } catch {
    return 0
  }
}

describe('--credential-command against sshd with TrustedUserCAKeys', () => {
  let dir: string
  let sshd: Sshd
  let ca: string

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ippt-renew-'))
    ca = join(dir, 'ca')
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', ca])
    sshd = await startSshd({ extraConfig: `TrustedUserCAKeys ${ca}.pub\n` })
  })
  after(async () => {
    await sshd.close()
    await rm(dir, { recursive: true, force: true })
  })
  beforeEach(() => {
    resetCredentialRuns()
  })

  /** A fresh key (no certificate yet) and a command that counts its runs and signs a 30 s certificate. */
  async function setup(name: string, ask = false) {
    const key = join(dir, name)
    const counter = join(dir, `${name}.runs`)
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key])
    const sign = `ssh-keygen -q -s ${ca} -I renewed-%r -n root -V -1m:+30s ${key}.pub`
    const command = ask
      ? `read -p 'Code: ' x; [ "$x" = 4242 ] || { echo 'wrong code' >&2; exit 3; }; echo %h >> ${counter}; ${sign}`
      : `echo %h >> ${counter}; ${sign}`
    return { key, counter, command }
  }

  test('an expired certificate is renewed before the reconnect, with no one there; once per expiry and min-interval', async (t) => {
    const { key, counter, command } = await setup('id_a')
    await certify(ca, key, '-1m:+30s', 'first')
    const credential = new CredentialRenewer({ command, renewBeforeS: 0 })
    const link = new Link({ hops: [hopOf(sshd, { identityFiles: [key] })] }, { agent: false, credential })
    t.after(() => link.close())
    await link.connect()
    assert.equal(await runs(counter), 0, 'a valid certificate needs no renewal')
    assert.equal((await hopCertificate(hopOf(sshd, { identityFiles: [key] })))?.keyId, 'first')

    // the certificate runs out (as after 30 s) and the connection drops: the reconnect renews it
    await certify(ca, key, '20200101:20200102', 'expired')
    const reconnected = Promise.race([
      once(link, 'reconnected'),
      (once(link, 'failed') as Promise<LinkEvents['failed']>).then(([{ error }]) => {
        throw error
      }),
    ])
    await sshd.killConnections()
    await reconnected
    assert.equal(await runs(counter), 1)
    const renewed = await hopCertificate(hopOf(sshd, { identityFiles: [key] }))
    assert.equal(renewed?.keyId, 'renewed-root')
    assert.ok((renewed.validBefore ?? 0) > Date.now() / 1000)

    // expired again within the min-interval: no second run, and the error says when the next one may be
    await certify(ca, key, '20200101:20200102', 'expired')
    const failed = once(link, 'failed') as Promise<LinkEvents['failed']>
    await sshd.killConnections()
    const [{ error }] = await failed
    assert.equal(error.code, 'E_CERT_EXPIRED')
    assert.match(error.message, /may run again at \S+ \(--renew-min-interval 3600\)/)
    assert.equal(await runs(counter), 1)
  })

  test('many links needing the same renewal run the command once', async (t) => {
    const { key, counter, command } = await setup('id_b')
    const credential = new CredentialRenewer({ command })
    const links = [1, 2, 3].map(
      () => new Link({ hops: [hopOf(sshd, { identityFiles: [key] })] }, { agent: false, credential }),
    )
    t.after(() => Promise.all(links.map((l) => l.close())))
    await Promise.all(links.map((l) => l.connect()))
    assert.equal(await runs(counter), 1)
  })

  test('a prompt of the command on its pseudo-terminal is put to the prompt provider and answered', async (t) => {
    const { key, counter, command } = await setup('id_c', true)
    const asked: PromptRequest[] = []
    const credential = new CredentialRenewer({
      command,
      prompt: (request) => {
        asked.push(request)
        return Promise.resolve(['4242'])
      },
    })
    const link = new Link({ hops: [hopOf(sshd, { identityFiles: [key] })] }, { agent: false, credential })
    t.after(() => link.close())
    await link.connect()
    assert.equal(await runs(counter), 1)
    assert.equal(asked.length, 1)
    assert.equal(asked[0]?.prompts[0]?.prompt, 'Code: ')
  })

  test('a failing command: E_CREDENTIAL_COMMAND with its status and last line', async (t) => {
    const { key, command } = await setup('id_d', true)
    const credential = new CredentialRenewer({ command, prompt: () => Promise.resolve(['nope']) })
    const link = new Link({ hops: [hopOf(sshd, { identityFiles: [key] })] }, { agent: false, credential })
    t.after(() => link.close())
    await assert.rejects(link.connect(), (err: unknown) => {
      assert.ok(hasCode('E_CREDENTIAL_COMMAND')(err))
      assert.match((err as Error).message, /failed with status 3: wrong code$/)
      assert.doesNotMatch((err as Error).message, /nope/)
      return true
    })
  })

  test('%h %r %n are shell-quoted', () => {
    const hop = hopOf(sshd, { host: "a'b; rm -rf /" })
    assert.equal(
      expandCredentialCommand('x %h %r %n %%', hop, 'me@$(id)'),
      `x 'a'\\''b; rm -rf /' 'root' 'me@$(id)' %`,
    )
  })
})
