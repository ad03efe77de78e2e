import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { once } from 'node:events'
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'
import { Link, parseCertificate, resolveTarget } from '../../src/ssh/index.js'
import { hasCode, hopOf, startSshd, type Sshd } from '../support/index.js'

const run = promisify(execFile)

async function keygen(path: string, type = 'ed25519'): Promise<void> {
  await run('ssh-keygen', ['-q', '-t', type, '-N', '', '-C', 'cert-test', '-f', path])
}

/** Signs `key.pub` with the CA into `key-cert.pub`, for principal root, valid `validity` (ssh-keygen -V). */
async function certify(ca: string, key: string, validity: string): Promise<void> {
  await run('ssh-keygen', [
    '-q',
    '-s',
    ca,
    '-I',
    `id-${validity}`,
    '-n',
    'root',
    '-V',
    validity,
    `${key}.pub`,
  ])
}

describe('OpenSSH user certificates against sshd with TrustedUserCAKeys', () => {
  let dir: string
  let sshd: Sshd
  let key: string
  let expired: string
  let rsa: string
  let ecdsa: string

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ippt-cert-'))
    const ca = join(dir, 'ca')
    key = join(dir, 'id_user')
    expired = join(dir, 'id_old')
    rsa = join(dir, 'id_rsa_user')
    ecdsa = join(dir, 'id_ecdsa_user')
    await Promise.all([keygen(ca), keygen(key), keygen(expired), keygen(rsa, 'rsa'), keygen(ecdsa, 'ecdsa')])
    // no key is in authorized_keys: only a certificate gets in
    await Promise.all([
      certify(ca, key, '-5m:+1h'),
      certify(ca, expired, '20200101:20200102'),
      certify(ca, rsa, '-5m:+1h'),
      certify(ca, ecdsa, '-5m:+1h'),
    ])
    sshd = await startSshd({ extraConfig: `TrustedUserCAKeys ${ca}.pub\n` })
  })
  after(async () => {
    await sshd.close()
    await rm(dir, { recursive: true, force: true })
  })

  test('the certificate is parsed as ssh-keygen -L shows it', async () => {
    const [, base64] = (await readFile(`${expired}-cert.pub`, 'utf8')).split(' ')
    const cert = parseCertificate(Buffer.from(base64 ?? '', 'base64'))
    assert.ok(cert)
    assert.equal(cert.type, 'ssh-ed25519-cert-v01@openssh.com')
    assert.equal(cert.keyId, 'id-20200101:20200102')
    assert.deepEqual(cert.principals, ['root'])
    const { stdout } = await run('ssh-keygen', ['-L', '-f', `${expired}-cert.pub`])
    const from = /Valid: from (\S+) to (\S+)/.exec(stdout)
    assert.equal(new Date(Number(cert.validAfter) * 1000).getTime(), new Date(from?.[1] ?? '').getTime())
  })

  test('KEY-cert.pub beside the identity file is offered (the key alone is refused)', async (t) => {
    const link = new Link({ hops: [hopOf(sshd, { identityFiles: [key] })] }, { agent: false })
    t.after(() => link.close())
    await link.connect()
    assert.equal(link.state, 'up')

    // the same key without its certificate is refused
    const bare = join(dir, 'id_bare')
    await copyFile(key, bare)
    const refused = new Link({ hops: [hopOf(sshd, { identityFiles: [bare] })] }, { agent: false })
    t.after(() => refused.close())
    await assert.rejects(refused.connect(), hasCode('E_AUTH'))
  })

  test('RSA (rsa-sha2-512) and ECDSA certificates', async (t) => {
    for (const k of [rsa, ecdsa]) {
      const link = new Link({ hops: [hopOf(sshd, { identityFiles: [k] })] }, { agent: false })
      t.after(() => link.close())
      await link.connect()
      assert.equal(link.state, 'up')
    }
  })

  test('CertificateFile from the ssh config', async (t) => {
    const plain = join(dir, 'id_plain')
    const certFile = join(dir, 'elsewhere-cert.pub')
    await copyFile(key, plain)
    await copyFile(`${key}-cert.pub`, certFile)
    const config = join(dir, 'ssh_config')
    await writeFile(
      config,
      [
        'Host certhost',
        `  HostName ${sshd.host}`,
        `  Port ${sshd.port}`,
        '  User root',
        `  IdentityFile ${plain}`,
        `  CertificateFile ${certFile}`,
        `  UserKnownHostsFile ${sshd.knownHostsFile}`,
        '',
      ].join('\n'),
    )
    const target = await resolveTarget('certhost', { configFile: config })
    assert.deepEqual(target.hops[0]?.certificateFiles, [certFile])
    const link = new Link(target, { agent: false })
    t.after(() => link.close())
    await link.connect()
    assert.equal(link.state, 'up')
  })

  test('a certificate held by ssh-agent', async (t) => {
    const socket = join(dir, 'agent.sock')
    const agent = spawn('ssh-agent', ['-D', '-a', socket], { stdio: ['ignore', 'pipe', 'inherit'] })
    t.after(async () => {
      if (agent.exitCode === null) {
        agent.kill()
        await once(agent, 'exit')
      }
    })
    // ssh-agent -D prints its environment once the socket listens
    await once(agent.stdout, 'data')
    const agentKey = join(dir, 'id_agent')
    await copyFile(key, agentKey)
    await copyFile(`${key}-cert.pub`, `${agentKey}-cert.pub`)
    await run('ssh-add', [agentKey], { env: { ...process.env, SSH_AUTH_SOCK: socket } })
    await rm(`${agentKey}-cert.pub`)
    await rm(agentKey)
    const link = new Link({ hops: [hopOf(sshd, { identityFiles: [] })] }, { agent: socket })
    t.after(() => link.close())
    await link.connect()
    assert.equal(link.state, 'up')
  })

  test('an expired certificate: E_CERT_EXPIRED naming its validity window', async (t) => {
    const link = new Link({ hops: [hopOf(sshd, { identityFiles: [expired] })] }, { agent: false })
    t.after(() => link.close())
    await assert.rejects(
      link.connect(),
      hasCode('E_CERT_EXPIRED', `${expired}-cert.pub`, 'is expired: valid from 2020-01-0', 'to 2020-01-0'),
    )
  })
})
