import assert from 'node:assert/strict'
import { describe, test } from 'node:test'

import { localCopyDir, parseRemoteSpec, remoteDefaultDirs, remotePathOf } from '../../src/sources/index.js'
import { hasCode } from '../support/index.js'

describe('parseRemoteSpec: [user@]host[:port][:DIR] as --remote takes it', () => {
  const cases: [string, string, string | undefined][] = [
    ['cluster', 'cluster', undefined],
    ['me@cluster', 'me@cluster', undefined],
    ['me@cluster:~/run', 'me@cluster', '~/run'],
    ['me@cluster:2222', 'me@cluster:2222', undefined],
    ['me@cluster:2222:/abs/dir', 'me@cluster:2222', '/abs/dir'],
    ['cluster:/a:b', 'cluster', '/a:b'],
    ['cluster:./2222', 'cluster', './2222'],
    ['[::1]:2222:~/x', '[::1]:2222', '~/x'],
    ['alice@[fe80::1]:dir', 'alice@fe80::1', 'dir'],
    ['[::1]', '::1', undefined],
    ['a@b@host:d', 'a@b@host', 'd'],
  ]
  for (const [text, destination, path] of cases) {
    test(text, () => assert.deepEqual(parseRemoteSpec(text), { destination, path }))
  }
  for (const bad of [
    'me@:dir',
    '[::1',
    '[::1]x',
    'host:99999:/d',
    '-oProxyCommand=x:d',
    'me@host:/a\u0007',
  ]) {
    test(`refuses ${JSON.stringify(bad)}`, () =>
      assert.throws(() => parseRemoteSpec(bad), hasCode('E_DESTINATION')))
  }
})

describe('remotePathOf: scp rules for up/exec FILE', () => {
  test('remote forms', () => {
    assert.deepEqual(remotePathOf('me@cluster:~/f.json'), { destination: 'me@cluster', path: '~/f.json' })
    assert.deepEqual(remotePathOf('cluster:2222:/f.json'), { destination: 'cluster:2222', path: '/f.json' })
    assert.deepEqual(remotePathOf('[::1]:/f.json'), { destination: '::1', path: '/f.json' })
    assert.deepEqual(remotePathOf('me@[::1]:22:f.json'), { destination: 'me@[::1]:22', path: 'f.json' })
  })
  test('local forms: no colon, a slash before the first colon, a leading colon', () => {
    for (const local of ['f.json', './a:b', '/x:y', 'dir/a:b.json', ':odd.json', '../x:y']) {
      assert.equal(remotePathOf(local), undefined, local)
    }
  })
  test('a host with no path is refused', () => {
    assert.throws(() => remotePathOf('cluster:'), hasCode('E_DESTINATION'))
  })
})

describe('where copies of remote files land', () => {
  const places = { ipythonDir: '/home/you/.ipython', runtimeDir: '/run/jupyter' }
  test('a profile security dir → the local "-tunnel" profile', () => {
    assert.equal(
      localCopyDir('/home/me/.ipython/profile_mpi/security/ipcontroller-client.json', 'ipp-client', places),
      '/home/you/.ipython/profile_mpi-tunnel/security',
    )
  })
  test('a kernel file → the local Jupyter runtime dir; --out-dir overrides; elsewhere: nowhere', () => {
    assert.equal(localCopyDir('/srv/kernel-1.json', 'kernel', places), '/run/jupyter')
    assert.equal(localCopyDir('/srv/kernel-1.json', 'kernel', { ...places, outDir: '/o' }), '/o')
    assert.equal(localCopyDir('/srv/ipcontroller-client.json', 'ipp-client', places), undefined)
  })
  test('remote defaults', () => {
    assert.deepEqual(remoteDefaultDirs(), [
      '~/.ipython/profile_default/security',
      '~/.local/share/jupyter/runtime',
    ])
  })
})
