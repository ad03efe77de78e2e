import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { test } from 'node:test'
import type { TestContext } from 'node:test'
import { promisify } from 'node:util'

import { isIppTunnelError } from '../../src/errors/index.js'
import type { ErrorCode } from '../../src/errors/index.js'
import { DEFAULT_IDENTITY_FILES, resolveTarget } from '../../src/ssh/config/resolve.js'
import type { ResolvedSshHop } from '../../src/ssh/config/resolve.js'
import type { ResolvedTarget } from '../../src/ssh/index.js'

const run = promisify(execFile)

/** A temp home with `.ssh/config` holding `config` (when given). */
async function tempHome(t: TestContext, config?: string): Promise<string> {
  const home = await mkdtemp(path.join(os.tmpdir(), 'ipp-resolve-'))
  t.after(() => rm(home, { recursive: true, force: true }))
  await mkdir(path.join(home, '.ssh'), { mode: 0o700 })
  if (config !== undefined) await writeFile(path.join(home, '.ssh', 'config'), config)
  return home
}

function expectCode(code: ErrorCode, re: RegExp): (err: unknown) => true {
  return (err: unknown) => {
    assert.ok(isIppTunnelError(err), String(err))
    assert.equal(err.code, code, err.message)
    assert.match(err.message, re)
    return true
  }
}

const summary = (h: ResolvedSshHop): string => `${h.username}@${h.host}:${h.port}`

test('no config: defaults for user, port, identity files, known_hosts and policy', async (t) => {
  const home = await tempHome(t)
  const target = await resolveTarget('cluster', { home, localUser: 'me', configFile: false })
  const ssh = path.join(home, '.ssh')
  assert.deepEqual(target.hops, [
    {
      alias: 'cluster',
      host: 'cluster',
      port: 22,
      username: 'me',
      identityFiles: DEFAULT_IDENTITY_FILES.map((f) => path.join(ssh, f)),
      identitiesOnly: false,
      knownHostsFiles: [path.join(ssh, 'known_hosts'), path.join(ssh, 'known_hosts2')],
      hostKeyPolicy: 'ask',
    },
  ])
  assert.deepEqual(DEFAULT_IDENTITY_FILES, [
    'id_rsa',
    'id_ecdsa',
    'id_ecdsa_sk',
    'id_ed25519',
    'id_ed25519_sk',
    'id_dsa',
  ])
  const typed: ResolvedTarget = target
  assert.equal(typed.hops.length, 1)
  // the local account by default
  const mine = await resolveTarget('[::1]:2222', { home, configFile: false })
  const [hop] = mine.hops
  assert.ok(hop !== undefined)
  assert.equal(summary(hop), `${os.userInfo().username}@::1:2222`)
})

test('~/.ssh/config under the given home is read by default; destination user and port win over the config', async (t) => {
  const home = await tempHome(
    t,
    `Host cluster
  HostName login.cluster.example
  User cfguser
  Port 2200
  IdentityFile ~/.ssh/cluster_%r
  IdentityFile /keys/second
  IdentitiesOnly yes
  UserKnownHostsFile ~/.ssh/kh_cluster
  StrictHostKeyChecking accept-new
  ConnectTimeout 7
  ServerAliveInterval 1m
  ServerAliveCountMax 4
`,
  )
  const fromConfig = await resolveTarget('cluster', { home, localUser: 'me' })
  assert.deepEqual(fromConfig.hops, [
    {
      alias: 'cluster',
      host: 'login.cluster.example',
      port: 2200,
      username: 'cfguser',
      identityFiles: [path.join(home, '.ssh', 'cluster_cfguser'), '/keys/second'],
      identitiesOnly: true,
      knownHostsFiles: [path.join(home, '.ssh', 'kh_cluster')],
      hostKeyPolicy: 'accept-new',
      hostKeyPolicyFrom: `${path.join(home, '.ssh', 'config')}:9`,
      connectTimeoutMs: 7000,
      keepaliveIntervalMs: 60_000,
      keepaliveCountMax: 4,
    },
  ])
  const cli = await resolveTarget('alice@cluster:2022', { home, localUser: 'me', hostKeyCheck: 'strict' })
  const hop = cli.hops[0]
  assert.ok(hop !== undefined)
  assert.equal(summary(hop), 'alice@login.cluster.example:2022')
  assert.deepEqual(hop.identityFiles, [path.join(home, '.ssh', 'cluster_alice'), '/keys/second'])
  assert.equal(hop.hostKeyPolicy, 'strict')
  assert.equal(hop.hostKeyPolicyFrom, undefined, 'the option, not the config, set the policy')
  // opts.ssh overrides the destination argument; configFile false reads nothing
  const none = await resolveTarget('cluster', {
    home,
    localUser: 'me',
    ssh: 'bob@cluster',
    configFile: false,
  })
  assert.equal(none.hops[0] === undefined ? '' : summary(none.hops[0]), 'bob@cluster:22')
})

test('--identity is tried alone on the destination; --known-hosts replaces the files on every hop', async (t) => {
  const home = await tempHome(
    t,
    `Host dest
  ProxyJump gw
  IdentityFile /keys/dest
Host gw
  IdentityFile /keys/gw
  UserKnownHostsFile /kh/gw
`,
  )
  const { hops } = await resolveTarget('dest', {
    home,
    localUser: 'me',
    identity: '~/.ssh/explicit',
    knownHosts: '~/kh',
    hostKeyCheck: 'off',
  })
  assert.deepEqual(
    hops.map((h) => [h.alias, h.identityFiles, h.identitiesOnly, h.knownHostsFiles, h.hostKeyPolicy]),
    [
      ['gw', ['/keys/gw'], false, [path.join(home, 'kh')], 'off'],
      ['dest', [path.join(home, '.ssh', 'explicit')], true, [path.join(home, 'kh')], 'off'],
    ],
  )
})

test('ProxyJump: jump hosts first, each through the config; only the first jump follows its own ProxyJump', async (t) => {
  const home = await tempHome(
    t,
    `Host target
  HostName 10.0.0.9
  ProxyJump j1,carol@j2:2202
Host j1
  HostName j1.example
  User jay
  ProxyJump root@j0
Host j2
  HostName j2.example
  ProxyJump ignored-for-later-jumps
Host j0
  Port 2000
  StrictHostKeyChecking no
  ServerAliveInterval 15
  ConnectTimeout 3
Host target
  ServerAliveCountMax 9
`,
  )
  const { hops } = await resolveTarget('target', { home, localUser: 'me' })
  assert.deepEqual(hops.map(summary), [
    'root@j0:2000',
    'jay@j1.example:22',
    'carol@j2.example:2202',
    'me@10.0.0.9:22',
  ])
  assert.deepEqual(
    hops.map((h) => h.alias),
    ['j0', 'j1', 'j2', 'target'],
  )
  assert.deepEqual(
    hops.map((h) => h.hostKeyPolicy),
    ['off', 'ask', 'ask', 'ask'],
  )
  // ServerAlive* and ConnectTimeout are per hop, as ssh -J applies each hop's own config
  assert.deepEqual(
    hops.map((h) => [h.keepaliveIntervalMs, h.keepaliveCountMax, h.connectTimeoutMs]),
    [
      [15_000, undefined, 3000],
      [undefined, undefined, undefined],
      [undefined, undefined, undefined],
      [undefined, 9, undefined],
    ],
  )
})

test('ProxyJump through "Host *" works when the jump host says ProxyJump none; a loop is a clear error', async (t) => {
  const ok = await tempHome(t, `Host bastion\n  ProxyJump none\nHost *\n  ProxyJump bastion\n`)
  const { hops } = await resolveTarget('node1', { home: ok, localUser: 'me' })
  assert.deepEqual(
    hops.map((h) => h.alias),
    ['bastion', 'node1'],
  )

  const star = await tempHome(t, `Host *\n  ProxyJump bastion\n`)
  await assert.rejects(
    resolveTarget('node1', { home: star, localUser: 'me' }),
    expectCode('E_SSH_CONFIG', /^ProxyJump loop: node1 -> bastion -> bastion; .*ProxyJump none/),
  )
  const pair = await tempHome(t, `Host a\n  ProxyJump b\nHost b\n  ProxyJump u@a:2\n`)
  await assert.rejects(
    resolveTarget('a', { home: pair, localUser: 'me' }),
    expectCode('E_SSH_CONFIG', /^ProxyJump loop: a -> b -> u@a:2/),
  )
})

test('ProxyCommand: tokens expanded as ssh does, the first of ProxyCommand/ProxyJump wins, none turns it off', async (t) => {
  const home = await tempHome(
    t,
    [
      'Host pc',
      '  HostName pc.example',
      '  Port 2022',
      '  User bob',
      '  ProxyCommand ssh -W %h:%p -l %r "jump host" %n 100%%',
      '  ProxyJump ignored',
      'Host pj',
      '  ProxyJump bastion',
      '  ProxyCommand ignored',
      'Host pn',
      '  ProxyCommand none',
      '  ProxyJump ignored',
      'Host bad',
      '  ProxyCommand nc %x',
      '',
    ].join('\n'),
  )
  const pc = await resolveTarget('pc', { home, localUser: 'me' })
  assert.equal(pc.hops.length, 1)
  assert.equal(pc.hops[0]?.proxyCommand, 'ssh -W pc.example:2022 -l bob "jump host" pc 100%')
  const pj = await resolveTarget('pj', { home, localUser: 'me' })
  assert.deepEqual(
    pj.hops.map((h) => [h.alias, h.proxyCommand]),
    [
      ['bastion', undefined],
      ['pj', undefined],
    ],
  )
  const pn = await resolveTarget('pn', { home, localUser: 'me' })
  assert.equal(pn.hops.length, 1)
  assert.equal(pn.hops[0]?.proxyCommand, undefined)
  await assert.rejects(
    resolveTarget('bad', { home, localUser: 'me' }),
    expectCode('E_SSH_CONFIG', /config:14: ProxyCommand has an unknown token "%x"/),
  )
  // --proxy-command wins over the config, for the destination only; "none" turns the config's off
  const cli = await resolveTarget('pj', { home, localUser: 'me', proxyCommand: 'nc %h %p' })
  assert.deepEqual(
    cli.hops.map((h) => [h.alias, h.proxyCommand]),
    [['pj', 'nc pj 22']],
  )
  const off = await resolveTarget('pc', { home, localUser: 'me', proxyCommand: 'none' })
  assert.deepEqual(
    off.hops.map((h) => [h.host, h.proxyCommand]),
    [['pc.example', undefined]],
  )
})

test('relative Include in the config is read from <home>/.ssh; bad input is E_DESTINATION or E_SSH_CONFIG', async (t) => {
  const home = await tempHome(t, `Include conf.d/*\n`)
  await mkdir(path.join(home, '.ssh', 'conf.d'))
  await writeFile(path.join(home, '.ssh', 'conf.d', 'hosts'), `Host inc\n  HostName included.example\n`)
  const { hops } = await resolveTarget('inc', { home, localUser: 'me' })
  assert.equal(hops[0]?.host, 'included.example')

  await assert.rejects(
    resolveTarget('bad host', { home, localUser: 'me' }),
    expectCode('E_DESTINATION', /bad host/),
  )
  const broken = await tempHome(t, `Host x\n  Port nope\n`)
  await assert.rejects(
    resolveTarget('x', { home: broken, localUser: 'me' }),
    expectCode('E_SSH_CONFIG', new RegExp(`${broken}/.ssh/config:2: Port "nope"`)),
  )
  // a missing ~/.ssh/config is silent, but a config file named explicitly must exist (ssh -F says the same)
  const noDefault = await mkdtemp(path.join(os.tmpdir(), 'ipp-resolve-'))
  t.after(() => rm(noDefault, { recursive: true, force: true }))
  assert.equal((await resolveTarget('x', { home: noDefault, localUser: 'me' })).hops[0]?.port, 22)
  const named = path.join(broken, 'nope')
  await assert.rejects(
    resolveTarget('x', { home: broken, localUser: 'me', configFile: named }),
    expectCode('E_SSH_CONFIG', new RegExp(`cannot read ssh config ${named}: no such file`)),
  )
})

test('resolution agrees with ssh -G for the destination hop', async (t) => {
  const home = await tempHome(t)
  const config = path.join(home, 'config')
  await writeFile(
    config,
    `Host web
  HostName 192.0.2.10
  User deploy
  Port 2022
  ProxyJump gw
Host gw
  ProxyJump none
`,
  )
  for (const dest of ['web', 'ops@web']) {
    const { hops } = await resolveTarget(dest, { configFile: config, hostKeyCheck: 'strict' })
    const last = hops.at(-1)
    assert.ok(last !== undefined)
    const at = dest.indexOf('@')
    const user = at < 0 ? undefined : dest.slice(0, at)
    const host = dest.slice(at + 1)
    const { stdout } = await run('ssh', [
      '-G',
      '-F',
      config,
      ...(user === undefined ? [] : ['-l', user]),
      host,
    ])
    const get = (k: string) => new RegExp(`^${k} (.*)$`, 'm').exec(stdout)?.[1]
    assert.equal(last.host, get('hostname'))
    assert.equal(last.username, get('user'))
    assert.equal(String(last.port), get('port'))
    assert.equal(hops[0]?.alias, get('proxyjump'))
  }
})
