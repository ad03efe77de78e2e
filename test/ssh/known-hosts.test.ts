import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { appendFile, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { test } from 'node:test'
import type { TestContext } from 'node:test'
import { promisify } from 'node:util'

import { isIppTunnelError } from '../../src/errors/index.js'
import type { ErrorCode } from '../../src/errors/index.js'
import {
  checkHostKey,
  fingerprintSha256,
  formatHostKeyNote,
  hashHostName,
  hostFieldMatches,
  keyTypeOfBlob,
  knownHostsName,
  parseKnownHosts,
  type HostKeyNote,
} from '../../src/ssh/host-keys/known-hosts.js'

const run = promisify(execFile)

interface Key {
  /** The `.pub` line: `type base64 comment`. */
  readonly pub: string
  readonly type: string
  readonly blob: Buffer
  readonly pubFile: string
}

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ipp-known-hosts-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  return dir
}

/** A fresh key pair from the real ssh-keygen; the blob is what ssh2 hands to hostVerifier. */
async function keygen(
  dir: string,
  name: string,
  type: 'ed25519' | 'ecdsa' | 'rsa' = 'ed25519',
): Promise<Key> {
  const file = path.join(dir, name)
  await run('ssh-keygen', [
    '-q',
    '-t',
    type,
    ...(type === 'rsa' ? ['-b', '2048'] : []),
    '-N',
    '',
    '-C',
    name,
    '-f',
    file,
  ])
  const pub = (await readFile(`${file}.pub`, 'utf8')).trim()
  const [keyType = '', base64 = ''] = pub.split(' ')
  return { pub, type: keyType, blob: Buffer.from(base64, 'base64'), pubFile: `${file}.pub` }
}

function line(hosts: string, key: Key, marker = ''): string {
  const [type, base64] = key.pub.split(' ')
  return `${marker === '' ? '' : `${marker} `}${hosts} ${type ?? ''} ${base64 ?? ''}`
}

function expectCode(code: ErrorCode, ...res: RegExp[]): (err: unknown) => true {
  return (err: unknown) => {
    assert.ok(isIppTunnelError(err), String(err))
    assert.equal(err.code, code, err.message)
    assert.ok(!err.message.includes('\n'), 'one line')
    for (const re of res) assert.match(err.message, re)
    return true
  }
}

test('fingerprintSha256 matches ssh-keygen -lf for ed25519, ecdsa and rsa keys', async (t) => {
  const dir = await tempDir(t)
  for (const type of ['ed25519', 'ecdsa', 'rsa'] as const) {
    const key = await keygen(dir, `k-${type}`, type)
    const { stdout } = await run('ssh-keygen', ['-l', '-E', 'sha256', '-f', key.pubFile])
    const printed = stdout.split(' ')[1]
    assert.match(printed ?? '', /^SHA256:[A-Za-z0-9+/]{43}$/)
    assert.equal(fingerprintSha256(key.blob), printed)
    assert.equal(keyTypeOfBlob(key.blob), key.type)
  }
  assert.equal(keyTypeOfBlob(Buffer.from('nonsense')), undefined)
  assert.equal(keyTypeOfBlob(Buffer.alloc(2)), undefined)
})

test('plain host lists, [host]:port, wildcards and negation; port 22 looks up the bare host', async (t) => {
  const dir = await tempDir(t)
  const key = await keygen(dir, 'server')
  const file = path.join(dir, 'known_hosts')
  await writeFile(
    file,
    [
      '# comment',
      '',
      line('alpha,[beta]:2222,10.0.0.2', key),
      line('*.lab,!bad.lab', key),
      line('[::1]:40022', key),
      'garbage line',
      line('gamma', key).replace(/ \S+$/, ' !!notbase64!!'),
      '@unknown-marker gamma ssh-ed25519 AAAA',
    ].join('\n'),
  )
  const check = (host: string, port: number) =>
    checkHostKey({ files: [file], host, port, key: key.blob, policy: 'strict' })
  assert.equal(await check('alpha', 22), 'known')
  assert.equal(await check('ALPHA', 22), 'known')
  assert.equal(await check('beta', 2222), 'known')
  assert.equal(await check('10.0.0.2', 22), 'known')
  assert.equal(await check('node7.lab', 22), 'known')
  assert.equal(await check('::1', 40022), 'known')
  await assert.rejects(check('beta', 22), expectCode('E_HOSTKEY_UNKNOWN', /host key for beta not in /))
  await assert.rejects(
    check('alpha', 2222),
    expectCode('E_HOSTKEY_UNKNOWN', /host key for \[alpha\]:2222 not in/),
  )
  await assert.rejects(check('bad.lab', 22), expectCode('E_HOSTKEY_UNKNOWN'))
  await assert.rejects(check('gamma', 22), expectCode('E_HOSTKEY_UNKNOWN'))
  assert.equal(parseKnownHosts(await readFile(file, 'utf8'), file).length, 3)
})

test('an unknown key is refused in one line naming host:port, key type, SHA256 fingerprint and the file', async (t) => {
  const dir = await tempDir(t)
  const key = await keygen(dir, 'server')
  const files = [path.join(dir, 'kh1'), path.join(dir, 'missing-dir', 'kh2')]
  const fp = fingerprintSha256(key.blob)
  await assert.rejects(
    checkHostKey({ files, host: '10.0.0.2', port: 2222, key: key.blob, policy: 'strict' }),
    expectCode(
      'E_HOSTKEY_UNKNOWN',
      new RegExp(
        `^host key for \\[10\\.0\\.0\\.2\\]:2222 not in ${files[0]}, ${files[1]} \\(server offered ssh-ed25519 ${fp.replace(/[+/]/g, '\\$&')}\\)`,
      ),
      /--host-key-check accept-new/,
      new RegExp(`ssh-keyscan -H -p 2222 10\\.0\\.0\\.2 >> ${files[0]}`),
    ),
  )
  await assert.rejects(
    checkHostKey({ files: [], host: 'h', port: 22, key: key.blob, policy: 'accept-new' }),
    expectCode('E_HOSTKEY_UNKNOWN', /none configured/),
  )
})

test('entries hashed by the real ssh-keygen -H are found, with and without a port', async (t) => {
  const dir = await tempDir(t)
  const key = await keygen(dir, 'server')
  const file = path.join(dir, 'known_hosts')
  await writeFile(file, `${line('hashed.example', key)}\n${line('[10.1.2.3]:2022', key)}\n`)
  await run('ssh-keygen', ['-H', '-f', file])
  const text = await readFile(file, 'utf8')
  assert.ok(!text.includes('hashed.example') && !text.includes('10.1.2.3'), 'ssh-keygen hashed the names')
  assert.equal(text.match(/^\|1\|/gm)?.length, 2)
  const check = (host: string, port: number) =>
    checkHostKey({ files: [file], host, port, key: key.blob, policy: 'strict' })
  assert.equal(await check('hashed.example', 22), 'known')
  assert.equal(await check('10.1.2.3', 2022), 'known')
  await assert.rejects(check('hashed.example', 2022), expectCode('E_HOSTKEY_UNKNOWN'))
  await assert.rejects(check('10.1.2.3', 22), expectCode('E_HOSTKEY_UNKNOWN'))
  assert.ok(!hostFieldMatches('|1|bad', 'x'))
  assert.ok(!hostFieldMatches('|2|AAAA|AAAA', 'x'))
})

test('a different key of the same type is a mismatch under strict and accept-new, naming the file and line', async (t) => {
  const dir = await tempDir(t)
  const old = await keygen(dir, 'old')
  const offered = await keygen(dir, 'new')
  const file = path.join(dir, 'known_hosts')
  await writeFile(file, `# header\n${line('other', offered)}\n${line('[box]:2200', old)}\n`)
  for (const policy of ['strict', 'accept-new'] as const) {
    await assert.rejects(
      checkHostKey({ files: [file], host: 'box', port: 2200, key: offered.blob, policy }),
      expectCode(
        'E_HOSTKEY_MISMATCH',
        /^REMOTE HOST IDENTIFICATION HAS CHANGED for \[box\]:2200/,
        new RegExp(`server offered ssh-ed25519 ${fingerprintSha256(offered.blob).replace(/[+/]/g, '\\$&')}`),
        new RegExp(`${file}:3 holds a different ssh-ed25519 key`),
        /man-in-the-middle/,
        new RegExp(`ssh-keygen -R '\\[box\\]:2200' -f ${file}`),
      ),
    )
  }
  assert.equal(
    await readFile(file, 'utf8'),
    `# header\n${line('other', offered)}\n${line('[box]:2200', old)}\n`,
  )
  assert.equal(
    await checkHostKey({ files: [file], host: 'box', port: 2200, key: offered.blob, policy: 'off' }),
    'unchecked',
  )
  // the exact key listed anywhere for the host wins over another line with an old key
  await appendFile(file, `${line('[box]:2200', offered)}\n`)
  assert.equal(
    await checkHostKey({ files: [file], host: 'box', port: 2200, key: offered.blob, policy: 'strict' }),
    'known',
  )
})

test('a known key of another type only is not a mismatch: strict refuses as unknown, accept-new records', async (t) => {
  const dir = await tempDir(t)
  const ecdsa = await keygen(dir, 'ecdsa', 'ecdsa')
  const ed = await keygen(dir, 'ed')
  const file = path.join(dir, 'known_hosts')
  await writeFile(file, `${line('multi', ecdsa)}\n`)
  await assert.rejects(
    checkHostKey({ files: [file], host: 'multi', port: 22, key: ed.blob, policy: 'strict' }),
    expectCode('E_HOSTKEY_UNKNOWN'),
  )
  assert.equal(
    await checkHostKey({ files: [file], host: 'multi', port: 22, key: ed.blob, policy: 'accept-new' }),
    'recorded',
  )
  assert.equal(
    await checkHostKey({ files: [file], host: 'multi', port: 22, key: ecdsa.blob, policy: 'strict' }),
    'known',
  )
  assert.equal(
    await checkHostKey({ files: [file], host: 'multi', port: 22, key: ed.blob, policy: 'strict' }),
    'known',
  )
})

test('@revoked refuses under every policy; @cert-authority lines do not make a plain key known', async (t) => {
  const dir = await tempDir(t)
  const key = await keygen(dir, 'server')
  const file = path.join(dir, 'known_hosts')
  await writeFile(
    file,
    `${line('ca.example', key, '@cert-authority')}\n${line('rev.example', key)}\n${line('*', key, '@revoked')}\n`,
  )
  for (const policy of ['strict', 'accept-new', 'off'] as const) {
    await assert.rejects(
      checkHostKey({ files: [file], host: 'rev.example', port: 22, key: key.blob, policy }),
      expectCode(
        'E_HOSTKEY_REVOKED',
        new RegExp(`host key for rev\\.example is marked @revoked at ${file}:3`),
        /ssh-ed25519 SHA256:/,
      ),
    )
  }
  const other = await keygen(dir, 'other')
  await writeFile(file, `${line('ca.example', other, '@cert-authority')}\n`)
  await assert.rejects(
    checkHostKey({ files: [file], host: 'ca.example', port: 22, key: other.blob, policy: 'strict' }),
    expectCode('E_HOSTKEY_CA'),
  )
})

test('a host covered only by @cert-authority: E_HOSTKEY_CA with the offered fingerprint and the safe ways through', async (t) => {
  const dir = await tempDir(t)
  const ca = await keygen(dir, 'host_ca')
  const server = await keygen(dir, 'server')
  const file = path.join(dir, 'known_hosts')
  await writeFile(file, `# site CA\n${line('*.cluster.example', ca, '@cert-authority')}\n`)
  const fp = fingerprintSha256(server.blob)
  await assert.rejects(
    checkHostKey({
      files: [file],
      host: 'login1.cluster.example',
      port: 22,
      key: server.blob,
      policy: 'strict',
    }),
    expectCode(
      'E_HOSTKEY_CA',
      new RegExp(`^login1\\.cluster\\.example vouches for its host key with a host certificate authority`),
      new RegExp(`@cert-authority at ${file}:2`),
      new RegExp(`ssh-ed25519 ${fp.replace(/[+/]/g, '\\$&')}`),
      /ControlMaster\/ControlPath/,
      /--host-key-check accept-new/,
      /ssh-keyscan login1\.cluster\.example \| ssh-keygen -lf -/,
    ),
  )
  // never silently accepted: accept-new records the key and says so; a host the CA does not cover is plain unknown
  const notes: HostKeyNote[] = []
  const accepted = await checkHostKey({
    files: [file],
    host: 'login1.cluster.example',
    port: 22,
    key: server.blob,
    policy: 'accept-new',
    note: (n) => notes.push(n),
  })
  assert.equal(accepted, 'recorded')
  assert.equal(notes[0]?.type, 'hostkey:recorded')
  await assert.rejects(
    checkHostKey({ files: [file], host: 'elsewhere.example', port: 22, key: server.blob, policy: 'strict' }),
    expectCode('E_HOSTKEY_UNKNOWN'),
  )
})

test('keys are looked up across all files; a missing file is empty; an unreadable one is an error', async (t) => {
  const dir = await tempDir(t)
  const key = await keygen(dir, 'server')
  const second = path.join(dir, 'known_hosts2')
  await writeFile(second, `${line('far', key)}\n`)
  const files = [path.join(dir, 'absent'), second]
  assert.equal(await checkHostKey({ files, host: 'far', port: 22, key: key.blob, policy: 'strict' }), 'known')
  await assert.rejects(
    checkHostKey({ files: [dir], host: 'far', port: 22, key: key.blob, policy: 'strict' }),
    expectCode('E_SSH_CONFIG', new RegExp(`cannot read known_hosts file ${dir}: EISDIR`)),
  )
})

test('accept-new records a hashed line that the real ssh-keygen -F finds; dir 0700, file 0600', async (t) => {
  const dir = await tempDir(t)
  const key = await keygen(dir, 'server')
  const file = path.join(dir, 'new', 'sub', 'known_hosts')
  const check = (host: string, port: number, policy: 'strict' | 'accept-new') =>
    checkHostKey({ files: [file, path.join(dir, 'other')], host, port, key: key.blob, policy })
  assert.equal(await check('10.9.8.7', 2222, 'accept-new'), 'recorded')
  assert.equal(await check('Named.Example', 22, 'accept-new'), 'recorded')
  assert.equal(await check('10.9.8.7', 2222, 'strict'), 'known')
  assert.equal(await check('named.example', 22, 'strict'), 'known')
  assert.equal(await check('10.9.8.7', 2222, 'accept-new'), 'known')

  assert.equal((await stat(file)).mode & 0o777, 0o600)
  assert.equal((await stat(path.dirname(file))).mode & 0o777, 0o700)
  const text = await readFile(file, 'utf8')
  const lines = text.trimEnd().split('\n')
  assert.equal(lines.length, 2)
  for (const l of lines)
    assert.match(l, /^\|1\|[A-Za-z0-9+/]{27}=\|[A-Za-z0-9+/]{27}= ssh-ed25519 [A-Za-z0-9+/]+=*$/)
  assert.ok(!text.includes('10.9.8.7') && !text.includes('named'), 'host names are hashed')

  for (const name of ['[10.9.8.7]:2222', 'named.example']) {
    const { stdout } = await run('ssh-keygen', ['-F', name, '-f', file])
    assert.ok(
      stdout.includes(key.pub.split(' ')[1] ?? '?'),
      `ssh-keygen -F ${name} finds the key:\n${stdout}`,
    )
  }
  await assert.rejects(run('ssh-keygen', ['-F', '10.9.8.7', '-f', file]), 'port 22 was not recorded')
})

test('accept-new appends after a last line without a newline, keeping the old entries', async (t) => {
  const dir = await tempDir(t)
  const first = await keygen(dir, 'first')
  const second = await keygen(dir, 'second')
  const file = path.join(dir, 'known_hosts')
  await writeFile(file, line('first.example', first))
  assert.equal(
    await checkHostKey({
      files: [file],
      host: 'second.example',
      port: 22,
      key: second.blob,
      policy: 'accept-new',
    }),
    'recorded',
  )
  assert.equal(
    await checkHostKey({ files: [file], host: 'first.example', port: 22, key: first.blob, policy: 'strict' }),
    'known',
  )
  assert.equal(
    await checkHostKey({
      files: [file],
      host: 'second.example',
      port: 22,
      key: second.blob,
      policy: 'strict',
    }),
    'known',
  )
  const { stdout } = await run('ssh-keygen', ['-F', 'second.example', '-f', file])
  assert.match(stdout, /ssh-ed25519/)
})

test('accept-new that cannot write says so', async (t) => {
  const dir = await tempDir(t)
  const key = await keygen(dir, 'server')
  await mkdir(path.join(dir, 'blocker'))
  await writeFile(path.join(dir, 'blocker', 'file'), '')
  await assert.rejects(
    checkHostKey({
      files: [path.join(dir, 'blocker', 'file', 'known_hosts')],
      host: 'h',
      port: 22,
      key: key.blob,
      policy: 'accept-new',
    }),
    expectCode('E_HOSTKEY_UNKNOWN', /cannot record the host key for h in .*blocker\/file\/known_hosts: E/),
  )
})

test('helpers: knownHostsName and hashHostName', () => {
  assert.equal(knownHostsName('Host.Example', 22), 'host.example')
  assert.equal(knownHostsName('::1', 2222), '[::1]:2222')
  const salt = Buffer.alloc(20, 7)
  const hashed = hashHostName('[h]:1', salt)
  assert.ok(hashed.startsWith(`|1|${salt.toString('base64')}|`))
  assert.ok(hostFieldMatches(hashed, '[h]:1'))
  assert.ok(!hostFieldMatches(hashed, 'h'))
})

test('notes: accept-new says what it recorded where; off says when it lets a changed or unknown key through', async (t) => {
  const dir = await tempDir(t)
  const old = await keygen(dir, 'old')
  const offered = await keygen(dir, 'new')
  const file = path.join(dir, 'known_hosts')
  const notes: HostKeyNote[] = []
  const note = (n: HostKeyNote) => notes.push(n)
  const fp = fingerprintSha256(offered.blob)

  const base = { files: [file], host: 'Box', port: 2200, key: offered.blob, note }
  assert.equal(await checkHostKey({ ...base, policy: 'off', policyFrom: '/cfg:3' }), 'unchecked')
  assert.deepEqual(notes.pop(), {
    type: 'hostkey:unchecked',
    name: '[box]:2200',
    keyType: 'ssh-ed25519',
    fingerprint: fp,
    policyFrom: '/cfg:3',
  })
  assert.equal(await checkHostKey({ ...base, policy: 'accept-new' }), 'recorded')
  const recorded = notes.pop()
  assert.deepEqual(recorded, {
    type: 'hostkey:recorded',
    name: '[box]:2200',
    keyType: 'ssh-ed25519',
    fingerprint: fp,
    file,
  })
  assert.equal(
    formatHostKeyNote(recorded),
    `recorded the host key of [box]:2200 (ssh-ed25519 ${fp}) in ${file}`,
  )
  // a key on record is just known, under every policy, and says nothing
  for (const policy of ['strict', 'accept-new', 'off'] as const) {
    assert.equal(await checkHostKey({ ...base, policy }), 'known')
  }
  assert.equal(notes.length, 0)

  await writeFile(file, `${line('[box]:2200', old)}\n`)
  assert.equal(await checkHostKey({ ...base, policy: 'off' }), 'unchecked')
  const ignored = notes.pop()
  assert.deepEqual(ignored, {
    type: 'hostkey:mismatch-ignored',
    name: '[box]:2200',
    keyType: 'ssh-ed25519',
    fingerprint: fp,
    known: { file, line: 1, fingerprint: fingerprintSha256(old.blob) },
  })
  assert.equal(
    formatHostKeyNote(ignored),
    `warning: the host key of [box]:2200 (ssh-ed25519 ${fp}) differs from the one on record at ${file}:1 ` +
      `(${fingerprintSha256(old.blob)}); connecting anyway because host key checking is off`,
  )
  await assert.rejects(checkHostKey({ ...base, policy: 'strict' }), expectCode('E_HOSTKEY_MISMATCH'))
  assert.equal(notes.length, 0, 'a refusal is an error, not a note')
})
