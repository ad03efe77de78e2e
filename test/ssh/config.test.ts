import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { test } from 'node:test'
import type { TestContext } from 'node:test'
import { promisify } from 'node:util'

import { isIppTunnelError } from '../../src/errors/index.js'
import type { LookupContext } from '../../src/ssh/config/lookup.js'
import { matchPattern, matchPatternList } from '../../src/ssh/config/patterns.js'
import { formatDestination, lookupHost, readSshConfig, type HostSettings } from '../../src/ssh/index.js'

const run = promisify(execFile)
const me = os.userInfo()

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ipp-ssh-config-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  return dir
}

async function write(file: string, text: string): Promise<string> {
  await mkdir(path.dirname(file), { recursive: true })
  await writeFile(file, text)
  return file
}

function expectConfigError(re: RegExp): (err: unknown) => true {
  return (err: unknown) => {
    assert.ok(isIppTunnelError(err), String(err))
    assert.equal(err.code, 'E_SSH_CONFIG')
    assert.match(err.message, re)
    return true
  }
}

/** What the real ssh(1) resolves for a host: `ssh -G` prints the final options without connecting. */
async function sshG(
  config: string,
  host: string,
  args: readonly string[] = [],
): Promise<Map<string, string[]>> {
  const { stdout } = await run('ssh', ['-G', '-F', config, ...args, host])
  const out = new Map<string, string[]>()
  for (const line of stdout.split('\n')) {
    const space = line.indexOf(' ')
    if (space < 0) continue
    const key = line.slice(0, space).toLowerCase()
    out.set(key, [...(out.get(key) ?? []), line.slice(space + 1)])
  }
  return out
}

/** Compares our lookup with ssh -G for the fields we implement. */
async function assertSameAsSsh(
  config: string,
  host: string,
  ctx: { user?: string; port?: number } = {},
): Promise<HostSettings> {
  const parsed = await readSshConfig(config, { home: me.homedir })
  const context: LookupContext = { ...ctx, home: me.homedir, localUser: me.username }
  const ours = lookupHost(parsed, host, context)
  const args = [
    ...(ctx.user === undefined ? [] : ['-l', ctx.user]),
    ...(ctx.port === undefined ? [] : ['-p', String(ctx.port)]),
  ]
  const real = await sshG(config, host, args)
  const label = `ssh -G ${args.join(' ')} ${host}`
  assert.equal(ours.hostName ?? host.toLowerCase(), real.get('hostname')?.[0], `hostname for ${label}`)
  assert.equal(ctx.user ?? ours.user ?? me.username, real.get('user')?.[0], `user for ${label}`)
  assert.equal(String(ctx.port ?? ours.port ?? 22), real.get('port')?.[0], `port for ${label}`)
  if (ours.identityFiles.length > 0) {
    assert.deepEqual(ours.identityFiles, real.get('identityfile'), `identityfile for ${label}`)
  }
  assert.equal(
    ours.identitiesOnly ?? false,
    real.get('identitiesonly')?.[0] === 'yes',
    `identitiesonly for ${label}`,
  )
  if (ours.proxyJump !== undefined && ours.proxyJump.length > 0) {
    assert.equal(
      ours.proxyJump.map(formatDestination).join(','),
      real.get('proxyjump')?.[0],
      `proxyjump for ${label}`,
    )
  } else {
    assert.equal(real.get('proxyjump'), undefined, `no proxyjump for ${label}`)
  }
  if (ours.userKnownHostsFiles !== undefined) {
    assert.equal(
      ours.userKnownHostsFiles.join(' '),
      real.get('userknownhostsfile')?.[0] ?? '',
      `known hosts for ${label}`,
    )
  }
  const strict = real.get('stricthostkeychecking')?.[0]
  const mapped =
    { true: 'strict', ask: 'ask', 'accept-new': 'accept-new', false: 'off' }[strict ?? ''] ?? strict
  // OpenSSH's default is ask, as ours (resolveTarget) is
  assert.equal(ours.strictHostKeyChecking ?? 'ask', mapped, `stricthostkeychecking for ${label}`)
  const timeout = real.get('connecttimeout')?.[0]
  assert.equal(
    String(ours.connectTimeout ?? (timeout === '0' ? '0' : 'none')),
    timeout,
    `connecttimeout for ${label}`,
  )
  assert.equal(
    String(ours.serverAliveInterval ?? 0),
    real.get('serveraliveinterval')?.[0],
    `serveralive for ${label}`,
  )
  assert.equal(
    String(ours.serverAliveCountMax ?? 3),
    real.get('serveralivecountmax')?.[0],
    `alivecount for ${label}`,
  )
  return ours
}

test('lookups agree with ssh -G: Host patterns, negation, first value wins, Match, Include, Key=Value', async (t) => {
  const dir = await tempDir(t)
  await write(
    path.join(dir, 'conf.d', '10-lab.conf'),
    `# included first (sorted)
Host *.lab
  User labuser
  IdentityFile ${dir}/keys/lab
Host other
  Port 2999
`,
  )
  await write(path.join(dir, 'conf.d', '20-tail.conf'), `Host gpu?.lab\n  Port 2022\n`)
  await write(path.join(dir, 'conf.d', 'ignored.txt'), `Host *\n  Port 1\n`)
  await write(path.join(dir, 'inactive.conf'), `User never\nPort 1\n`)
  const config = await write(
    path.join(dir, 'config'),
    `# a comment
IgnoreUnknown SomeUnknownKeyword
IdentitiesOnly=no

Host nomatch
  Include ${dir}/inactive.conf

Host *.lab !bad.lab
  HostName %h.internal
  Include ${dir}/conf.d/*.conf
  # the included file's "Host other" does not leak here:
  ProxyJump jump@gw.example:2200,gw2
  IdentityFile ${dir}/keys/second

HOST bad.lab
  hostname = "bad.internal"
  PORT=2200
  identitiesonly yes
  StrictHostKeyChecking accept-new
  ConnectTimeout 1m30s
  ServerAliveInterval 2M
  ServerAliveCountMax 5

Match host *.internal !host bad.internal
  User ignored-because-first-wins
  UserKnownHostsFile ${dir}/kh1 "${dir}/kh 2"
  StrictHostKeyChecking no
  ConnectTimeout none
  ServerAliveInterval 0

Match originalhost plain
  Port 2201

Match exec "false"
  Port 1

Host alias
  HostName 10.0.0.7
  User "alias user"
  ProxyJump none

Host *
  User fallback
  ProxyJump star
  ConnectTimeout 4
  ServerAliveInterval 45
  Ciphers aes128-ctr
  SomeUnknownKeyword whatever
`,
  )
  const node = await assertSameAsSsh(config, 'gpu1.lab')
  assert.equal(node.hostName, 'gpu1.lab.internal')
  assert.equal(node.user, 'labuser')
  assert.equal(node.port, 2022)
  assert.deepEqual(node.identityFiles, [`${dir}/keys/lab`, `${dir}/keys/second`])
  assert.deepEqual(node.userKnownHostsFiles, [`${dir}/kh1`, `${dir}/kh 2`])
  assert.equal(node.strictHostKeyChecking, 'off')
  assert.equal(node.strictHostKeyCheckingFrom, `${config}:27`)
  assert.equal(node.connectTimeout, 4, '"none" leaves ConnectTimeout unset for a later block')
  assert.equal(node.serverAliveInterval, 0, 'an explicit 0 turns keepalives off, as in ssh')

  const bad = await assertSameAsSsh(config, 'bad.lab')
  assert.equal(bad.hostName, 'bad.internal')
  assert.equal(bad.port, 2200)
  assert.equal(bad.identitiesOnly, false, 'the top-level IdentitiesOnly=no was obtained first')
  assert.equal(bad.strictHostKeyChecking, 'accept-new')
  assert.equal(bad.user, 'fallback')
  assert.deepEqual([bad.connectTimeout, bad.serverAliveInterval, bad.serverAliveCountMax], [90, 120, 5])

  const alias = await assertSameAsSsh(config, 'alias')
  assert.equal(alias.user, 'alias user')
  assert.deepEqual(alias.proxyJump, [])

  const plain = await assertSameAsSsh(config, 'plain')
  assert.equal(plain.port, 2201)
  assert.deepEqual(plain.proxyJump, [{ host: 'star' }])

  // the command line's user and port win over the config's, as in ssh
  const withUser = await assertSameAsSsh(config, 'gpu2.lab', { user: 'cli', port: 40022 })
  assert.equal(withUser.user, 'labuser')
})

test('lookups agree with ssh -G on IdentityFile tokens and UserKnownHostsFile tokens', async (t) => {
  const dir = await tempDir(t)
  const config = await write(
    path.join(dir, 'config'),
    `Host tok
  HostName real-%h
  Port 2345
  User remote
  UserKnownHostsFile ${dir}/kh-%h-%p-%r-%u-%n-%k ~/kh-%%
Host *
  IdentitiesOnly yes
`,
  )
  const s = await assertSameAsSsh(config, 'tok')
  assert.deepEqual(s.userKnownHostsFiles, [
    `${dir}/kh-real-tok-2345-remote-${me.username}-tok-tok`,
    `${me.homedir}/kh-%`,
  ])
  assert.equal(s.identitiesOnly, true)
  await assertSameAsSsh(config, 'tok', { user: 'other' })
})

test('IdentityFile expands ~, %d %u %h %r %p %n %% and ${VAR}; unknown tokens and unset variables are errors', async (t) => {
  const dir = await tempDir(t)
  const config = await readSshConfig(
    await write(
      path.join(dir, 'config'),
      `Host h
  HostName h.example
  IdentityFile ~/.ssh/id_%h_%r_%p
  IdentityFile %d/x/%u/%n/100%%
  IdentityFile \${KEYDIR}/k
  IdentityFile "/with space/key"
Host bad-token
  IdentityFile ~/%z
Host bad-env
  IdentityFile \${NOPE_NOT_SET}/k
Host bad-tilde
  IdentityFile ~someoneelse/k
`,
    ),
  )
  const ctx = { home: '/home/al', localUser: 'al', env: { KEYDIR: '/keys' } }
  const s = lookupHost(config, 'h', { ...ctx, user: 'bob', port: 2200 })
  assert.deepEqual(s.identityFiles, [
    '/home/al/.ssh/id_h.example_bob_2200',
    '/home/al/x/al/h/100%',
    '/keys/k',
    '/with space/key',
  ])
  // without a user or port on the command line: the local user and 22
  assert.equal(lookupHost(config, 'h', ctx).identityFiles[0], '/home/al/.ssh/id_h.example_al_22')
  assert.throws(
    () => lookupHost(config, 'bad-token', ctx),
    expectConfigError(/config:8: IdentityFile has an unknown token "%z"/),
  )
  assert.throws(
    () => lookupHost(config, 'bad-env', ctx),
    expectConfigError(/config:10: .*NOPE_NOT_SET.* not set/),
  )
  assert.throws(
    () => lookupHost(config, 'bad-tilde', ctx),
    expectConfigError(/config:12: cannot expand "~someoneelse"/),
  )
})

test('Include: relative paths are read from <home>/.ssh, globs sorted, nested, inactive blocks skipped', async (t) => {
  const home = await tempDir(t)
  const ssh = path.join(home, '.ssh')
  await write(path.join(ssh, 'b.conf'), `Host b\n  Include nested/*.conf\n`)
  await write(path.join(ssh, 'nested', 'x.conf'), `User from-nested\nHost other\n  Port 1\n`)
  await write(path.join(ssh, 'a.conf'), `Host a\n  User from-a\n`)
  await write(path.join(ssh, '.hidden.conf'), `Host *\n  User hidden\n`)
  const config = await write(
    path.join(ssh, 'config'),
    `Include ?.conf ~/.ssh/missing-is-fine.conf
Host b
  Port 2002
Host *
  User default
`,
  )
  const parsed = await readSshConfig(config, { home })
  assert.deepEqual(parsed.files, [
    config,
    path.join(ssh, 'a.conf'),
    path.join(ssh, 'b.conf'),
    path.join(ssh, 'nested', 'x.conf'),
  ])
  assert.equal(lookupHost(parsed, 'a', { home }).user, 'from-a')
  const b = lookupHost(parsed, 'b', { home })
  assert.equal(b.user, 'from-nested')
  // "Host other" inside the nested file ended there; back in config, "Host b" applies again
  assert.equal(b.port, 2002)
  assert.equal(lookupHost(parsed, 'c', { home }).user, 'default')
})

test('Include loops and too-deep nesting are errors naming the files', async (t) => {
  const dir = await tempDir(t)
  await write(path.join(dir, 'one'), `Include ${dir}/two\n`)
  await write(path.join(dir, 'two'), `Host x\n  Include ${dir}/one\n`)
  await assert.rejects(
    readSshConfig(path.join(dir, 'one')),
    expectConfigError(/Include loop: .*one includes .*two includes .*one/),
  )
  await write(path.join(dir, 'self'), `Include ${dir}/self\n`)
  await assert.rejects(readSshConfig(path.join(dir, 'self')), expectConfigError(/Include loop/))
  for (let i = 0; i < 20; i++) await write(path.join(dir, `d${i}`), `Include ${dir}/d${i + 1}\n`)
  await assert.rejects(
    readSshConfig(path.join(dir, 'd0')),
    expectConfigError(/d1[0-9]:1: Include nested deeper than 16/),
  )
})

test('a missing config is empty unless named; an unreadable one is E_SSH_CONFIG naming the file', async (t) => {
  const dir = await tempDir(t)
  const empty = await readSshConfig(path.join(dir, 'nope', 'config'))
  assert.deepEqual(lookupHost(empty, 'h', { home: dir }), { identityFiles: [] })
  await assert.rejects(
    readSshConfig(path.join(dir, 'nope', 'config'), { missingOk: false }),
    expectConfigError(new RegExp(`cannot read ssh config ${dir}/nope/config: no such file`)),
  )
  await assert.rejects(
    readSshConfig(dir),
    expectConfigError(new RegExp(`cannot read ssh config ${dir}: EISDIR`)),
  )
  if (process.getuid?.() !== 0) {
    const locked = await write(path.join(dir, 'locked'), 'Host x\n')
    await chmod(locked, 0o000)
    await assert.rejects(readSshConfig(locked), expectConfigError(/EACCES/))
  }
  // an Include naming a directory through a glob is skipped; naming an unreadable file is an error
  await write(path.join(dir, 'sub', 'inner', 'f'), '')
  const cfg = await write(path.join(dir, 'incdir'), `Include ${dir}/sub/*\nUser u\n`)
  assert.equal(lookupHost(await readSshConfig(cfg), 'h').user, 'u')
})

test('syntax errors are E_SSH_CONFIG with file and line', async (t) => {
  const dir = await tempDir(t)
  const cases: [string, RegExp][] = [
    ['Port abc', /:2: Port "abc" is not in 1-65535/],
    ['Port 0', /:2: Port "0"/],
    ['Port 22 23', /:2: Port takes exactly one argument, got 2/],
    ['Host', /:2: Host needs an argument/],
    ['Match', /:2: Match needs an argument/],
    ['Match host', /:2: Match host needs an argument/],
    ['User "unterminated', /:2: unterminated " quote/],
    ['HostName', /:2: HostName takes exactly one argument, got 0/],
    ['IdentitiesOnly maybe', /:2: IdentitiesOnly "maybe" is not yes or no/],
    ['StrictHostKeyChecking sometimes', /:2: StrictHostKeyChecking "sometimes"/],
    ['ConnectTimeout soon', /:2: ConnectTimeout "soon" is not a time/],
    ['ServerAliveInterval 5x', /:2: ServerAliveInterval "5x" is not a time/],
    ['ServerAliveCountMax -1', /:2: ServerAliveCountMax "-1" is not a number/],
    ['ProxyJump a,,b', /:2: ProxyJump "" is not/],
    ['ProxyJump user@host:99999', /:2: ProxyJump "user@host:99999" is not/],
    ['= value', /:2: missing keyword/],
    ['Include', /:2: Include needs an argument/],
  ]
  for (const [line, re] of cases) {
    const file = await write(path.join(dir, 'bad'), `# line 1\n${line}\n`)
    await assert.rejects(readSshConfig(file), expectConfigError(new RegExp(`^${dir}/bad${re.source}`)), line)
  }
})

test('quoting, comments, Key=Value and case-insensitive keywords', async (t) => {
  const dir = await tempDir(t)
  const parsed = await readSshConfig(
    await write(
      path.join(dir, 'config'),
      [
        'host=q1',
        '  HOSTNAME = "name with space" # trailing comment',
        "  user='single quoted'",
        '  IdentityFile /a\\ b/c\\"d',
        '\tPort\t=\t2200\t',
        'Host "q2" q3\r',
        '  UserKnownHostsFile none\r',
        '  StrictHostKeyChecking ask',
        'Host q4',
        '  StrictHostKeyChecking OFF',
        '  ProxyJump ssh://j@[::1]:2222,plain',
      ].join('\n'),
    ),
  )
  const q1 = lookupHost(parsed, 'q1', { home: dir })
  // ssh(1) lowercases the HostName it connects to
  assert.equal(q1.hostName, 'name with space')
  // Host patterns compare case as ssh(1) does: Q1 is not q1
  assert.equal(lookupHost(parsed, 'Q1', { home: dir }).hostName, undefined)
  assert.equal(q1.user, 'single quoted')
  assert.deepEqual(q1.identityFiles, ['/a b/c"d'])
  assert.equal(q1.port, 2200)
  const q3 = lookupHost(parsed, 'q3', { home: dir })
  assert.deepEqual(q3.userKnownHostsFiles, [])
  assert.equal(q3.strictHostKeyChecking, 'ask')
  const q4 = lookupHost(parsed, 'q4', { home: dir })
  assert.equal(q4.strictHostKeyChecking, 'off')
  assert.deepEqual(q4.proxyJump, [{ user: 'j', host: '::1', port: 2222 }, { host: 'plain' }])
})

test('Match: all, host (HostName so far), originalhost, user, localuser, negation; other criteria skip the block', async (t) => {
  const dir = await tempDir(t)
  const parsed = await readSshConfig(
    await write(
      path.join(dir, 'config'),
      `Host short
  HostName long.example.org
Match host *.example.org
  Port 1001
Match originalhost short user alice
  IdentityFile /k/alice-short
Match !localuser nobody-here
  IdentityFile /k/not-nobody
Match canonical host *
  User canonical-never
Match exec "exit 0"
  User exec-never
Match localnetwork 10.0.0.0/8
  User net-never
Match all
  User everyone
`,
    ),
  )
  const short = lookupHost(parsed, 'short', { user: 'alice', localUser: 'me', home: dir })
  assert.equal(short.port, 1001)
  assert.deepEqual(short.identityFiles, ['/k/alice-short', '/k/not-nobody'])
  assert.equal(short.user, 'everyone')
  const other = lookupHost(parsed, 'long.example.org', { localUser: 'nobody-here', home: dir })
  assert.equal(other.port, 1001)
  assert.deepEqual(other.identityFiles, [])
})

test('matchPattern and matchPatternList', () => {
  assert.ok(matchPattern('node12.lab', 'node*.lab'))
  assert.ok(matchPattern('node1.lab', 'node?.lab'))
  assert.ok(!matchPattern('node12.lab', 'node?.lab'))
  assert.ok(matchPattern('Node1.LAB', 'node1.lab'))
  assert.ok(matchPattern('', '*'))
  assert.ok(matchPattern('abcabd', '*abd'))
  assert.ok(matchPattern('[1.2.3.4]:2222', '[1.2.3.*]:2222'))
  assert.ok(!matchPattern('a', ''))
  assert.ok(matchPatternList('x.lab', 'y,*.lab'))
  assert.ok(!matchPatternList('bad.lab', '*.lab,!bad.lab'))
  assert.ok(!matchPatternList('bad.lab', '!bad.lab'))
  assert.ok(!matchPatternList('z', 'y,x'))
})
